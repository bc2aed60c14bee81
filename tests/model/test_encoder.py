from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from model.encoder import EncoderConfig, SiameseEncoder, SideBySide, forward_by_length, pad_batch, pad_ids
from model.model_dir import _CALL_COST, _STEP_COST, _length_buckets, load_encoder

QUESTIONS = [
    "How old are you?",
    "What is your age?",
    "Where are you from?",
    "Why is the sky blue?",
    "A much longer question about many things?",
]


@pytest.fixture(scope="module", params=["onnx", "torch"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", params=["one network", "two side by side"])
def model_dir(request: pytest.FixtureRequest, tiny_model_dir: Path, tiny_members_dir: Path) -> Path:
    return tiny_model_dir if request.param == "one network" else tiny_members_dir


@pytest.fixture(scope="module")
def encoder(model_dir: Path, backend: Literal["onnx", "torch"]):  # type: ignore[no-untyped-def]
    return load_encoder(model_dir, backend=backend, threads=1)


def test_unit_norm_float32_contract(encoder) -> None:  # type: ignore[no-untyped-def]
    vectors = encoder.encode(QUESTIONS)
    assert vectors.dtype == np.float32 and vectors.flags["C_CONTIGUOUS"]
    assert vectors.shape == (len(QUESTIONS), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_symmetric_and_reflexive(encoder) -> None:  # type: ignore[no-untyped-def]
    a, b = encoder.encode(QUESTIONS[:2])
    assert float(a @ b) == float(b @ a)
    assert float(a @ a) == pytest.approx(1.0, abs=1e-5)
    assert float(a @ b) < 0.99999  # two different questions, two different vectors


def test_padding_and_batch_companions_never_change_a_vector(encoder) -> None:  # type: ignore[no-untyped-def]
    alone = np.stack([encoder.encode([q])[0] for q in QUESTIONS])
    np.testing.assert_allclose(encoder.encode(QUESTIONS), alone, atol=1e-6)
    ids, lengths = pad_ids(encoder.token_ids(QUESTIONS))  # one call, padded to the longest
    assert len(set(lengths.tolist())) > 1
    np.testing.assert_allclose(encoder._forward(ids, lengths), alone, atol=1e-6)


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


def test_onnx_graph_equals_the_torch_network(model_dir: Path) -> None:
    onnx_vectors = load_encoder(model_dir, backend="onnx", threads=1).encode(QUESTIONS)
    torch_vectors = load_encoder(model_dir, backend="torch", threads=1).encode(QUESTIONS)
    np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-5)


def test_side_by_side_cosine_is_the_mean_of_the_members_cosines(tiny_members_dir: Path) -> None:
    encoder = load_encoder(tiny_members_dir, backend="onnx", threads=1)
    assert isinstance(encoder.network, SideBySide) and encoder.dim == 2 * 24
    ids, lengths = pad_batch(encoder.token_ids(QUESTIONS))
    with torch.inference_mode():
        alone = [member.eval()(ids, lengths).numpy() for member in encoder.network.networks]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two networks, not one twice
    vectors = encoder.encode(QUESTIONS)
    np.testing.assert_allclose(vectors, np.concatenate(alone, axis=1) / np.sqrt(2), atol=1e-5)
    np.testing.assert_allclose(vectors @ vectors.T, (alone[0] @ alone[0].T + alone[1] @ alone[1].T) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 members"):
        SideBySide(encoder.network.config, 1)


def test_a_batch_shared_between_threads_gives_the_vectors_of_one_thread(model_dir: Path) -> None:
    # 120 questions of many lengths: dealt out to two sessions, several length buckets each.
    questions = [f"{q} {' '.join(['and more'] * (i % 13))} number {i}?" for i, q in enumerate(QUESTIONS * 24)]
    shared = load_encoder(model_dir, backend="onnx", threads=2)
    assert len(shared._sessions) == 2
    reference = load_encoder(model_dir, backend="torch", threads=1).encode(questions)
    np.testing.assert_allclose(shared.encode(questions, batch_size=16), reference, atol=1e-5)
    np.testing.assert_allclose(shared.encode(questions[:3]), reference[:3], atol=1e-5)  # too few to split


@pytest.mark.parametrize("pooling", ["mean", "max", "mean_max"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_network_padding_invariance_in_every_configuration(pooling: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    net = SiameseEncoder(
        EncoderConfig(
            vocab_size=50,
            embed_dim=8,
            hidden_dim=8,
            num_layers=2,
            bidirectional=bidirectional,
            pooling=pooling,
            out_dim=0,
            dropout=0.0,
        )
    ).eval()  # type: ignore[arg-type]
    short, long = [5, 6, 7], [8, 9, 10, 11, 12, 13, 14]
    with torch.inference_mode():
        alone = net(*pad_batch([short]))
        padded = net(*pad_batch([short, long]))[0:1]
    torch.testing.assert_close(alone, padded, atol=1e-6, rtol=0)
    assert net.dim == alone.shape[1]


def test_forward_by_length_gives_the_rows_and_gradients_of_one_call() -> None:
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=50, embed_dim=8, hidden_dim=8, pooling="mean_max", out_dim=6, dropout=0.0)
    net = SiameseEncoder(config)
    rng = np.random.default_rng(0)
    sequences = [rng.integers(2, 50, size=rng.integers(1, 12)).tolist() for _ in range(23)]
    whole = net(*pad_batch(sequences))
    chunked = forward_by_length(net, sequences, chunk=4)  # sorted by length, six chunks
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    weights = torch.randn_like(whole)
    grads = []
    for vectors in (whole, chunked):
        net.zero_grad()
        (vectors * weights).sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in net.parameters()])  # type: ignore[union-attr]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_pad_ids_matches_a_plain_loop() -> None:
    sequences = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    ids, lengths = pad_ids(sequences)
    expected = np.zeros((4, 5), dtype=np.int64)
    for row, seq in enumerate(sequences):
        expected[row, : len(seq)] = seq
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(lengths, [3, 1, 5, 2])
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
