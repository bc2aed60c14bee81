"""Metrics for pair classification, retrieval and graded similarity; the choice of the threshold
tau; the fit of the calibration that :mod:`model.calibration` applies.

All in numpy so they can be checked by hand on small examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random duplicate outscores a random
    non-duplicate, ties counting one half (Mann-Whitney U)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing the mean of the ranks they span: [10, 20, 20] -> [1, 2.5, 2.5]."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation coefficient; NaN when either side is constant."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's over average ranks, so ties are handled."""
    return pearson(average_ranks(x), average_ranks(y))


def _cuts(scores: np.ndarray, labels: np.ndarray, weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every useful threshold for ``score >= tau``, highest first (above the top score, midway
    between each two neighbouring distinct scores, at the lowest), and the (weighted) count of
    pairs it gets right."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    w = np.ones(len(y)) if weight is None else weight[order]
    # Predict duplicate for the first k (highest) scores, k = 0..n.
    correct = np.concatenate([[0.0], np.cumsum(w * (2 * y - 1))]) + (w * (1 - y)).sum()
    # Only cut between distinct scores.
    valid = np.ones(len(s) + 1, dtype=bool)
    valid[1:-1] = s[:-1] != s[1:]
    cuts = np.concatenate([[s[0] + 1e-6], (s[:-1] + s[1:]) / 2.0, [s[-1]]])
    return cuts[valid], correct[valid]


def best_threshold(scores: np.ndarray, labels: np.ndarray, balanced: bool = False) -> float:
    """The threshold tau with the highest accuracy of ``score >= tau``, set midway between two
    neighbouring scores so that it does not sit on a training example. ``balanced``: the highest
    balanced accuracy instead (the mean of the duplicates' and the non-duplicates' accuracy), the
    tau that classes of equal size would want whatever the pairs' own share of duplicates."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    weight = None
    if balanced and 0 < labels.sum() < len(labels):
        weight = np.where(labels == 1, 0.5 / labels.sum(), 0.5 / (1 - labels).sum())
    cuts, correct = _cuts(scores, labels, weight)
    return float(cuts[int(np.argmax(correct))])


def threshold_near(scores: np.ndarray, labels: np.ndarray, prior: float) -> float:
    """The threshold closest to ``prior`` whose accuracy on these pairs is within one standard
    error of the best one's (the one-standard-error rule): ``prior`` itself where it is, else the
    nearest of :func:`best_threshold`'s candidates that is. A few hundred pairs move tau only as
    far as they give evidence for; their own best threshold is a noisy estimate."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    cuts, correct = _cuts(scores, labels)
    cuts = np.concatenate([[prior], cuts])
    accuracy = np.concatenate([[((scores >= prior) == labels.astype(bool)).sum()], correct]) / len(scores)
    best = float(accuracy.max())
    good = cuts[accuracy >= best - math.sqrt(best * (1.0 - best) / len(scores)) - 1e-12]
    return float(good[np.argmin(np.abs(good - prior))])


@dataclass(frozen=True)
class Classification:
    accuracy: float
    precision: float
    recall: float
    f1: float


def classification(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Classification:
    predicted = np.asarray(scores) >= threshold
    actual = np.asarray(labels).astype(bool)
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    accuracy = float((predicted == actual).mean()) if len(actual) else float("nan")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Classification(accuracy, precision, recall, f1)


def fit_logistic(scores: np.ndarray, labels: np.ndarray, l2: float = 1e-4, steps: int = 50) -> tuple[float, float]:
    """Platt scaling: (slope, intercept) of ``P(duplicate) = sigmoid(slope * s + intercept)``
    (:func:`model.calibration.probability`), fitted by Newton's method on held-out pairs. A
    positive slope keeps it monotonic in s."""
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)  # (N, 2)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        grad = design.T @ (p - y) + l2 * w
        hess = (design * (p * (1 - p))[:, None]).T @ design + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def pair_dots(vectors: Any, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The dot product of rows ``first[i]`` and ``second[i]`` of ``vectors``: a numpy array, or a
    scipy sparse matrix (TF-IDF's rows, kept sparse because a dense one of some 19,000 questions
    by 100,000 words and bigrams would take gigabytes)."""
    if hasattr(vectors, "toarray"):
        return np.asarray(vectors[first].multiply(vectors[second]).sum(1)).ravel()
    return np.asarray((vectors[first] * vectors[second]).sum(1))


def retrieval(
    vectors: Any,
    queries: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray | None = None,
    chunk: int = 1024,
) -> dict[str, float]:
    """R@1, R@10 and MRR@10 of finding ``targets[i]`` when querying with ``queries[i]`` among all
    rows of ``vectors`` (unit vectors, so the dot product is the cosine; a numpy array or a scipy
    sparse matrix), the query excluded.
    A tie with the target counts in the target's favour.

    With ``groups`` (a group number per row: :func:`model.training.groups.duplicate_groups`), also ``mrr@10_filtered``:
    the same with the query's other labelled duplicates left out of its ranking, as a filtered
    ranking does (Bordes et al., 2013), so that finding another duplicate of the query first is no
    miss."""
    queries = np.asarray(queries)
    targets = np.asarray(targets)
    ranks = np.empty(len(queries), dtype=np.int64)
    filtered = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        t = targets[start : start + chunk]
        scores = vectors[q] @ vectors.T  # (C, N)
        if hasattr(scores, "toarray"):  # sparse rows give a sparse product
            scores = scores.toarray()
        scores[np.arange(len(q)), q] = -np.inf
        target_scores = scores[np.arange(len(q)), t][:, None]
        above = scores > target_scores
        ranks[start : start + chunk] = above.sum(1) + 1
        if groups is not None:
            duplicates_above = (above & (groups[None, :] == groups[q][:, None])).sum(1)
            filtered[start : start + chunk] = ranks[start : start + chunk] - duplicates_above
    result = {
        "r@1": float((ranks <= 1).mean()),
        "r@10": float((ranks <= 10).mean()),
        "mrr@10": _mrr(ranks),
    }
    if groups is not None:
        result["mrr@10_filtered"] = _mrr(filtered)
    return result


def _mrr(ranks: np.ndarray, cutoff: int = 10) -> float:
    return float(np.where(ranks <= cutoff, 1.0 / ranks, 0.0).mean())
