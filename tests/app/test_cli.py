"""The `dupq` command line: settings, help, progress, and bad input reported in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli import build_parser, main
from app.store import Feedback, QuestionStore
from model.encoder import load_encoder
from model.training.data import Pair, load_pairs


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"dupq {project['version']}"


@pytest.mark.parametrize("command", ["serve", "index", "embed", "evaluate", "sts", "split", "upgrade", "train"])
def test_every_flag_has_help_text(command: str) -> None:
    parser = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    parser.format_help()  # `train` adds its flags when first asked for
    for action in parser._actions:
        assert action.help, f"dupq {command} {'/'.join(action.option_strings) or action.dest} has no help"


def test_the_command_line_reports_bad_input_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("How old are you?\nWhere is the caf\u00e9?\n".encode("latin-1"))
    assert main(["embed", "--model", str(tiny_model_dir), str(latin1)]) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"dupq embed: error: {latin1} is not UTF-8 text (line 2: byte 0xe9, invalid continuation byte); save "
            "it as UTF-8, or convert it: `iconv -f cp1252 -t utf-8` for a file that Excel saved in Windows-1252"
        )
    )
    assert main(["embed", "--model", str(tmp_path / "nothing"), str(latin1)]) == 1
    assert "dupq embed: error: model directory" in capsys.readouterr().err
    index = ["index", "--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "d")]
    assert main([*index, str(tmp_path / "none")]) == 1
    assert "No such file or directory" in capsys.readouterr().err
    questions = tmp_path / "questions.tsv"
    questions.write_text("q1\tHow old are you?\nq/2\tWhat is your age?\n", encoding="utf-8")
    assert main([*index, str(questions)]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    # Not on the data directory of a running service: its index would miss these questions.
    held = QuestionStore(tmp_path / "d" / "questions.sqlite3", dim=24)
    try:
        assert main([*index, str(questions)]) == 1
        assert "dupq index: error: cannot open the question store" in capsys.readouterr().err
    finally:
        held.close()


def test_index_takes_its_settings_from_the_environment_as_serve_does(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = tmp_path / "questions.tsv"
    questions.write_text("q1\tHow old are you?\nq2\tWhat is your age?\n", encoding="utf-8")
    monkeypatch.setenv("DUPQ_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("DUPQ_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("DUPQ_INDEX_KIND", "hnsw")
    assert main(["index", str(questions)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data_dir"] == str(tmp_path / "from-env") and out["index_size"] == 2
    meta = json.loads((tmp_path / "from-env" / "index.faiss.json").read_text())
    assert meta["kind"] == "hnsw"
    # A flag still wins over the variable.
    assert main(["index", "--index-kind", "flat", "--data-dir", str(tmp_path / "flag"), str(questions)]) == 0
    assert json.loads((tmp_path / "flag" / "index.faiss.json").read_text())["kind"] == "flat"


def test_index_reads_the_files_that_import_reads_and_loads_them_again_in_place(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "rows.csv": 'id,text,status,namespace\nc1,"How old are you?",open,forum\n,"Who wrote ""Hamlet""?",,\n',
        "rows.jsonl": json.dumps({"text": "Why is the sky blue?", "metadata": {"n": 1}}) + "\n{not json\n",
        "rows.txt": "t1\tWhat is your age?\n\tWhere is the cafe?\n",
    }
    index = ["index", "--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), "--namespace", "site"]
    for run in range(2):  # the second run replaces every question in place: rows without an id too
        for name, content in files.items():
            (tmp_path / name).write_text(content, encoding="utf-8")
            assert main([*index, str(tmp_path / name)]) == 0
            out = json.loads(capsys.readouterr().out)
            assert (out["added"], out["skipped"]) == {"rows.csv": (2, 0), "rows.jsonl": (1, 1)}.get(name, (2, 0))
        assert out["index_size"] == 5, run
    store = QuestionStore(tmp_path / "d" / "questions.sqlite3", dim=24)
    try:
        stored = {q.id: (q.namespace, q.text, json.loads(q.metadata)) for q, _ in store.page(None, None, 100)}
    finally:
        store.close()
    generated = {qid: row for qid, row in stored.items() if qid not in ("c1", "t1")}
    assert stored["c1"] == ("forum", "How old are you?", {"status": "open"})
    assert stored["t1"] == ("site", "What is your age?", {})
    assert sorted(generated.values()) == [
        ("site", "Where is the cafe?", {}),
        ("site", 'Who wrote "Hamlet"?', {}),
        ("site", "Why is the sky blue?", {"n": 1}),
    ]
    # --format reads a file whatever its name.
    (tmp_path / "rows.data").write_text(files["rows.csv"], encoding="utf-8")
    assert main([*index, "--format", "csv", str(tmp_path / "rows.data")]) == 0
    assert json.loads(capsys.readouterr().out)["index_size"] == 5


@pytest.mark.parametrize(
    ("command", "pairs"), [("evaluate", "bimpm.tsv"), ("sts", "stsb.tsv")], ids=["evaluate", "sts"]
)
def test_evaluate_and_sts_take_the_model_as_embed_does(
    command: str,
    pairs: str,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DUPQ_MODEL_DIR", str(tiny_model_dir))
    fixtures = Path(__file__).parents[1] / "fixtures"
    assert main([command, "--pairs", str(fixtures / pairs)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == load_encoder(tiny_model_dir).full_name


def test_a_pair_file_with_no_pair_to_use_is_one_line_that_says_why(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "header.tsv").write_text("question1\tquestion2\tis_duplicate\n", encoding="utf-8")
    (tmp_path / "yes.tsv").write_text("question1\tquestion2\tis_duplicate\nHow old?\tYour age?\tyes\n")
    (tmp_path / "good.tsv").write_text("question1\tquestion2\tis_duplicate\nHow old?\tYour age?\t1\nWho?\tWhy?\t0\n")
    evaluate = ["evaluate", "--model", str(tiny_model_dir), "--pairs"]
    for argv, message in (
        ([*evaluate, str(tmp_path / "yes.tsv")], "no pairs to evaluate: {}yes.tsv (tsv): 0 pairs, 1 skipped (1 rows"),
        ([*evaluate, str(tmp_path / "header.tsv")], "no pairs to evaluate: {}header.tsv (tsv): 0 pairs, 0 skipped"),
        (
            [*evaluate, str(tmp_path / "good.tsv"), "--tune", str(tmp_path / "header.tsv")],
            "no pairs to choose the baselines' thresholds on: {}header.tsv",
        ),
    ):
        assert main(argv) == 1  # not an IndexError's traceback, nor scikit-learn's words
        assert f"dupq evaluate: error: {message.format(f'{tmp_path}/')}" in capsys.readouterr().err
    train = ["train", "--train", str(tmp_path / "header.tsv"), str(tmp_path / "yes.tsv"), "--out", str(tmp_path / "m")]
    assert main([*train, "--valid", str(tmp_path / "good.tsv")]) == 1
    err = capsys.readouterr().err  # each file, and why it gave none
    assert f"dupq train: error: no pairs to train on: {tmp_path}/header.tsv (tsv): 0 pairs, 0 skipped; " in err
    assert f"{tmp_path}/yes.tsv (tsv): 0 pairs, 1 skipped (1 rows with a label other than 0, 1" in err
    split = ["split", "--out-rest", str(tmp_path / "a.tsv"), "--out-held", str(tmp_path / "b.tsv"), "--pairs"]
    assert main([*split, str(tmp_path / "header.tsv")]) == 1  # it wrote two empty files
    assert f"dupq split: error: no pairs to split: {tmp_path}/header.tsv (tsv): 0 pairs" in capsys.readouterr().err
    assert not (tmp_path / "a.tsv").exists()
    # `dupq swaps` wrote an empty check set, for a file of no pair or of no question a rule reorders.
    swaps = ["swaps", "--out", str(tmp_path / "checks.tsv"), "--pairs"]
    assert main([*swaps, str(tmp_path / "header.tsv")]) == 1
    assert f"dupq swaps: error: no pairs to reorder: {tmp_path}/header.tsv (tsv): 0 pairs" in capsys.readouterr().err
    assert main([*swaps, str(tmp_path / "good.tsv")]) == 1
    assert capsys.readouterr().err == (
        f"dupq swaps: error: {tmp_path}/good.tsv: no rule of model/training/negatives.py reorders any of its 4 "
        "questions, so there is no check set to write\n"
    )
    assert not (tmp_path / "checks.tsv").exists()
    (tmp_path / "good.tsv").write_text("question1\tquestion2\tis_duplicate\nIs Python or Java faster?\tWho?\t1\n")
    assert main([*swaps, str(tmp_path / "good.tsv")]) == 0
    assert json.loads(capsys.readouterr().out) == {"pairs": 1, "by_rule": {"kept": 1}}
    assert load_pairs(tmp_path / "checks.tsv")[0] == [Pair("Is Python or Java faster?", "Is Java or Python faster?", 1)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["import", "q.txt", "--batch", "0"], "argument --batch: 0 is below 1"),
        (["index", "q.txt", "--namespace", "a b"], "argument --namespace: 'a b': String should match pattern"),
        (["groups", "--out", "g", "--threshold", "2"], "argument --threshold: 2 is not in [-1, 1]"),
        (["groups", "--out", "g", "--threshold", "nan"], "argument --threshold: nan is not in [-1, 1]"),
        (["groups", "--out", "g", "--min-size", "0"], "argument --min-size: 0 is below 1"),
        (["embed", "--threads", "two"], "argument --threads: 'two' is not an integer"),
        (
            ["split", "--pairs", "p", "--out-rest", "a", "--out-held", "b", "--fraction", "1.5"],
            "argument --fraction: 1.5 is not in [0, 1]",
        ),
    ],
    ids=["batch", "namespace", "threshold", "nan", "min-size", "threads", "fraction"],
)
def test_a_flag_out_of_its_range_is_refused_before_the_command_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and f"dupq {argv[0]}: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["index", "embed"])
def test_a_setting_that_cannot_be_taken_is_named_in_one_line(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUPQ_INDEX_KIND", "bogus")
    monkeypatch.setenv("DUPQ_MAX_BATCH", "0")
    assert main([command, str(tmp_path / "questions.txt")]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"dupq {command}: error: DUPQ_MAX_BATCH='0': Input should be greater than or equal to 1; "
        "DUPQ_INDEX_KIND='bogus': Input should be 'auto', 'flat' or 'hnsw'"
    )


def test_embed_prints_the_encoders_vectors_and_shows_progress(
    tiny_model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("How old are you?\nWhat is your age?\n", encoding="utf-8")
    assert main(["embed", "--model", str(tiny_model_dir), str(questions)]) == 0
    out, err = capfd.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    expected = load_encoder(tiny_model_dir).encode(["How old are you?", "What is your age?"])
    np.testing.assert_allclose([r["embedding"] for r in rows], expected, atol=1e-6)
    assert "embedding: 100%" in err and "2/2" in err
    # A table's questions are its text column, not its lines.
    table = tmp_path / "questions.csv"
    table.write_text('id,text\n1,"How old are you?"\n2,"What is your age?"\n', encoding="utf-8")
    assert main(["embed", "--model", str(tiny_model_dir), str(table)]) == 0
    assert [json.loads(line) for line in capfd.readouterr().out.splitlines()] == rows


def test_the_command_line_logs_what_it_does_not_which_faiss_builds_it_could_not_load(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("How old are you?\n", encoding="utf-8")
    command = ["index", "--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), str(questions)]
    probe = f"import sys; from app.cli import main; sys.exit(main({command!r}))"  # a fresh process imports FAISS
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "INFO app.engine: ready: model" in result.stderr
    assert "faiss.loader" not in result.stderr  # "Could not load library with AVX512 support due to: ..."


def test_a_command_that_needs_the_train_extra_says_so(tmp_path: Path) -> None:
    probe = (
        "import sys; sys.modules['torch'] = None; from app.cli import main; "
        f"sys.exit(main(['upgrade', {str(tmp_path)!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 1
    assert "dupq upgrade: error:" in result.stderr and "pip install 'dupq[train]'" in result.stderr


def test_feedback_writes_the_last_decision_on_each_pair_for_training(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A moderator reverses a decision: the training file had the pair twice, labelled both ways.
    common = ["--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "d")]
    (tmp_path / "q.txt").write_text("a\tHow old are you?\n", encoding="utf-8")
    assert main(["index", *common, str(tmp_path / "q.txt")]) == 0
    store = QuestionStore(tmp_path / "d" / "questions.sqlite3", dim=24)
    try:
        store.add_feedback([Feedback("How old are you?", "What is your age?", True, "a")], "v1")
        store.add_feedback([Feedback("Why?", "Why not?", False), Feedback("Who?", "Who?", True)], "v1")
        store.add_feedback([Feedback("What is your age?", "How old are you?", False, None, "a")], "v2")
    finally:
        store.close()
    capsys.readouterr()
    assert main(["feedback", *common, "--out", str(tmp_path / "pairs.tsv")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["pairs"], summary["superseded"], summary["same_question"]) == (2, 1, 1)
    from model.training.data import Pair, load_pairs

    assert load_pairs(tmp_path / "pairs.tsv")[0] == [
        Pair("Why?", "Why not?", 0),
        Pair("What is your age?", "How old are you?", 0),
    ]


def test_index_groups_and_feedback_work_on_either_store(
    tiny_model_dir: Path, tmp_path: Path, store_url: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = tmp_path / "questions.tsv"
    questions.write_text("q1\tHow old are you?\nq2\tHow old are you?\nq3\tWhy is the sky blue?\n", encoding="utf-8")
    url = store_url or f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"  # SQLite: a file named by URL
    common = ["--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), "--store-url", url]
    assert main(["index", *common, str(questions)]) == 0
    assert json.loads(capsys.readouterr().out)["index_size"] == 3
    assert (tmp_path / "elsewhere.sqlite3").exists() != bool(store_url)
    # A threshold above the cosine of any two different texts: the untrained tiny model gives some
    # of them more than its tau of 0.8.
    assert main(["groups", *common, "--threshold", "0.999", "--out", str(tmp_path / "groups.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["grouped"] == 2  # the two identical texts
    assert main(["feedback", *common, "--out", str(tmp_path / "feedback.tsv")]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 0
    if store_url:  # the store is PostgreSQL's: the data directory holds only the replica's copy
        assert not (tmp_path / "d" / "questions.sqlite3").exists() and (tmp_path / "d" / "replica.sqlite3").exists()


def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each wrote only at the end: `groups` after grouping, `evaluate --report` after MiniLM's pass,
    # `split` its first file, then failed on the second.
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("1\tHow old are you?\tWhat is your age?\t0\n", encoding="utf-8")
    nowhere = tmp_path / "nowhere" / "out.tsv"
    for argv, flag in (
        (["groups", "--data-dir", str(tmp_path / "none"), "--out", str(nowhere)], "--out"),
        (["evaluate", "--pairs", str(pairs), "--report", str(pairs)], "--report"),
        (
            ["split", "--pairs", str(pairs), "--out-rest", str(tmp_path / "rest.tsv"), "--out-held", str(nowhere)],
            "--out-held",
        ),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"dupq {argv[0]}: error: {flag} "), err
    assert not (tmp_path / "rest.tsv").exists()
