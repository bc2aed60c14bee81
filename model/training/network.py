"""The Siamese question encoder in PyTorch: token embedding -> LSTM -> pooling -> L2 normalization.

One set of weights encodes every question, so the cosine similarity of two questions is the dot
product of their vectors: symmetric by construction, and 1 for a question with itself. This is
the network training updates; serving runs the same weights as the ONNX graph that
:mod:`model.training.onnx_graph` builds from it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.config import EncoderConfig
from model.encoder import embedding_matrix, pad_ids
from model.tokenizer import PAD_ID, TokenIds


class SiameseEncoder(nn.Module):
    """One network: (B, T) token ids -> (B, D) unit vectors."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size + config.unknown_buckets, config.embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(
            config.embed_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        lstm_out = config.hidden_dim * (2 if config.bidirectional else 1)
        pooled = lstm_out * (2 if config.pooling == "mean_max" else 1)
        self.proj = nn.Linear(pooled, config.out_dim) if config.out_dim else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)

    @property
    def device(self) -> torch.device:
        """Where the weights are: token ids must be sent there (a network in training may be on a GPU)."""
        return self.embed.weight.device

    @property
    def dim(self) -> int:
        c = self.config
        if c.out_dim:
            return c.out_dim
        return c.hidden_dim * (2 if c.bidirectional else 1) * (2 if c.pooling == "mean_max" else 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) padded with PAD_ID, lengths (B,) >= 1 -> unit vectors (B, D)."""
        x = self.dropout(self.embed(ids))  # (B, T, E)
        if ids.shape[0] == 1:
            # A single question has no padding; packing would only cost time.
            out, _ = self.lstm(x[:, : int(lengths[0])])  # (1, T, H*dirs)
            mask = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True)  # (B, T', H*dirs), zeros past each length
            mask = torch.arange(out.shape[1], device=out.device)[None, :] < lengths.to(out.device)[:, None]
        pooled = self._pool(out, mask)  # (B, P)
        return F.normalize(self.proj(self.dropout(pooled)), dim=-1)  # (B, D)

    def _pool(self, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask3 = mask.unsqueeze(-1)  # (B, T, 1)
        parts = []
        if self.config.pooling in ("mean", "mean_max"):
            parts.append((out * mask3).sum(1) / mask3.sum(1).clamp(min=1))
        if self.config.pooling in ("max", "mean_max"):
            parts.append(out.masked_fill(~mask3, float("-inf")).max(1).values)
        return torch.cat(parts, dim=-1)


class SideBySide(nn.Module):
    """Several networks trained apart (``dupq train --members K``), one vector: the members' unit
    vectors side by side, scaled by ``1 / sqrt(K)``. It is still a unit vector, and the cosine of
    two questions is the mean of the members' cosines. Its weights are the members' under
    ``members.<i>.``; every member reads the same token ids (one tokenizer)."""

    def __init__(self, config: EncoderConfig, members: int) -> None:
        super().__init__()
        if members < 2:
            raise ValueError(f"SideBySide needs at least 2 members, got {members}")
        self.members = nn.ModuleList(SiameseEncoder(config) for _ in range(members))

    @property
    def networks(self) -> list[SiameseEncoder]:
        """The members, typed."""
        return [typing.cast(SiameseEncoder, member) for member in self.members]

    @property
    def config(self) -> EncoderConfig:
        """The members' architecture (one for all)."""
        return self.networks[0].config

    @property
    def device(self) -> torch.device:
        return self.networks[0].device

    @property
    def dim(self) -> int:
        return sum(member.dim for member in self.networks)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T), lengths (B,) -> unit vectors (B, K * D)."""
        return torch.cat([member(ids, lengths) for member in self.networks], dim=-1) / math.sqrt(len(self.members))


Network = SiameseEncoder | SideBySide
"""What a model directory holds: one network, or several side by side."""


def with_unknown_rows(network: Network, buckets: int, seed: int) -> Network:
    """``network`` with ``buckets`` rows for unknown words (:func:`model.tokenizer.unknown_id`) after
    its vocabulary, in place of any it had (:func:`unknown_rows`), so an unknown word reads as some
    word the network has never met, and different unknown words as different words. A network
    trained from scratch gets them after training (its tokenizer was trained on its text, so it
    met no unknown word to train them on); fine-tuning trains them on a site's own words."""
    for member in network.networks if isinstance(network, SideBySide) else [network]:
        known = member.embed.weight.data[: member.config.vocab_size]
        rows = torch.from_numpy(unknown_rows(known.cpu().numpy(), buckets, seed)).to(known.device)
        member.embed = nn.Embedding.from_pretrained(torch.cat([known, rows]), freeze=False, padding_idx=PAD_ID)
        member.config = dataclasses.replace(member.config, unknown_buckets=buckets)
    return network


def unknown_rows(known: np.ndarray, buckets: int, seed: int) -> np.ndarray:
    """``buckets`` rows drawn at random, each column with the mean and spread of that column of
    ``known`` (the vocabulary's rows, [PAD] and [UNK] left out), the same bytes on every CPU: from
    the same trained rows, ``make train`` adds the same rows wherever it runs. So no step whose
    result depends on the CPU's vector width (torch's ``randn`` differs between its plain and AVX2
    code, reductions sum in another order): the mean and spread are exactly rounded sums
    (``math.fsum``), and each draw is the sum of 12 uniform numbers from numpy's PCG64 less 6
    (Irwin-Hall: mean 0, variance 1, near normal)."""
    columns = known[2:].astype(np.float64).T
    mean = np.array([math.fsum(column) / len(column) for column in columns])
    spread = np.array(
        [math.sqrt(math.fsum((column - m) ** 2) / len(column)) for column, m in zip(columns, mean, strict=True)]
    )
    uniform = np.random.default_rng(seed).random((12, buckets, len(columns)))
    draws = uniform[0].copy()
    for part in uniform[1:]:
        draws += part  # one add at a time, in this order: no reduction whose order the CPU picks
    return ((draws - 6.0) * spread + mean).astype(np.float32)


def pad_batch(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids (B, T) padded with PAD_ID, lengths (B,)) as tensors."""
    ids, lengths = pad_ids(sequences)
    return torch.from_numpy(ids), torch.from_numpy(lengths)


def forward_by_length(network: SiameseEncoder, sequences: list[list[int]], chunk: int = 128) -> torch.Tensor:
    """``network`` over token id lists, run in chunks of ``chunk`` questions of similar length;
    rows come back in the order given. The vectors are those of one call over all of them (every
    question is encoded on its own), but the backward pass is far cheaper: PyTorch's packed LSTM
    backward grows faster than linearly with the batch and its longest question (2,000 questions
    of a training step: 8.8 s in one call, 1.3 s in sorted chunks of 128, forward and backward)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    parts = []
    for start in range(0, len(order), chunk):
        ids, lengths = pad_batch([sequences[i] for i in order[start : start + chunk]])
        parts.append(network(ids.to(network.device), lengths))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(parts)[inverse.to(network.device)]


def encode(network: Network, token_ids: TokenIds, texts: Sequence[str], rows: int = 64) -> np.ndarray:
    """Unit vectors of ``texts`` from the PyTorch network as it stands (eval mode, no gradient):
    float32 (N, D) in the order given, sorted by length into runs of ``rows`` (PyTorch packs a
    run, so padding costs little; its packed LSTM slows past 64 rows). Training scores its
    validation pairs with it; serving runs the ONNX graph instead."""
    if not texts:
        return np.zeros((0, network.dim), dtype=np.float32)
    sequences = token_ids(list(texts))
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = np.empty((len(sequences), network.dim), dtype=np.float32)
    was_training = network.training
    network.eval()
    with torch.inference_mode():
        for start in range(0, len(order), rows):
            run = order[start : start + rows]
            ids, lengths = pad_batch([sequences[i] for i in run])
            out[run] = embedding_matrix(network(ids.to(network.device), lengths).cpu().numpy())
    network.train(was_training)
    return out
