"""The training loss: a weighted sum of terms, each a pure function of one step's tensors.

The matrix losses take a batch's similarity matrix ``S = V1 @ V2.T`` (positives on the
diagonal); ``S`` may have more columns than rows: extra columns are hard negatives shared by every
row. Each function can be checked on hand-made tensors. :func:`recipe_terms` lists the terms of
the recipe and :func:`total_loss` adds them up, in that order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def triplet_loss(sim: torch.Tensor, margin: float, reduction: str = "mean") -> torch.Tensor:
    """Triplet loss with the mean negative and the closest negative (Coursera NLP, C3 W4).

    For row i, with positive ``p = S[i, i]`` and negatives ``S[i, j]`` for ``j != i``::

        mean_neg    = mean_j S[i, j]
        closest_neg = max { S[i, j] : S[i, j] <= p }   (no such j: a value far below, so no loss)
        L_i = max(mean_neg - p + margin, 0) + max(closest_neg - p + margin, 0)

    ``reduction`` is ``"mean"`` or ``"sum"`` over rows. sim: (B, N) with N >= B >= 2.
    """
    b, n = sim.shape
    if n < 2 or n < b:
        raise ValueError(f"need a (B, N) matrix with N >= B and N >= 2, got {tuple(sim.shape)}")
    eye = torch.zeros_like(sim, dtype=torch.bool)
    eye[torch.arange(b), torch.arange(b)] = True
    positive = sim.diagonal()[:, None]  # (B, 1)
    negatives_only = sim.masked_fill(eye, 0.0)
    mean_negative = negatives_only.sum(1, keepdim=True) / (n - 1)  # (B, 1)
    # Exclude the positive and every negative above it; what is left, the largest is closest.
    excluded = eye | (negatives_only > positive)
    closest_negative = (sim - 2.0 * excluded.to(sim.dtype)).max(1, keepdim=True).values  # (B, 1)
    loss = F.relu(mean_negative - positive + margin) + F.relu(closest_negative - positive + margin)
    return loss.sum() if reduction == "sum" else loss.mean()


def softmax_contrastive_loss(sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch softmax (InfoNCE / multiple negatives ranking) loss: cross-entropy of each row of
    ``S / temperature`` with its diagonal entry as the target (van den Oord et al., 2018)."""
    targets = torch.arange(sim.shape[0], device=sim.device)
    return F.cross_entropy(sim / temperature, targets)


def pair_logistic_loss(
    sim: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(scale * (s - shift))`` against labelled pairs (1 = duplicate).

    Labelled non-duplicates are mostly on the same topic as their partner: this term teaches the
    encoder where the boundary between duplicates and look-alikes lies."""
    return F.binary_cross_entropy_with_logits(scale * (sim - shift), labels.to(sim.dtype))


def similarity_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the student's and the teacher's cosine similarities of
    every pair of questions in the batch (the diagonal, always 1, left out). Compares geometry,
    not coordinates, so the two embeddings may differ in width (Reimers & Gurevych, 2020, match
    vectors instead; matching similarities needs no projection head). student: (M, D) and
    teacher: (M, D') unit vectors."""
    return F.mse_loss(_neighbour_cosines(student), _neighbour_cosines(teacher))


def _neighbour_cosines(vectors: torch.Tensor) -> torch.Tensor:
    """(M, M - 1): each row's cosines with the other rows, its own (always 1) left out."""
    m = vectors.shape[0]
    off = ~torch.eye(m, dtype=torch.bool, device=vectors.device)
    return (vectors @ vectors.T)[off].view(m, m - 1)


@dataclass(frozen=True)
class StepTensors:
    """What the terms of one step's loss are computed from."""

    # (b, b + h + s) anchors x (their duplicates, labelled non-duplicates, rewrites): positives on the diagonal
    sim: torch.Tensor
    sim_back: torch.Tensor  # (b, b) the same pairs seen from the duplicates' side
    pair_sims: torch.Tensor  # (m,) cosines of the step's labelled pairs
    pair_labels: torch.Tensor  # (m,) 1 for a duplicate
    vectors: torch.Tensor  # (M, D) every question of the step
    teacher: torch.Tensor | None  # (M, D') the teacher's unit vectors of the same questions


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: float
    value: Callable[[StepTensors], torch.Tensor | None]  # None: nothing to score in this step


def recipe_terms(
    margin: float,
    temperature: float,
    pair_weight: float,
    distill_weight: float,
    pair_scale: torch.Tensor,
    pair_shift: torch.Tensor,
) -> list[LossTerm]:
    """The recipe's terms: the triplet loss and the in-batch softmax loss, each from both sides of
    the duplicate pairs, the logistic pair loss (with its own learned scale and shift) and the
    distillation of the teacher's cosines. A term of weight 0 is left out."""
    terms = [
        LossTerm("triplet", 1.0, lambda s: triplet_loss(s.sim, margin)),
        LossTerm("triplet, other side", 1.0, lambda s: triplet_loss(s.sim_back, margin)),
        LossTerm("softmax", 1.0, lambda s: softmax_contrastive_loss(s.sim, temperature)),
        LossTerm("softmax, other side", 1.0, lambda s: softmax_contrastive_loss(s.sim_back, temperature)),
        LossTerm("pair", pair_weight, lambda s: _pairs(s, pair_scale, pair_shift)),
        LossTerm("distillation", distill_weight, lambda s: similarity_distillation_loss(s.vectors, _taught(s))),
    ]
    return [term for term in terms if term.weight]


def _pairs(step: StepTensors, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor | None:
    if not len(step.pair_labels):
        return None
    return pair_logistic_loss(step.pair_sims, step.pair_labels, scale, shift)


def _taught(step: StepTensors) -> torch.Tensor:
    if step.teacher is None:
        raise ValueError("the distillation term needs the teacher's vectors")
    return step.teacher


def total_loss(terms: list[LossTerm], step: StepTensors) -> torch.Tensor:
    """The weighted sum of ``terms``, added in their order; a term with nothing to score in this
    step (the pair loss of a step without labelled pairs) adds nothing."""
    loss = step.vectors.new_zeros(())
    for term in terms:
        value = term.value(step)
        if value is not None:
            loss = loss + term.weight * value
    return loss
