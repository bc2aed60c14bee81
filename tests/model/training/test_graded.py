import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from model.training.graded import GradedPair, detect_graded_format, graded_metrics, load_graded, threshold_figures
from model.training.metrics import average_ranks, pearson, spearman


def test_sts_benchmark_file_with_malformed_rows(fixtures: Path) -> None:
    pairs, report = load_graded(fixtures / "stsb.tsv")
    assert report.format == "stsb"
    assert pairs == [
        GradedPair("A plane is taking off.", "An air plane is taking off.", 5.0),
        GradedPair('A man plays "the" flute.', "A woman slices an onion.", 0.5),  # no quoting; spaces collapsed
        GradedPair("Stocks rose today.", "Shares went up today.", 4.0),
    ]
    assert report.skipped == {
        "rows whose score is not a number": 2,  # "five" and "nan"
        "rows with an empty sentence": 1,
        "rows with 7 fields instead of 8": 1,
    }


def test_a_graded_file_that_is_not_utf_8_is_refused_naming_the_line(fixtures: Path, tmp_path: Path) -> None:
    text = (fixtures / "stsb.tsv").read_text(encoding="utf-8").replace("Stocks rose", "Stocks rosé")
    (tmp_path / "stsb.tsv").write_bytes(text.encode("cp1252"))
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "rosé" in row)
    with pytest.raises(ValueError, match=re.escape(f"is not UTF-8 text (line {line}: byte 0xe9")):
        load_graded(tmp_path / "stsb.tsv")


def test_sts_benchmark_split(fixtures: Path) -> None:
    pairs, report = load_graded(fixtures / "stsb.tsv", split="test")
    assert [p.score for p in pairs] == [0.5, 4.0]
    assert report.format == "stsb, split test"
    assert report.n_skipped == 3  # the malformed test rows; the dev row is left out, not skipped
    with pytest.raises(ValueError, match="is 'tst' a split of it"):
        load_graded(fixtures / "stsb.tsv", split="tst")


def test_sick_gzip(fixtures: Path) -> None:
    pairs, report = load_graded(fixtures / "sick.txt.gz")
    assert report.format == "sick"
    assert pairs[0] == GradedPair("A group of kids is playing in a yard", "A group of boys is playing in a yard", 4.5)
    assert [p.score for p in pairs] == [4.5, 1.1, 4.9]
    assert report.skipped == {"rows with 4 fields instead of 5": 1}
    with pytest.raises(ValueError, match="has no splits"):
        load_graded(fixtures / "sick.txt.gz", split="test")


def test_a_cut_gzip_file_is_refused_naming_it(fixtures: Path, tmp_path: Path) -> None:
    whole = (fixtures / "sick.txt.gz").read_bytes()
    cut = tmp_path / "SICK_cut.txt.gz"
    cut.write_bytes(whole[: len(whole) - 12])  # the last block and the trailer lost
    with pytest.raises(ValueError, match=f"^{cut}: its gzip stream is damaged or cut short"):
        load_graded(cut)


def test_an_empty_or_unknown_file_is_refused_naming_it(tmp_path: Path) -> None:
    empty, other = tmp_path / "empty.txt", tmp_path / "pairs.tsv"
    empty.write_text("")
    other.write_text("question1\tquestion2\tis_duplicate\nA?\tB?\t1\n")
    with pytest.raises(ValueError, match="^" + re.escape(f"{empty} is empty: no header, no pair") + "$"):
        load_graded(empty)
    says = f"{other}: cannot tell the format of a file starting with 'question1\\tquestion2\\tis_duplicate';"
    with pytest.raises(ValueError, match="^" + re.escape(says)):
        load_graded(other)


def test_detect_graded_format() -> None:
    assert detect_graded_format("\ufeffpair_ID\tsentence_A\tsentence_B") == "sick"
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_graded_format("1\tHow old are you ?\tWhat is your age ?\t7")


def test_correlations_by_hand() -> None:
    assert average_ranks(np.array([10, 20, 20, 40, 5])).tolist() == [2, 3.5, 3.5, 5, 1]
    x, y = np.array([1, 2, 3, 4]), np.array([10, 20, 20, 40])
    # Ranks of y: 1, 2.5, 2.5, 4. Deviations from 2.5: x -1.5 -.5 .5 1.5, y -1.5 0 0 1.5.
    assert spearman(x, y) == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    # Raw y deviates from 22.5 by -12.5 -2.5 -2.5 17.5: sum of products 45, squares 475.
    assert pearson(x, y) == pytest.approx(45 / math.sqrt(5 * 475))
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)  # any increasing function ranks alike
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(pearson(x, np.ones(4)))


def test_graded_metrics_scores_each_pair_by_cosine() -> None:
    angle = {"a": 0.0, "b": 0.3, "c": 1.0, "d": 2.0}

    def encode(texts: list[str]) -> np.ndarray:
        assert len(texts) == len(set(texts))  # each distinct sentence encoded once
        return np.array([[math.cos(angle[t]), math.sin(angle[t])] for t in texts])

    # Cosines: a-b 0.955, a-c 0.540, b-d -0.146; the grades agree in order, not in spacing.
    pairs = [GradedPair("a", "b", 5.0), GradedPair("a", "c", 4.9), GradedPair("b", "d", 0.0)]
    result = graded_metrics(encode, pairs)
    assert result["pairs"] == 3
    assert result["spearman"] == pytest.approx(1.0)
    assert 0.5 < result["pearson"] < 1.0
    reversed_grades = [GradedPair(p.sentence1, p.sentence2, -p.score) for p in pairs]
    assert graded_metrics(encode, reversed_grades)["spearman"] == pytest.approx(-1.0)


def test_threshold_figures_count_pairs_graded_from_the_cut_as_duplicates() -> None:
    pairs = [GradedPair(str(i), str(i), score) for i, score in enumerate([5.0, 4.0, 3.9, 1.0, 4.5])]
    similarities = np.array([0.9, 0.7, 0.85, 0.2, 0.81])  # tau 0.8: yes, no, yes, no, yes
    figures = threshold_figures(similarities, pairs, threshold=0.8, duplicate_from=4.0)
    assert figures["duplicates"] == pytest.approx(3 / 5)  # 5.0, 4.0 and 4.5
    assert figures["said_duplicate"] == pytest.approx(3 / 5)
    assert figures["accuracy"] == pytest.approx(3 / 5)  # right on 5.0, 1.0, 4.5
    assert figures["recall"] == pytest.approx(2 / 3) and figures["false_positive_rate"] == pytest.approx(1 / 2)
    assert figures["threshold"] == 0.8 and figures["duplicate_from"] == 4.0
    assert figures["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Cutting between 0.7 and 0.2 passes every duplicate and stops 1.0: the best this ranking allows,
    # since 3.9 outscores 4.0 (ROC-AUC: 4 of the 6 duplicate-other orders right).
    assert figures["best_balanced_threshold"] == pytest.approx(0.45)
    assert figures["best_balanced_accuracy"] == pytest.approx((1 + 1 / 2) / 2)
    assert figures["roc_auc"] == pytest.approx(4 / 6)
    higher_cut = threshold_figures(similarities, pairs, threshold=0.8, duplicate_from=4.6)
    assert higher_cut["duplicates"] == pytest.approx(1 / 5) and math.isnan(
        threshold_figures(similarities, pairs, threshold=0.8, duplicate_from=6.0)["recall"]
    )


def test_sts_command(tiny_model_dir: Path, fixtures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sts", "--model", str(tiny_model_dir), "--pairs", str(fixtures / "stsb.tsv"), "--split", "test"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 2 and result["skipped"] == 3 and result["split"] == "test"
    assert -1 <= result["spearman"] <= 1 and set(result["tfidf"]) == {"spearman", "pearson"}
    at_threshold = result["at_threshold"]  # the pairs graded 0.5 and 4.0, at the model's own tau
    tau = json.loads((tiny_model_dir / "config.json").read_text())["threshold"]
    assert at_threshold["duplicates"] == 0.5 and at_threshold["duplicate_from"] == 4.0
    assert at_threshold["threshold"] == pytest.approx(tau, abs=1e-4)
    assert at_threshold["best_balanced_accuracy"] >= at_threshold["balanced_accuracy"]
    assert main([*args, "--duplicate-from", "4.5"]) == 0
    assert json.loads(capsys.readouterr().out)["at_threshold"]["duplicates"] == 0.0
    assert main(["sts", "--model", str(tiny_model_dir), "--pairs", str(fixtures / "sick.txt.gz"), "--split", "x"]) == 1
    assert "has no splits" in capsys.readouterr().err


def test_an_undefined_correlation_prints_as_null(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = tmp_path / "flat.tsv"  # every pair graded alike: no ranking to agree with
    rows = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
    rows += [f"{i}\tA dog number {i} runs\tA cat sleeps\t3.0\tNEUTRAL" for i in range(3)]
    flat.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["sts", "--model", str(tiny_model_dir), "--pairs", str(flat)]) == 0
    result = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert result["spearman"] is None and result["tfidf"]["pearson"] is None
