"""Fine-tuning (`dupq train --init-from`): a model directory's network and tokenizer, a site's
own pairs, a replay sample of what the model was trained on."""

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
from tokenizers.models import WordPiece

from app.cli import main
from model.encoder import load_encoder
from model.model_dir import sha256_file
from model.tokenizer import PAD, UNK, load_tokenizer, train_tokenizer
from model.training.data import load_pairs
from model.training.metrics import best_threshold, threshold_near

from .test_trainer import _pair_file, _train_argv

# A new domain: cooking questions, whose words the tiny model's tokenizer never saw whole.
COOKING = [
    (1, "How do I bake sourdough bread?", "What is the method for baking sourdough bread?"),
    (0, "How do I bake sourdough bread?", "How do I freeze sourdough bread?"),
    (1, "How long should I boil an egg?", "For how many minutes do I boil eggs?"),
    (0, "How long should I boil an egg?", "How long should I boil pasta?"),
    (1, "What can I cook with leftover rice?", "Recipes that use leftover rice?"),
    (0, "What can I cook with leftover rice?", "What can I cook with leftover chicken?"),
    (1, "Why does my cake sink in the middle?", "What makes a cake collapse in the centre?"),
    (0, "Why does my cake sink in the middle?", "Why does my bread rise unevenly?"),
]


def _cooking(path: Path) -> Path:
    path.write_text("".join(f"{y}\t{a}\t{b}\t{i}\n" for i, (y, a, b) in enumerate(COOKING)), encoding="utf-8")
    return path


COOKING_LABELS = np.array([y for y, _, _ in COOKING])


def _cosines(model: Path, table: dict[int, str] | None = None) -> np.ndarray:
    """The served model's cosine of each pair of COOKING (lower-cased and translated by ``table``)."""
    encoder = load_encoder(model)
    first = [q.lower().translate(table) if table else q for _, q, _ in COOKING]
    second = [q.lower().translate(table) if table else q for _, _, q in COOKING]
    return (encoder.encode(first) * encoder.encode(second)).sum(1)


def _gap(model: Path, table: dict[int, str] | None = None) -> float:
    """Mean cosine of the duplicates minus that of the non-duplicates of COOKING."""
    cosines = _cosines(model, table)
    return float(cosines[COOKING_LABELS == 1].mean() - cosines[COOKING_LABELS == 0].mean())


def _fixed_tokenizer(pairs: Path, path: Path) -> Path:
    """A tokenizer of every whole word of ``pairs`` and every single letter, alone and as a
    ``##`` piece, its ids in sorted order, so that the new domain's words go through word pieces.
    With the one `dupq train` learns from these few pairs, fine-tuning did not widen the cooking
    pairs' cosine gap (-0.0017 before, -0.0020 after)."""
    loaded, _ = load_pairs(pairs)
    texts = sorted({q for p in loaded for q in (p.question1, p.question2)})
    tokenizer = train_tokenizer(texts, vocab_size=200)  # for its normalizer and pre-tokenizer
    words = {
        word
        for text in texts
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))
    }
    chars = sorted({ch for word in words for ch in word} | set(string.ascii_lowercase))  # "v", "z" of COOKING
    tokens = [PAD, UNK, *chars, *("##" + ch for ch in chars), *sorted(words - set(chars))]
    tokenizer.model = WordPiece(
        {token: i for i, token in enumerate(tokens)}, unk_token=UNK, max_input_chars_per_word=64
    )
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("base")
    pairs = _pair_file(tmp / "pairs.tsv")
    tokenizer = _fixed_tokenizer(pairs, tmp / "tokenizer.json")
    assert main(_train_argv(pairs, tmp / "model", "--tokenizer", str(tokenizer))) == 0
    return tmp / "model", pairs


def _fine_tune(base: Path, train: Path, out: Path, *extra: str) -> int:
    files = ["--init-from", str(base), "--train", str(train), "--valid", str(train), "--out", str(out)]
    steps = ["--epochs", "40", "--patience", "40", "--batch-size", "2", "--pair-batch-size", "4", "--lr", "0.01"]
    return main(["train", *files, *steps, "--threads", "1", *extra])


def test_fine_tuning_continues_from_the_model_reloads_and_learns_the_new_pairs(
    base: tuple[Path, Path], tmp_path: Path
) -> None:
    model, original = base
    cooking = _cooking(tmp_path / "cooking.tsv")
    before = _gap(model)
    assert _fine_tune(model, cooking, tmp_path / "tuned") == 0
    after = _gap(tmp_path / "tuned")
    assert after > before + 0.05, (before, after)

    first, tuned = (json.loads((d / "config.json").read_text()) for d in (model, tmp_path / "tuned"))
    assert tuned["encoder"] == first["encoder"] and tuned["tokenizer_sha256"] == first["tokenizer_sha256"]
    assert tuned["version"] != first["version"]
    training = tuned["training"]
    started = training["init_from"].pop("validation")  # the model it started from, on --valid at its tau
    assert training["init_from"] == {
        "path": str(model),
        "version": first["version"],
        "weights_sha256": first["weights_sha256"],
    }
    assert started["threshold"] == pytest.approx(first["threshold"], abs=1e-5)
    assert tuned["validation"]["accuracy"] > started["accuracy"]
    # As many pairs replayed as given (--replay 1), from the file the model names, with its sha256.
    assert training["replay"]["pairs"] == len(COOKING)
    assert training["replay"]["files"] == [
        {"path": str(original), "sha256": first["training"]["train_files"][0]["sha256"]}
    ]
    assert training["config"]["teacher"] == "none" and training["config"]["pretrain_epochs"] == 0
    assert training["tokenizer"] == f"the tokenizer of {model}"
    # Tau and the calibration come from --valid, the new pairs: tau is the cut nearest the model's
    # own within one standard error of their best accuracy.
    assert training["valid_file"]["path"] == str(cooking)
    cosines = _cosines(tmp_path / "tuned")
    assert tuned["threshold"] == pytest.approx(threshold_near(cosines, COOKING_LABELS, first["threshold"]), abs=1e-4)


# Letters one to one onto Armenian ones: the words keep their identity, in a script no tokenizer
# here has seen.
ARMENIAN = str.maketrans({chr(97 + i): chr(0x0561 + i) for i in range(26)})


def test_fine_tuning_learns_the_words_of_a_script_the_model_has_never_seen(
    base: tuple[Path, Path], tmp_path: Path
) -> None:
    # A model written without rows for unknown words gets them, and trains them: every word of
    # these pairs is [UNK] to its tokenizer, so each question was "[UNK] ... ?" and no fine-tuning
    # could tell one from another (a gap of 0 before and after).
    model, pairs = base
    assert (
        main(
            _train_argv(
                pairs, tmp_path / "plain", "--unknown-buckets", "0", "--tokenizer", str(model / "tokenizer.json")
            )
        )
        == 0
    )
    armenian = tmp_path / "armenian.tsv"
    armenian.write_text(_cooking(tmp_path / "cooking.tsv").read_text().lower().translate(ARMENIAN), encoding="utf-8")
    before = _gap(tmp_path / "plain", ARMENIAN)
    assert _fine_tune(tmp_path / "plain", armenian, tmp_path / "tuned") == 0
    tuned = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert tuned["encoder"]["unknown_buckets"] == 4096
    assert _gap(tmp_path / "tuned", ARMENIAN) > before + 0.05


def test_fine_tuning_puts_the_pair_loss_boundary_at_the_models_tau(
    base: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.training.trainer

    model_dir, _ = base
    seen: list[object] = []
    real = model.training.trainer.Trainer.__init__

    def recording(self: object, *args: object, **kwargs: object) -> None:
        seen.append(kwargs.get("boundary"))
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model.training.trainer.Trainer, "__init__", recording)
    assert _fine_tune(model_dir, _cooking(tmp_path / "cooking.tsv"), tmp_path / "tuned", "--epochs", "1") == 0
    first = json.loads((model_dir / "config.json").read_text())
    assert seen == [(first["threshold"], first["calibration"]["slope"])]


def test_what_training_starts_from_loses_its_added_tokens(base: tuple[Path, Path], tmp_path: Path) -> None:
    # Up to dupq 0.5.0 [PAD] and [UNK] were added tokens, which encode matched in a question's own
    # text: "What does [PAD] mean?" got the padding id. A model written then keeps them (its version
    # names its vectors); whatever training starts from, the model it writes reads them as text.
    model, pairs = base
    old = shutil.copytree(model, tmp_path / "old")
    tokenizer = load_tokenizer(old / "tokenizer.json")
    tokenizer.add_special_tokens([PAD, UNK])
    tokenizer.save(str(old / "tokenizer.json"))
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "tokenizer_sha256": sha256_file(old / "tokenizer.json")}))
    assert load_encoder(old).token_ids(["[PAD] bread"])[0][0] == 0  # as a model of 0.5.0 serves it
    assert _fine_tune(old, _cooking(tmp_path / "cooking.tsv"), tmp_path / "tuned", "--epochs", "1") == 0
    assert main(_train_argv(pairs, tmp_path / "scratch", "--tokenizer", str(old / "tokenizer.json"))) == 0
    for written in (tmp_path / "tuned", tmp_path / "scratch"):
        assert (written / "tokenizer.json").read_bytes() == (model / "tokenizer.json").read_bytes()
        assert load_encoder(written).token_ids(["[PAD] bread"]) == load_encoder(written).token_ids(["[pad] bread"])


def test_the_replay_file_must_be_the_one_the_model_was_trained_on(
    base: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = base
    config = json.loads((model / "config.json").read_text())
    cooking = _cooking(tmp_path / "cooking.tsv")
    changed = shutil.copytree(model, tmp_path / "copy")
    config["training"]["train_files"][0]["sha256"] = "0" * 64
    (changed / "config.json").write_text(json.dumps(config))
    assert _fine_tune(changed, cooking, tmp_path / "out", "--epochs", "1") == 1
    assert (
        "is not the file the model was trained on (its sha256 differs): pass --replay-from" in capsys.readouterr().err
    )
    # Named by hand, or no replay at all, it goes on.
    assert _fine_tune(changed, cooking, tmp_path / "named", "--epochs", "1", "--replay-from", str(cooking)) == 0
    assert _fine_tune(changed, cooking, tmp_path / "none", "--epochs", "1", "--replay", "0") == 0
    assert json.loads((tmp_path / "none" / "config.json").read_text())["training"]["replay"] == {"pairs": 0}


def test_a_replay_file_named_relative_to_the_repository_is_found_from_anywhere(
    base: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `make train` records it: the path from the repository's root, where the training ran.
    model, original = base
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "pairs.tsv").write_bytes(original.read_bytes())
    moved = repo / "models" / "m"
    moved.mkdir(parents=True)
    for name in ("model.safetensors", "model.onnx", "tokenizer.json"):
        (moved / name).write_bytes((model / name).read_bytes())
    config = json.loads((model / "config.json").read_text())
    config["training"]["train_files"][0]["path"] = "data/pairs.tsv"
    (moved / "config.json").write_text(json.dumps(config))
    cooking = _cooking(tmp_path / "cooking.tsv")
    monkeypatch.chdir(tmp_path)  # neither the repository's root nor the model directory
    assert _fine_tune(moved, cooking, tmp_path / "out", "--epochs", "1") == 0
    replay = json.loads((tmp_path / "out" / "config.json").read_text())["training"]["replay"]
    assert Path(replay["files"][0]["path"]).resolve() == (repo / "data" / "pairs.tsv").resolve()
    (repo / "data" / "pairs.tsv").unlink()
    assert _fine_tune(moved, cooking, tmp_path / "gone", "--epochs", "1") == 1
    assert (
        f"the model was trained on data/pairs.tsv, which is not there to replay (from here, or from {moved} or a "
        "directory above it)" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--embed-dim", "16"], "the architecture is the model's own; drop --embed-dim"),
        (["--tokenizer", "tokenizer.json"], "the tokenizer is the model's own; drop --tokenizer"),
        (["--members", "2"], "fine-tuning continues one network; drop --members"),
    ],
)
def test_what_fine_tuning_cannot_change_is_refused_in_one_line(
    base: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    model, _ = base
    assert _fine_tune(model, _cooking(tmp_path / "cooking.tsv"), tmp_path / "out", *flags) == 1
    assert f"dupq train: error: --init-from {model}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fine_tuning_into_the_model_it_starts_from_is_refused(
    base: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It overwrote the model, which its own log then said to keep when the new one did no better.
    model, _ = base
    before = {f.name: f.read_bytes() for f in model.iterdir()}
    assert _fine_tune(model, _cooking(tmp_path / "cooking.tsv"), model / ".." / model.name) == 1
    assert "is the model directory that --init-from starts from: write the fine-tuned model to another" in (
        capsys.readouterr().err
    )
    assert {f.name: f.read_bytes() for f in model.iterdir()} == before


def test_fine_tuning_that_gains_nothing_on_valid_says_to_keep_the_model(
    base: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = base
    # A learning rate of 0 changes no weight, and on eight pairs one standard error is wide enough
    # that the model's tau stays: the model written is the one it started from.
    with caplog.at_level("INFO", logger="model.training.trainer"):
        assert _fine_tune(model, _cooking(tmp_path / "cooking.tsv"), tmp_path / "tuned", "--lr", "0") == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"{model} on the validation pairs: accuracy ") for line in lines)
    assert any(f"does no better on the validation pairs than {model}" in line for line in lines)
    first, tuned = (json.loads((d / "config.json").read_text()) for d in (model, tmp_path / "tuned"))
    assert tuned["threshold"] == first["threshold"]  # the best cut of these pairs would have moved it
    cosines = _cosines(model)
    assert best_threshold(cosines, COOKING_LABELS) != pytest.approx(first["threshold"], abs=1e-3)


def test_a_validation_file_of_one_label_is_refused_before_training(
    base: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = base
    cooking = _cooking(tmp_path / "cooking.tsv")
    duplicates = tmp_path / "duplicates.tsv"
    duplicates.write_text("".join(line for line in cooking.read_text().splitlines(True) if line.startswith("1\t")))
    argv = ["train", "--init-from", str(model), "--train", str(cooking), "--valid", str(duplicates)]
    assert main([*argv, "--out", str(tmp_path / "tuned"), "--threads", "1"]) == 1
    assert "all 4 validation pairs have the same label" in capsys.readouterr().err
    assert not (tmp_path / "tuned").exists()
