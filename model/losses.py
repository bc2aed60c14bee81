"""Losses over a batch's similarity matrix ``S = V1 @ V2.T`` (positives on the diagonal).

Each is a pure function of the matrix, so it can be checked on hand-made tensors. ``S`` may have
more columns than rows: extra columns are hard negatives shared by every row.
"""

from __future__ import annotations

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


def ranking_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Kullback-Leibler divergence from the teacher's to the student's softmax over each question's
    cosines with the batch's other questions (itself left out), at ``temperature``, averaged over
    the questions. Only the order and spacing of each question's neighbours count, not the cosines'
    level, so the student keeps its own scale (where the threshold sits) while learning whom the
    teacher ranks first. student: (M, D) and teacher: (M, D') unit vectors, M >= 2."""
    s = _neighbour_cosines(student) / temperature
    t = _neighbour_cosines(teacher) / temperature
    return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="batchmean")


def _neighbour_cosines(vectors: torch.Tensor) -> torch.Tensor:
    """(M, M - 1): each row's cosines with the other rows, its own (always 1) left out."""
    m = vectors.shape[0]
    off = ~torch.eye(m, dtype=torch.bool, device=vectors.device)
    return (vectors @ vectors.T)[off].view(m, m - 1)
