"""Duplicate groups, splits without leakage, and training batches whose negatives are real.

Duplicates are transitive: labelled duplicate pairs are joined (union-find) into groups of
questions that all mean the same thing. Every pair inside a group is a positive, except a pair
labelled non-duplicate: the label wins over the transitive closure.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from model.training.data import Pair, question_key


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_groups(rows: int, first: np.ndarray, second: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A group number for each of ``rows`` rows: rows joined by a duplicate pair (label 1), directly
    or through others, share one; a row in no duplicate pair is a group alone."""
    groups = _UnionFind()
    for _ in range(rows):
        groups.add()
    for a, b in zip(np.asarray(first)[labels == 1], np.asarray(second)[labels == 1], strict=True):
        groups.union(int(a), int(b))
    return np.array([groups.find(x) for x in range(rows)])


@dataclass
class PairGraph:
    """The questions of a set of labelled pairs, their duplicate groups and labelled negatives."""

    texts: list[str]  # question index -> text (first spelling seen)
    group: list[int]  # question index -> group index
    members: list[list[int]]  # group index -> question indices
    positives: set[tuple[int, int]]  # labelled duplicate pairs, (low, high)
    negatives: set[tuple[int, int]]  # labelled non-duplicate pairs, (low, high)

    @classmethod
    def build(cls, pairs: Iterable[Pair]) -> PairGraph:
        index: dict[str, int] = {}
        texts: list[str] = []
        uf = _UnionFind()
        positives: set[tuple[int, int]] = set()
        negatives: set[tuple[int, int]] = set()

        def qid(text: str) -> int:
            key = question_key(text)
            if key not in index:
                index[key] = uf.add()
                texts.append(text)
            return index[key]

        for pair in pairs:
            a, b = qid(pair.question1), qid(pair.question2)
            if a == b:
                continue  # a question is trivially its own duplicate
            edge = (min(a, b), max(a, b))
            if pair.label == 1:
                positives.add(edge)
                uf.union(a, b)
            else:
                negatives.add(edge)
        positives -= negatives  # where labels disagree, trust the non-duplicate label
        roots: dict[int, int] = {}
        group: list[int] = []
        members: list[list[int]] = []
        for q in range(len(texts)):
            root = uf.find(q)
            if root not in roots:
                roots[root] = len(members)
                members.append([])
            group.append(roots[root])
            members[roots[root]].append(q)
        return cls(texts, group, members, positives, negatives)

    def group_positives(self, max_per_group: int, rng: random.Random) -> list[tuple[int, int]]:
        """Every labelled positive, plus pairs implied by transitivity, at most ``max_per_group``
        implied ones for each group (large groups would otherwise swamp the rest)."""
        result = list(self.positives)
        for qs in self.members:
            if len(qs) < 3:
                continue
            implied = [
                (a, b)
                for a, b in itertools.combinations(sorted(qs), 2)
                if (a, b) not in self.positives and (a, b) not in self.negatives
            ]
            if len(implied) > max_per_group:
                implied = rng.sample(implied, max_per_group)
            result.extend(implied)
        return result

    def negatives_of(self) -> dict[int, list[int]]:
        """Question index -> the questions labelled as not its duplicates."""
        table: dict[int, list[int]] = defaultdict(list)
        for a, b in self.negatives:
            table[a].append(b)
            table[b].append(a)
        return table


def split_by_groups(pairs: list[Pair], fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Cut ``pairs`` in two so that no question, and none of its known duplicates, is on both
    sides. Questions linked by any labelled pair (duplicate groups joined by their non-duplicate
    pairs) go whole to one side, so no pair straddles the cut and none is lost.
    Returns (rest, held_out); ``fraction`` is the share of questions held out, roughly, and each
    side has at least one set of linked questions. Pairs that link all their questions into one
    set cannot be cut: a ``ValueError``."""
    graph = PairGraph.build(pairs)
    components = _UnionFind()
    for _ in graph.members:
        components.add()
    for a, b in graph.negatives:
        components.union(graph.group[a], graph.group[b])
    size: dict[int, int] = {}
    for g, qs in enumerate(graph.members):
        root = components.find(g)
        size[root] = size.get(root, 0) + len(qs)
    if len(size) == 1:
        raise ValueError(
            f"cannot split these {len(pairs)} pairs: questions linked by a pair go to one side together, and the "
            f"pairs link all {len(graph.texts)} of their questions into one set"
        )
    roots = sorted(size)
    random.Random(seed).shuffle(roots)
    held_roots: set[int] = set()
    n_held, target = 0, fraction * len(graph.texts)
    for root in roots[:-1]:  # at least one set on each side
        if held_roots and n_held >= target:
            break
        held_roots.add(root)
        n_held += size[root]
    index = {question_key(t): i for i, t in enumerate(graph.texts)}
    rest: list[Pair] = []
    held: list[Pair] = []
    for pair in pairs:
        q = index[question_key(pair.question1)]
        (held if components.find(graph.group[q]) in held_roots else rest).append(pair)
    return rest, held


def duplicate_batches(
    graph: PairGraph,
    positives: list[tuple[int, int]],
    batch_size: int,
    rng: random.Random,
    topics: list[int] | None = None,
) -> Iterator[tuple[list[int], list[int], list[int]]]:
    """Batches of ``batch_size`` duplicate pairs ``(anchors, positives, extra_negatives)``.

    No duplicate group appears twice in a batch, so every off-diagonal entry of the batch's
    similarity matrix is a true negative. Each anchor may also bring one question labelled as not
    its duplicate (from a group not yet in the batch) as an extra negative column: a hard negative,
    the closest kind there is.

    With ``topics`` (one topic number per pair of ``positives``, e.g. a k-means cluster of the
    anchors' vectors), each batch is filled from the pairs of one topic, so its in-batch
    negatives are questions on the same subject, the hard ones that retrieval among many similar
    questions must tell apart. The pairs a topic cannot fill a batch with are batched at random at
    the end, and the batches come in random order.
    """
    negatives = graph.negatives_of()
    if topics is None:
        pending = positives[:]
        rng.shuffle(pending)
        yield from _fill_batches(graph, pending, batch_size, rng, negatives)[0]
        return
    by_topic: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for pair, topic in zip(positives, topics, strict=True):
        by_topic[topic].append(pair)
    batches: list[Batch] = []
    leftovers: list[tuple[int, int]] = []
    for topic in sorted(by_topic):
        pending = by_topic[topic]
        rng.shuffle(pending)
        filled, rest = _fill_batches(graph, pending, batch_size, rng, negatives)
        batches += filled
        leftovers += rest
    rng.shuffle(leftovers)
    batches += _fill_batches(graph, leftovers, batch_size, rng, negatives)[0]
    rng.shuffle(batches)
    yield from batches


Batch = tuple[list[int], list[int], list[int]]


def _fill_batches(
    graph: PairGraph,
    pending: list[tuple[int, int]],
    batch_size: int,
    rng: random.Random,
    negatives: dict[int, list[int]],
) -> tuple[list[Batch], list[tuple[int, int]]]:
    """Batches of distinct groups taken from ``pending`` in order, and the pairs left over."""
    batches: list[Batch] = []
    while len(pending) >= batch_size:
        used: set[int] = set()
        anchors: list[int] = []
        others: list[int] = []
        deferred: list[tuple[int, int]] = []
        i = 0
        while len(anchors) < batch_size and i < len(pending):
            a, b = pending[i]
            i += 1
            g = graph.group[a]
            if g in used:
                deferred.append((a, b))
                continue
            used.add(g)
            if rng.random() < 0.5:
                a, b = b, a  # both orders, so neither side is special
            anchors.append(a)
            others.append(b)
        if len(anchors) < batch_size:
            break  # what is left cannot fill a batch with distinct groups
        pending = deferred + pending[i:]
        extra: list[int] = []
        for a in anchors:
            candidates = negatives.get(a)
            if candidates:
                n = rng.choice(candidates)
                if graph.group[n] not in used:
                    used.add(graph.group[n])
                    extra.append(n)
        batches.append((anchors, others, extra))
    return batches, pending
