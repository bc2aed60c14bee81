"""The encoder at run time (ONNX Runtime): the embedding contract, batching, threads."""

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.encoder import (
    _CALL_COST,
    _STEP_COST,
    QuestionEncoder,
    _length_buckets,
    available_cpus,
    load_encoder,
    pad_ids,
    single_thread_session,
)

from ..conftest import QUESTIONS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> QuestionEncoder:
    return load_encoder(model_dir, threads=1)


def test_unit_norm_float32_contract(encoder: QuestionEncoder) -> None:
    vectors = encoder.encode(QUESTIONS)
    assert vectors.dtype == np.float32 and vectors.flags["C_CONTIGUOUS"]
    assert vectors.shape == (len(QUESTIONS), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_symmetric_and_reflexive(encoder: QuestionEncoder) -> None:
    a, b = encoder.encode(QUESTIONS[:2])
    assert float(a @ b) == float(b @ a)
    assert float(a @ a) == pytest.approx(1.0, abs=1e-5)
    assert float(a @ b) < 0.99999  # two different questions, two different vectors


def test_padding_and_batch_companions_never_change_a_vector(encoder: QuestionEncoder) -> None:
    alone = np.stack([encoder.encode([q])[0] for q in QUESTIONS])
    np.testing.assert_allclose(encoder.encode(QUESTIONS), alone, atol=1e-6)
    ids, lengths = pad_ids(encoder.token_ids(QUESTIONS))  # one call, padded to the longest
    assert len(set(lengths.tolist())) > 1
    np.testing.assert_allclose(encoder.forward(ids, lengths), alone, atol=1e-6)


def test_a_batch_run_in_one_call_keeps_the_order_given(encoder: QuestionEncoder) -> None:
    # A pair of a /similarity request is mostly one call, run in the order given, not sorted.
    pair = ["How do I learn to play the guitar?", "How old are you?"]
    lengths = [len(ids) for ids in encoder.token_ids(pair)]
    assert lengths[0] > lengths[1] and len(_length_buckets([1, 0], lengths, 256)) == 1
    alone = np.stack([encoder.encode([q])[0] for q in pair])
    np.testing.assert_allclose(encoder.encode(pair), alone, atol=1e-6)
    np.testing.assert_allclose(encoder.encode(pair[::-1]), alone[::-1], atol=1e-6)


class _Watched:
    """An ONNX Runtime session that notes the threads calling it."""

    def __init__(self, session: Any) -> None:
        self.session, self.callers = session, set()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def run(self, *args: Any) -> Any:
        self.callers.add(threading.get_ident())
        return self.session.run(*args)


def test_a_batch_shared_between_threads_gives_the_vectors_of_one_thread(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 120 questions of many lengths: dealt out to two threads, several length buckets each, run on
    # one session (one copy of the weights, however many threads).
    sessions: list[_Watched] = []

    def watched(graph: bytes, weights: Path | None) -> _Watched:
        sessions.append(_Watched(single_thread_session(graph, weights)))
        return sessions[-1]

    monkeypatch.setattr("model.encoder.single_thread_session", watched)
    questions = [f"{q} {' '.join(['and more'] * (i % 13))} number {i}?" for i, q in enumerate(QUESTIONS * 24)]
    shared = load_encoder(model_dir, threads=2)
    reference = np.stack([load_encoder(model_dir, threads=1).encode([q])[0] for q in questions])
    np.testing.assert_allclose(shared.encode(questions, batch_size=16), reference, atol=1e-6)
    assert len(sessions[0].callers) == 2  # the first encoder's one session, called from both threads
    np.testing.assert_allclose(shared.encode(questions[:3]), reference[:3], atol=1e-6)  # too few to split


def test_a_graph_that_keeps_no_weight_beside_it_loads_with_an_empty_file(model_dir: Path, tmp_path: Path) -> None:
    # dupq convert writes model.onnx.data even when the graph keeps every weight (all under 1 KiB).
    empty = tmp_path / "model.onnx.data"
    empty.touch()
    session = single_thread_session((model_dir / "model.onnx").read_bytes(), empty)
    assert session.get_outputs()[0].name == "embeddings"


@pytest.mark.parametrize(
    ("files", "cap"),
    [
        ({"cpu.max": "100000 100000\n"}, 1),  # cgroup v2: docker run --cpus 1
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one thread
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup file: not in a container
    ],
)
def test_available_cpus_are_capped_by_a_containers_quota(
    tmp_path: Path, files: dict[str, str], cap: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (affinity if cap is None else min(cap, affinity))


@pytest.mark.parametrize("setting", [None, "0"])
def test_onnx_runtime_calls_home_only_when_the_operator_says_so(
    tiny_model_dir: Path, tmp_path: Path, setting: str | None
) -> None:
    """ONNX Runtime keeps its telemetry (a device identifier, a queue of events to upload) under
    the home folder from its import on; dupq turns it off unless ORT_DISABLE_TELEMETRY says
    otherwise. "0" shows that the probe sees the telemetry where it is on."""
    quiet = {"ORT_DISABLE_TELEMETRY", "CI", "GITHUB_ACTIONS", "TF_BUILD", "ORT_RUNNING_UNIT_TESTS"}
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    env |= {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}
    if setting is not None:
        env["ORT_DISABLE_TELEMETRY"] = setting
    probe = f"from model.encoder import load_encoder as e; print(len(e({str(tiny_model_dir)!r}).encode(['Why?'])))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert run.stdout.strip() == "1"
    kept = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    if setting is None:
        assert kept == [] and "telemetry" not in run.stderr
    else:
        assert any("onnxruntime" in name for name in kept)


def test_threshold_and_a_monotonic_calibrated_probability(encoder: QuestionEncoder) -> None:
    assert encoder.threshold == 0.8 and encoder.max_tokens == 64
    similarities = np.linspace(-1, 1, 21)
    probabilities = encoder.probability(similarities)
    assert np.all(np.diff(probabilities) > 0) and 0 < probabilities[0] < probabilities[-1] < 1
    assert encoder.probability(0.8) == pytest.approx(1 / (1 + np.exp(-(10.0 * 0.8 - 8.0))))


def _run_cost(rows: int, steps: int) -> float:
    return _CALL_COST + _STEP_COST * steps + rows * steps


@pytest.mark.parametrize("seed", range(20))
def test_length_buckets_cut_where_the_modelled_cost_is_least(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=int(rng.integers(1, 60))).tolist()
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    runs = _length_buckets(order, lengths, most=1000)
    assert [i for run in runs for i in run] == order  # every row once, in order
    cost = sum(_run_cost(len(run), max(lengths[i] for i in run)) for run in runs)
    # Brute force over every cut, between equal lengths too.
    best = [0.0] + [float("inf")] * len(order)
    for j in range(1, len(order) + 1):
        best[j] = min(best[i] + _run_cost(j - i, lengths[order[j - 1]]) for i in range(j))
    assert cost == pytest.approx(best[-1])


def test_length_buckets_hold_at_most_the_batch_size() -> None:
    lengths = [5] * 70 + [6] * 30 + [30] * 3
    order = list(range(len(lengths)))
    runs = _length_buckets(order, lengths, most=32)
    assert [i for run in runs for i in run] == order
    assert max(len(run) for run in runs) == 32
    assert all(lengths[run[0]] >= 30 or max(lengths[i] for i in run) <= 6 for run in runs)  # no long row padded in
    assert _length_buckets([], [], most=32) == []


def test_pad_ids_matches_a_plain_loop() -> None:
    sequences = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    ids, lengths = pad_ids(sequences)
    expected = np.zeros((4, 5), dtype=np.int64)
    for row, seq in enumerate(sequences):
        expected[row, : len(seq)] = seq
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(lengths, [3, 1, 5, 2])
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    # Rows of any sequence type: a NumPy row plus a list of padding would be added, not joined.
    rows = [np.array(s) for s in sequences[:2]] + [tuple(s) for s in sequences[2:]]
    np.testing.assert_array_equal(pad_ids(rows)[0], expected)
