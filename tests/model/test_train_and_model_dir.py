import dataclasses
import json
import math
import re
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

from app.cli import build_parser, main
from app.store import QuestionStore
from model.config import EncoderConfig, TrainConfig
from model.model_dir import ModelDirError, load_encoder, save_model_dir
from model.tokenizer import load_tokenizer, train_tokenizer

from ..conftest import CORPUS


def _pair_file(path: Path) -> Path:
    rows = [
        (1, CORPUS[0], CORPUS[1]),
        (0, CORPUS[2], CORPUS[3]),
        (1, CORPUS[4], CORPUS[5]),
        (0, CORPUS[5], CORPUS[6]),
        (1, CORPUS[7], CORPUS[8]),
        (1, CORPUS[9], CORPUS[10]),
        (0, CORPUS[0], CORPUS[9]),
        (0, CORPUS[11], CORPUS[7]),
    ]
    path.write_text("".join(f"{y}\t{a}\t{b}\t{i}\n" for i, (y, a, b) in enumerate(rows)), encoding="utf-8")
    return path


# A tiny network trained for two steps: fast, and every part of training runs.
TINY = ["--max-steps", "2", "--batch-size", "3", "--pair-batch-size", "4", "--embed-dim", "8", "--hidden-dim", "8"]
# One torch thread, set by each run: other tests (a service's engine) change the process's count,
# and a sum over another number of threads rounds differently, so the weights would too.
TINY += ["--out-dim", "16", "--epochs", "2", "--threads", "1"]


def _train_argv(pairs: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--train", str(pairs), "--valid", str(pairs), "--out", str(out), *extra, *TINY]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("train")
    pairs = _pair_file(tmp / "pairs.tsv")
    out = tmp / "model"
    argv = _train_argv(pairs, out, "--vocab-size", "200")
    assert main(argv) == 0
    return out, pairs


def test_two_step_training_writes_a_directory_that_reloads_identically(trained: tuple[Path, Path]) -> None:
    out, _ = trained
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["valid_file"]["sha256"] and config["training"]["train_files"][0]["pairs"] == 8
    assert -1 <= config["threshold"] <= 1 and "slope" in config["calibration"]
    assert {"accuracy", "mrr@10", "roc_auc"} <= set(config["validation"])
    first = load_encoder(out).encode(CORPUS)
    again = load_encoder(out).encode(CORPUS)
    np.testing.assert_array_equal(first, again)
    assert not any(p.suffix in {".pt", ".pkl", ".bin"} for p in out.iterdir())


def test_members_train_at_once_each_as_it_would_alone(trained: tuple[Path, Path], tmp_path: Path) -> None:
    out, pairs = trained
    tokenizer = str(out / "tokenizer.json")
    assert main(_train_argv(pairs, tmp_path / "both", "--members", "2", "--tokenizer", tokenizer)) == 0
    config = json.loads((tmp_path / "both" / "config.json").read_text())
    assert (config["format_version"], config["members"], config["dim"]) == (2, 2, 32)
    assert [(m["seed"], m["threads"]) for m in config["training"]["members"]] == [(0, 1), (1, 1)]
    assert config["training"]["config"]["members"] == 2 and -1 <= config["threshold"] <= 1
    alone = []
    for seed in (0, 1):
        assert main(_train_argv(pairs, tmp_path / f"seed{seed}", "--seed", str(seed), "--tokenizer", tokenizer)) == 0
        alone.append(load_encoder(tmp_path / f"seed{seed}").encode(CORPUS))
    both = load_encoder(tmp_path / "both").encode(CORPUS)
    np.testing.assert_allclose(both, np.concatenate(alone, axis=1) / math.sqrt(2), atol=1e-6)
    validation = json.loads((tmp_path / "seed1" / "config.json").read_text())["validation"]
    assert config["training"]["members"][1]["validation"] == validation


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--members", "0"], "--members 0: train at least 1 network"),
        (
            ["--members", "2", "--pretrain-epochs", "1", "--pretrain-questions", "5"],
            "--members with --pretrain-questions",
        ),
    ],
)
def test_members_that_cannot_be_trained_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    pairs = _pair_file(tmp_path / "pairs.tsv")
    assert main(_train_argv(pairs, tmp_path / "model", *flags)) == 1
    assert f"dupq train: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_a_members_directory_checks_its_count_against_its_weights(tiny_members_dir: Path, tmp_path: Path) -> None:
    for members, message in ((3, "do not match config.json: members.2.embed.weight"), (0, "at least 1, not 0")):
        broken = tmp_path / f"members{members}"
        shutil.copytree(tiny_members_dir, broken)
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "members": members}))
        with pytest.raises(ModelDirError, match=re.escape(message)):
            load_encoder(broken)
    newer = tmp_path / "newer"
    shutil.copytree(tiny_members_dir, newer)
    config = json.loads((newer / "config.json").read_text())
    assert config["format_version"] == 2
    (newer / "config.json").write_text(json.dumps({**config, "format_version": 3}))
    with pytest.raises(ModelDirError, match="has format 3; this dupq reads up to 2"):
        load_encoder(newer)
    single = tmp_path / "single"
    shutil.copytree(tiny_members_dir, single)
    config = json.loads((single / "config.json").read_text())
    del config["members"]
    (single / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"^weights in .* do not match config.json: embed\.weight: config wants"):
        load_encoder(single)


def test_every_hyperparameter_is_a_documented_train_flag() -> None:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    help_of = {flag: action.help for action in train._actions for flag in action.option_strings}
    architecture = [f for f in dataclasses.fields(EncoderConfig) if f.name not in {"vocab_size", "bidirectional"}]
    for field in [*dataclasses.fields(TrainConfig), *architecture]:
        assert help_of["--" + field.name.replace("_", "-")].startswith(field.metadata["help"] + " (default: ")
    args = parser.parse_args(
        ["train", "--train", "a", "--valid", "b", "--out", "c", "--pooling", "mean", "--no-hard-negatives"]
    )
    assert args.pooling == "mean" and args.hard_negatives is False and args.epochs is None
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--train", "a", "--valid", "b", "--out", "c", "--pooling", "sum"])


def test_evaluate_prints_every_metric_and_writes_a_report(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pairs = trained
    assert main(["evaluate", "--model", str(out), "--pairs", str(pairs), "--report", str(tmp_path / "report")]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "threshold", "r@1", "r@10", "mrr@10"):
        assert 0.0 <= result[key] <= 1.0 or key == "threshold"
        assert key in result["tfidf"]
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "roc.png").stat().st_size > 1000


def test_load_encoder_refuses_broken_directories(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        load_encoder(tmp_path / "nothing")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_model_dir, incomplete)
    (incomplete / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match=r"missing tokenizer\.json"):
        load_encoder(incomplete)
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_model_dir, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["encoder"]["hidden_dim"] = 32
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"do not match config\.json"):
        load_encoder(mismatched)


def test_the_command_line_reports_bad_input_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("How old are you?\nWhere is the caf\u00e9?\n".encode("latin-1"))
    assert main(["embed", "--model", str(tiny_model_dir), str(latin1)]) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"dupq embed: error: {latin1} is not UTF-8 text: byte 0xe9, invalid continuation byte")
    )
    assert main(["embed", "--model", str(tmp_path / "nothing"), str(latin1)]) == 1
    assert "dupq embed: error: model directory" in capsys.readouterr().err
    assert (
        main(["index", "--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), str(tmp_path / "none")])
        == 1
    )
    assert "No such file or directory" in capsys.readouterr().err
    questions = tmp_path / "questions.tsv"
    questions.write_text("q1\tHow old are you?\nq/2\tWhat is your age?\n", encoding="utf-8")
    assert main(["index", "--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), str(questions)]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    # Not on the data directory of a running service: its index would miss these questions.
    held = QuestionStore(tmp_path / "d" / "questions.sqlite3", dim=24)
    try:
        assert (
            main(["index", "--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), str(questions)]) == 1
        )
        assert "dupq index: error: cannot open the question store" in capsys.readouterr().err
    finally:
        held.close()


def test_training_again_with_the_same_tokenizer_gives_the_same_weights(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    out, pairs = trained
    config = json.loads((out / "config.json").read_text())
    argv = _train_argv(pairs, tmp_path / "again", "--tokenizer", str(out / "tokenizer.json"))
    assert main(argv) == 0
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["weights_sha256"] == config["weights_sha256"]
    assert again["version"] == config["version"]


def test_the_version_changes_with_the_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The same weights with another tokenizer can give a question another vector: another version.
    encoder = load_encoder(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tokenizer = load_tokenizer(tiny_model_dir / "tokenizer.json")
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    other = save_model_dir(
        tmp_path / "other", encoder.network, tokenizer, name="n", threshold=0.5, calibration=(1.0, 0.0)
    )
    assert other["weights_sha256"] == config["weights_sha256"]
    assert other["tokenizer_sha256"] != config["tokenizer_sha256"]
    assert other["version"].split("+")[1] != config["version"].split("+")[1]


def test_weights_are_readable_by_others_and_damage_is_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert (tiny_model_dir / "model.safetensors").stat().st_mode & 0o044 == 0o044  # a service user can read them
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    (damaged / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelDirError, match="cannot read"):
        load_encoder(damaged)


def test_topic_batches_from_the_second_epoch(
    trained: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, pairs = trained
    argv = _train_argv(pairs, tmp_path / "topics", "--tokenizer", str(out / "tokenizer.json"), "--topic-size", "1")
    with caplog.at_level("INFO", logger="model.train"):
        assert main(argv) == 0
    topic_lines = [r.getMessage() for r in caplog.records if " topics of " in r.getMessage()]
    assert len(topic_lines) == 1  # the second epoch only: the first one's network knows nothing yet
    assert topic_lines[0].startswith("1 topics of 4 questions")
    config = json.loads((tmp_path / "topics" / "config.json").read_text())
    assert config["training"]["config"]["topic_size"] == 1
    vectors = load_encoder(tmp_path / "topics").encode([CORPUS[0], CORPUS[1]])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_device_that_is_not_there_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = _pair_file(tmp_path / "pairs.tsv")
    assert main(_train_argv(pairs, tmp_path / "model", "--device", "tpu-ish")) == 1
    assert "dupq train: error: --device 'tpu-ish'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(_train_argv(pairs, tmp_path / "model", "--device", "cuda")) == 1
        assert "sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_a_gpu_writes_a_directory_that_serves_on_the_cpu(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    reference, pairs = trained
    out = tmp_path / "gpu"
    tokenizer = str(reference / "tokenizer.json")
    assert main(_train_argv(pairs, out, "--device", "cuda", "--tokenizer", tokenizer)) == 0
    texts = ["How old are you?", "What is your age?", "Where are you from?"]
    onnx, torch_cpu = load_encoder(out), load_encoder(out, backend="torch")
    np.testing.assert_allclose(onnx.encode(texts), torch_cpu.encode(texts), atol=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["config"]["device"] == "cuda"


def _stand_in_minilm(seen: list[str], dim: int, dtypes: list[str] | None = None) -> object:
    """A stand-in for ``model.evaluate.minilm_encoder``: a fixed unit vector per text (a word
    piece and the same letters as a word get the same one), each text it encodes noted in
    ``seen``, and the precision each encoder was asked for in ``dtypes``."""

    def minilm_encoder(dtype: str = "float32") -> object:
        if dtypes is not None:
            dtypes.append(dtype)

        def encode(texts: list[str]) -> np.ndarray:
            seen.extend(texts)
            v = np.stack([np.random.default_rng(sum(map(ord, t)) * 7919 + len(t)).normal(size=dim) for t in texts])
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

        return encode

    return minilm_encoder


def test_minilm_init_fills_the_free_columns_with_each_tokens_vector(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.evaluate
    from model.encoder import SiameseEncoder
    from model.train import _minilm_init

    seen: list[str] = []
    monkeypatch.setattr(model.evaluate, "minilm_encoder", _stand_in_minilm(seen, 32))
    tokenizer = load_tokenizer(tiny_model_dir / "tokenizer.json")
    network = SiameseEncoder(EncoderConfig(vocab_size=tokenizer.get_vocab_size(), embed_dim=12, hidden_dim=4))
    before = network.embed.weight.detach().clone()
    filled = _minilm_init(network, tokenizer, first_column=4)
    after = network.embed.weight.detach()

    vocab = tokenizer.get_vocab()
    assert filled == len(seen) == tokenizer.get_vocab_size() - 2  # every token but [PAD] and [UNK]
    assert not any(t.startswith("##") for t in seen)
    assert torch.equal(after[:2], before[:2])  # [PAD] stays zero, [UNK] random
    assert torch.equal(after[:, :4], before[:, :4])  # the columns before first_column are left alone
    assert not torch.allclose(after[2:, 4:], before[2:, 4:])
    # The same scale as the random initialisation, so the learning rate suits both.
    assert float(after[2:, 4:].std()) == pytest.approx(float(before[2:, 4:].std()), rel=1e-3)
    pieces = [t for t in vocab if t.startswith("##") and t[2:] in vocab]
    assert pieces, "the fixture tokenizer has a word piece that is also a word"
    word, piece = vocab[pieces[0][2:]], vocab[pieces[0]]
    assert torch.allclose(after[word, 4:], after[piece, 4:])


def test_pretraining_pulls_every_questions_vector_towards_the_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.evaluate
    from model.data import load_pairs
    from model.train import Trainer

    taught: list[str] = []
    monkeypatch.setattr(model.evaluate, "minilm_encoder", _stand_in_minilm(taught, 24))
    torch.set_num_threads(1)
    pairs, _ = load_pairs(_pair_file(tmp_path / "pairs.tsv"))
    config = TrainConfig(pretrain_epochs=8, lr=0.01, vocab_size=200)
    trainer = Trainer(pairs, pairs, config, {"embed_dim": 8, "hidden_dim": 8, "out_dim": 16})
    # Every training question is taught, not only those with a known duplicate.
    assert sorted(taught) == sorted(trainer.graph.texts) and len(taught) == 12
    # Distillation, were it on, would still teach only questions with a known duplicate.
    with_duplicate = {q for members in trainer.graph.members if len(members) > 1 for q in members}
    assert set(np.flatnonzero(trainer.distill_row >= 0)) == with_duplicate and len(with_duplicate) == 8
    before = trainer.encode(trainer.graph.texts)
    losses = trainer.pretrain(batch_size=4)
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.05
    assert not np.allclose(trainer.encode(trainer.graph.texts), before)


def test_pretraining_with_no_head_pulls_the_networks_own_vectors_towards_the_projected_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.evaluate
    from model.data import load_pairs
    from model.train import Trainer

    monkeypatch.setattr(model.evaluate, "minilm_encoder", _stand_in_minilm([], 24))
    torch.set_num_threads(1)
    pairs, _ = load_pairs(_pair_file(tmp_path / "pairs.tsv"))
    config = TrainConfig(pretrain_epochs=8, pretrain_head="projection", lr=0.01, vocab_size=200)
    trainer = Trainer(pairs, pairs, config, {"embed_dim": 8, "hidden_dim": 8, "out_dim": 16})
    assert trainer.teacher is not None
    # Teacher vectors that lie in 16 of their 24 dimensions keep every cosine when projected.
    teacher = trainer.teacher.clone()
    flat = torch.nn.functional.normalize(torch.cat([teacher[:, :16], torch.zeros(len(teacher), 8)], 1), dim=1)
    trainer.teacher = flat @ torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(0)))[0]
    projected = trainer._projected_teacher()
    assert projected.shape == (len(teacher), 16)
    cosines = torch.nn.functional.normalize(projected, dim=1) @ torch.nn.functional.normalize(projected, dim=1).T
    assert torch.allclose(cosines, trainer.teacher @ trainer.teacher.T, atol=1e-5)

    trainer.teacher = teacher
    target = torch.nn.functional.normalize(trainer._projected_teacher(), dim=1).numpy()
    rows = trainer.teacher_row[np.arange(len(trainer.graph.texts))]

    def gap() -> float:  # how far the network's cosines lie from the projected teacher's
        v = trainer.encode(trainer.graph.texts)
        return float(np.abs(v @ v.T - target[rows] @ target[rows].T).mean())

    before = gap()
    losses = trainer.pretrain(batch_size=4)
    assert losses[-1] < losses[0] - 0.05
    assert gap() < before

    wide = Trainer(pairs, pairs, config, {"embed_dim": 8, "hidden_dim": 8, "out_dim": 32})
    with pytest.raises(ValueError, match=r"network's width \(32\) at most the teacher's \(24\)"):
        wide.pretrain(batch_size=4)


@pytest.mark.parametrize("wanted", [8, 10])
def test_pretraining_on_fewer_questions_teaches_the_distilled_ones_then_a_draw_of_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wanted: int
) -> None:
    import model.evaluate
    from model.data import load_pairs
    from model.train import Trainer

    taught: list[str] = []
    monkeypatch.setattr(model.evaluate, "minilm_encoder", _stand_in_minilm(taught, 24))
    torch.set_num_threads(1)
    pairs, _ = load_pairs(_pair_file(tmp_path / "pairs.tsv"))
    config = TrainConfig(pretrain_epochs=1, pretrain_questions=wanted, distill_weight=1.0, vocab_size=200)
    trainer = Trainer(pairs, pairs, config, {"embed_dim": 8, "hidden_dim": 8, "out_dim": 16})
    with_duplicate = {q for members in trainer.graph.members if len(members) > 1 for q in members}
    assert len(with_duplicate) == 8 and len(trainer.graph.texts) == 12
    held = set(np.flatnonzero(trainer.teacher_row >= 0).tolist())
    # The teacher encodes those questions alone: the distilled ones, then others up to `wanted`.
    assert len(held) == len(taught) == wanted and held >= with_duplicate
    assert sorted(taught) == sorted(trainer.graph.texts[q] for q in held)
    assert set(np.flatnonzero(trainer.distill_row >= 0).tolist()) == with_duplicate
    # Each pretraining pass goes over exactly the taught questions.
    asked: list[int] = []

    class Recording(list):  # type: ignore[type-arg]
        def __getitem__(self, q):  # type: ignore[no-untyped-def]
            asked.append(int(q))
            return super().__getitem__(q)

    trainer.token_ids = Recording(trainer.token_ids)
    losses = trainer.pretrain(batch_size=3)
    assert len(losses) == 1 and sorted(asked) == sorted(held)


def test_the_teacher_runs_in_the_precision_asked_and_its_cache_is_kept_apart_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.evaluate
    from model.data import load_pairs
    from model.train import Trainer

    taught: list[str] = []
    dtypes: list[str] = []
    monkeypatch.setattr(model.evaluate, "minilm_encoder", _stand_in_minilm(taught, 24, dtypes))
    torch.set_num_threads(1)
    pairs, _ = load_pairs(_pair_file(tmp_path / "pairs.tsv"))
    cache = tmp_path / "teacher.npy"

    def teacher(dtype: Literal["float32", "bfloat16"]) -> torch.Tensor:
        config = TrainConfig(distill_weight=1.0, teacher_dtype=dtype, teacher_cache=str(cache), vocab_size=200)
        trainer = Trainer(pairs, pairs, config, {"embed_dim": 8, "hidden_dim": 8, "out_dim": 16})
        assert trainer.teacher is not None
        return trainer.teacher

    first = teacher("float32")
    assert dtypes == ["float32"] and len(taught) == 8  # the questions with a known duplicate
    # Vectors cached in one precision are not taken for the other: the teacher runs again.
    teacher("bfloat16")
    assert dtypes == ["float32", "bfloat16"] and len(taught) == 16
    teacher("bfloat16")  # now cached in bfloat16
    assert dtypes == ["float32", "bfloat16"] and len(taught) == 16
    assert torch.equal(teacher("float32"), first) and len(taught) == 24  # re-encoded, as the cache holds bfloat16's


def test_minilm_refuses_a_precision_it_does_not_run_in() -> None:
    from model.evaluate import minilm_encoder

    with pytest.raises(ValueError, match="float32 or bfloat16, not 'float16'"):
        minilm_encoder("float16")


def test_minilm_columns_after_glove_need_a_wider_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import model.train
    from model.data import load_pairs

    monkeypatch.setattr(model.train, "_glove_init", lambda network, tokenizer: 0)
    pairs, _ = load_pairs(_pair_file(tmp_path / "pairs.tsv"))
    config = TrainConfig(glove=True, minilm_embed=True, vocab_size=200)
    with pytest.raises(ValueError, match="--embed-dim 50 leaves none"):
        model.train.Trainer(pairs, pairs, config, {"embed_dim": 50, "hidden_dim": 8, "out_dim": 16})


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_each_step_distils_the_taught_questions_with_the_chosen_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: Literal["mse", "kl"]
) -> None:
    import model.evaluate
    import model.train
    from model.data import load_pairs

    monkeypatch.setattr(model.evaluate, "minilm_encoder", _stand_in_minilm([], 24))
    calls: list[tuple[str, int]] = []
    for name in ("similarity_distillation_loss", "ranking_distillation_loss"):
        real = getattr(model.train, name)

        def recording(student, teacher, *rest, name=name, real=real):
            assert student.shape[0] == teacher.shape[0] and teacher.shape[1] == 24
            calls.append((name, student.shape[0]))
            return real(student, teacher, *rest)

        monkeypatch.setattr(model.train, name, recording)
    torch.set_num_threads(1)
    pairs, _ = load_pairs(_pair_file(tmp_path / "pairs.tsv"))
    config = TrainConfig(distill_weight=2.0, distill_loss=kind, vocab_size=200, max_steps=2, batch_size=3)
    trainer = model.train.Trainer(pairs, pairs, config, {"embed_dim": 8, "hidden_dim": 8, "out_dim": 16})
    trainer.fit()
    wanted = "ranking_distillation_loss" if kind == "kl" else "similarity_distillation_loss"
    assert len(calls) == 2 and {name for name, _ in calls} == {wanted}
    # Each step's anchors and positives all have a known duplicate, so at least those are taught.
    assert all(rows >= 6 for _, rows in calls)


def test_the_moving_average_of_the_weights_by_hand() -> None:
    from model.train import _ema_update

    average = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([7])}
    _ema_update(average, {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([9])}, 0.75)
    assert torch.equal(average["w"], torch.tensor([1.5, 3.0]))  # 0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 6
    assert torch.equal(average["n"], torch.tensor([9]))  # not averaged: copied


def test_the_averaged_weights_are_kept_and_the_live_ones_train_as_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.train
    from model.data import load_pairs

    # Each validation scores higher than the one before, so the last epoch's weights are kept.
    calls = iter(range(1000))
    monkeypatch.setattr(
        model.train,
        "validation_metrics",
        lambda *_: {"accuracy": next(calls) / 1000, "roc_auc": 0.5, "mrr@10": 0.0, "threshold": 0.5},
    )

    pairs, _ = load_pairs(_pair_file(tmp_path / "pairs.tsv"))
    small = {"embed_dim": 8, "hidden_dim": 8, "out_dim": 16}
    # One tokenizer for both runs: a retrained one may break ties between merges otherwise.
    tokenizer = train_tokenizer([text for pair in pairs for text in (pair.question1, pair.question2)], vocab_size=200)
    real = model.train._ema_update

    def run(ema: float) -> tuple[model.train.Trainer, list[dict[str, torch.Tensor]]]:
        torch.set_num_threads(1)
        config = TrainConfig(ema=ema, vocab_size=200, max_steps=3, epochs=3, batch_size=2)
        trainer = model.train.Trainer(pairs, pairs, config, small, tokenizer)
        states = [{k: v.clone() for k, v in trainer.network.state_dict().items()}]

        def recording(average, live, decay):
            states.append({k: v.clone() for k, v in live.items()})
            real(average, live, decay)

        monkeypatch.setattr(model.train, "_ema_update", recording)
        trainer.fit()
        return trainer, states

    averaged, states = run(0.5)
    assert len(states) == 4  # the start, then after each of the 3 steps (over two epochs)
    expected = states[0]
    for live in states[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * live[k] for k in expected}
    kept = averaged.network.state_dict()
    assert all(torch.allclose(kept[k], expected[k], atol=1e-6) for k in kept)
    assert not torch.allclose(kept["proj.weight"], states[-1]["proj.weight"])
    plain, _ = run(0.0)
    assert all(torch.equal(plain.network.state_dict()[k], states[-1][k]) for k in kept)


def test_a_moving_average_decay_outside_0_to_1_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = _pair_file(tmp_path / "pairs.tsv")
    assert main(_train_argv(pairs, tmp_path / "model", "--ema", "1.0")) == 1
    assert "dupq train: error: --ema 1.0: the decay must be" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_the_memory_adds_recent_vectors_as_negatives_but_never_the_rows_own_group(tmp_path: Path) -> None:
    from model.data import load_pairs
    from model.train import Trainer

    torch.set_num_threads(1)
    pairs, _ = load_pairs(_pair_file(tmp_path / "pairs.tsv"))
    config = TrainConfig(vocab_size=200, memory=3, batch_size=3)
    trainer = Trainer(pairs, pairs, config, {"embed_dim": 8, "hidden_dim": 8, "out_dim": 16})
    q = {text: i for i, text in enumerate(trainer.graph.texts)}
    first, second, alone, other = q[CORPUS[0]], q[CORPUS[1]], q[CORPUS[2]], q[CORPUS[4]]
    vectors = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    sim = torch.randn(1, 2)
    assert trainer._with_memory(sim, vectors[:1], [first]) is sim  # nothing remembered yet, and off
    trainer._remember(vectors[1:3], [second, alone])
    trainer._remember(vectors[3:], [other])
    trainer._remember(vectors[:1], [first])  # the memory holds three: the oldest step's last one, `alone`, falls out
    assert trainer._with_memory(sim, vectors[:1], [first]) is sim  # still off (the first epoch)
    trainer.memory_on = True
    wide = trainer._with_memory(sim, vectors[1:2], [second])
    assert wide.shape == (1, 5) and torch.equal(wide[:, :2], sim)
    # Remembered, newest step first: `first` and `second` (the row's own group: never a negative), `other`.
    assert wide[0, 2] == -math.inf and wide[0, 4] == -math.inf
    assert torch.allclose(wide[0, 3], vectors[3] @ vectors[1])


def test_training_with_a_memory_uses_it_and_a_memory_without_the_softmax_loss_is_refused(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.train

    widened: list[int] = []
    real = model.train.Trainer._with_memory

    def recording(self, sim, rows, questions):  # type: ignore[no-untyped-def]
        wide = real(self, sim, rows, questions)
        widened.append(wide.shape[1] - sim.shape[1])
        return wide

    monkeypatch.setattr(model.train.Trainer, "_with_memory", recording)
    out, pairs = trained
    tokenizer = ["--tokenizer", str(out / "tokenizer.json")]
    assert main(_train_argv(pairs, tmp_path / "memory", *tokenizer, "--memory", "8")) == 0
    # Two steps, one per epoch, each scoring both directions: the first epoch's see no memory, the
    # second's see the first step's vectors (3 anchors and their 3 duplicates).
    assert widened == [0, 0, 6, 6]
    assert json.loads((tmp_path / "memory" / "config.json").read_text())["training"]["config"]["memory"] == 8
    assert main(_train_argv(pairs, tmp_path / "refused", *tokenizer, "--memory", "8", "--loss", "triplet")) == 1
    assert "--memory 8: must be 0 (off) or positive, with the softmax loss on" in capsys.readouterr().err
