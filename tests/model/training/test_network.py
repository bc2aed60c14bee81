"""The PyTorch network, and the ONNX graph built from it: the same vectors (the parity test)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import EncoderConfig
from model.encoder import load_encoder
from model.tokenizer import TokenIds, load_tokenizer
from model.training.export import load_network
from model.training.network import SiameseEncoder, SideBySide, encode, forward_by_length, pad_batch

from ...conftest import QUESTIONS


def _torch_vectors(model_dir: Path, texts: list[str]) -> np.ndarray:
    network = load_network(model_dir)
    tokenizer, config = load_tokenizer(model_dir / "tokenizer.json"), network.config
    return encode(network, TokenIds(tokenizer, config.max_tokens, unknown_buckets=config.unknown_buckets), texts)


def test_onnx_graph_equals_the_torch_network(model_dir: Path) -> None:
    # Questions of many lengths, encoded in one ONNX call each side of several length buckets.
    questions = [f"{q} {' '.join(['and more'] * (i % 13))} number {i}?" for i, q in enumerate(QUESTIONS * 8)]
    questions += ["ქალაქი სად არის?", "nyc🍕 pizza?"]  # words the vocabulary lacks, in rows of their own
    onnx_vectors = load_encoder(model_dir, threads=2).encode(questions, batch_size=16)
    np.testing.assert_allclose(onnx_vectors, _torch_vectors(model_dir, questions), atol=1e-5)


def test_side_by_side_cosine_is_the_mean_of_the_members_cosines(tiny_members_dir: Path) -> None:
    network = load_network(tiny_members_dir)
    assert isinstance(network, SideBySide) and network.dim == 2 * 24
    token_ids = TokenIds(
        load_tokenizer(tiny_members_dir / "tokenizer.json"), 64, unknown_buckets=network.config.unknown_buckets
    )
    ids, lengths = pad_batch(token_ids(QUESTIONS))
    with torch.inference_mode():
        alone = [member(ids, lengths).numpy() for member in network.networks]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two networks, not one twice
    vectors = load_encoder(tiny_members_dir).encode(QUESTIONS)
    np.testing.assert_allclose(vectors, np.concatenate(alone, axis=1) / np.sqrt(2), atol=1e-5)
    np.testing.assert_allclose(vectors @ vectors.T, (alone[0] @ alone[0].T + alone[1] @ alone[1].T) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 members"):
        SideBySide(network.config, 1)


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
            pooling=pooling,  # type: ignore[arg-type]
            out_dim=0,
            dropout=0.0,
        )
    ).eval()
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


def test_encode_keeps_the_order_given_and_leaves_the_training_mode_as_it_was(tiny_model_dir: Path) -> None:
    network = load_network(tiny_model_dir).train()
    token_ids = TokenIds(load_tokenizer(tiny_model_dir / "tokenizer.json"), 64)
    vectors = encode(network, token_ids, QUESTIONS, rows=2)  # sorted by length into runs of 2
    assert network.training  # dropout is off inside encode only
    np.testing.assert_allclose(vectors, np.stack([encode(network, token_ids, [q])[0] for q in QUESTIONS]), atol=1e-6)
