"""Duplicate groups in a stored corpus, from a k-nearest-neighbour pass (``POST /groups``, ``dupq
groups``).

The rule (contract 1.1): groups are disjoint, and every member's similarity to its group's
representative is at least the threshold. Built as sentence-transformers' ``community_detection``
builds its communities, with a FAISS index in place of the all-pairs matrix:

1. each question's neighbours at or above the threshold, from a batched search of all the vectors
   against an index of them: exact (flat) for up to :data:`EXACT_MAX` questions, an inverted-file
   index (IVF, exact scores of the candidates it visits) above, so that 100,000 questions take
   seconds, not minutes; a question whose ``k``-th neighbour still passes (a large group of
   duplicates) gets its whole neighbourhood from an exact scan of every vector instead;
2. the questions with the most such neighbours first, each becomes the representative of a group
   of itself and its neighbours not yet in a group, kept if it has ``min_size`` members; a question
   already in a group is never a representative.

Every member was found at or above the threshold from its representative's own search, so the
rule holds by construction; an approximate search can only miss a member, never add a wrong one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import faiss
import numpy as np

EXACT_MAX = 20_000  # up to this many questions, the neighbours come from an exact search
FIRST_K = 32
BATCH = 2048
EXACT_ROWS = 128  # crowded questions scanned at a time (a 128 x N block of similarities)
IVF_PROBES = 16

Progress = Callable[[int], None]  # called with how many questions were just searched


def find_groups(
    vectors: np.ndarray, threshold: float, min_size: int = 2, threads: int = 1, progress: Progress | None = None
) -> list[tuple[int, list[int]]]:
    """``(representative, members)`` row numbers of ``vectors`` (unit rows), largest group first;
    the representative is the first member."""
    if len(vectors) == 0:
        return []
    return _greedy(neighbourhoods(vectors, threshold, threads, progress), min_size)


def neighbourhoods(
    vectors: np.ndarray, threshold: float, threads: int = 1, progress: Progress | None = None
) -> list[np.ndarray]:
    """For each row, the rows at or above ``threshold`` from it (itself included), best first."""
    n = len(vectors)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.omp_set_num_threads(threads)
    index = _index_of(vectors)
    neighbours: list[np.ndarray] = [np.zeros(0, np.int64)] * n
    k = min(n, FIRST_K)
    crowded = []  # questions whose k-th neighbour passes: there may be more than k
    for start in range(0, n, BATCH):
        rows = np.arange(start, min(n, start + BATCH))
        scores, found = index.search(vectors[rows], k)
        for row, row_scores, row_found in zip(rows, scores, found, strict=True):
            neighbours[row] = row_found[(row_scores >= threshold) & (row_found >= 0)]
            if len(neighbours[row]) == k and k < n:
                crowded.append(row)
        if progress is not None:
            progress(len(rows))
    # Their whole neighbourhoods, exactly: a scan of every vector for each of them (few, in a
    # corpus of distinct questions), which an approximate index cannot miss part of.
    for start in range(0, len(crowded), EXACT_ROWS):
        rows = np.array(crowded[start : start + EXACT_ROWS])
        sims = vectors[rows] @ vectors.T
        for row, row_sims in zip(rows, sims, strict=True):
            passing = np.flatnonzero(row_sims >= threshold)
            neighbours[row] = passing[np.argsort(-row_sims[passing], kind="stable")]
    return neighbours


def _index_of(vectors: np.ndarray) -> faiss.Index:
    n, dim = vectors.shape
    index: faiss.Index
    if n <= EXACT_MAX:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = int(4 * math.sqrt(n))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vectors[np.random.default_rng(0).choice(n, size=min(n, 40 * lists), replace=False)])
        ivf.nprobe = IVF_PROBES
        index = ivf
    index.add(vectors)
    return index


def _greedy(neighbours: list[np.ndarray], min_size: int) -> list[tuple[int, list[int]]]:
    """Representatives by most neighbours first; members not yet taken."""
    sizes = np.array([len(x) + (0 if i in x else 1) for i, x in enumerate(neighbours)])
    taken = np.zeros(len(neighbours), dtype=bool)
    groups: list[tuple[int, list[int]]] = []
    for rep in np.argsort(-sizes, kind="stable"):
        if sizes[rep] < min_size:
            break  # sorted: no later one is large enough either
        if taken[rep]:
            continue
        members = [int(rep)] + [int(m) for m in neighbours[rep] if m != rep and not taken[m]]
        if len(members) >= min_size:
            taken[members] = True
            groups.append((int(rep), members))
    groups.sort(key=lambda group: -len(group[1]))  # stable: ties keep the order they were found in
    return groups
