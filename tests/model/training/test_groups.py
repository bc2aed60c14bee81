import random
from itertools import combinations

import pytest

from model.training.data import Pair, question_key
from model.training.groups import PairGraph, duplicate_batches, split_by_groups


def _pairs() -> list[Pair]:
    return [
        Pair("A?", "B?", 1),
        Pair("b?", "C?", 1),  # same question as "B?" (case), so A, B, C form one group
        Pair("A?", "C?", 0),  # ...but a label says A and C are not duplicates: the label wins
        Pair("D?", "E?", 1),
        Pair("A?", "D?", 0),
        Pair("F?", "G?", 0),
    ]


def test_groups_are_transitive_and_labels_win() -> None:
    graph = PairGraph.build(_pairs())
    idx = {question_key(t): i for i, t in enumerate(graph.texts)}
    a, b, c, d, e = (idx[k] for k in ("a?", "b?", "c?", "d?", "e?"))
    assert graph.group[a] == graph.group[b] == graph.group[c]
    assert graph.group[d] == graph.group[e] != graph.group[a]
    assert len(graph.texts) == 7
    positives = set(graph.group_positives(max_per_group=10, rng=random.Random(0)))
    assert (min(a, b), max(a, b)) in positives and (min(b, c), max(b, c)) in positives
    assert (min(a, c), max(a, c)) not in positives  # labelled non-duplicate
    assert set(graph.negatives_of()[a]) == {c, d}


def test_implied_pairs_come_from_larger_groups() -> None:
    pairs = [Pair("A?", "B?", 1), Pair("B?", "C?", 1), Pair("C?", "D?", 1)]
    graph = PairGraph.build(pairs)
    positives = graph.group_positives(max_per_group=10, rng=random.Random(0))
    assert len(positives) == 6  # all pairs of 4 questions: 3 labelled + 3 implied


def test_split_has_no_leakage_and_loses_nothing() -> None:
    rng = random.Random(1)
    pairs = []
    for g in range(200):
        members = [f"q{g}-{i}?" for i in range(rng.randint(2, 4))]
        pairs += [Pair(x, y, 1) for x, y in combinations(members, 2)]
        pairs.append(Pair(members[0], f"other{g}?", 0))
    rest, held = split_by_groups(pairs, 0.3, seed=0)
    assert len(rest) + len(held) == len(pairs)
    assert 0.15 < len(held) / len(pairs) < 0.45
    rest_questions = {question_key(q) for p in rest for q in (p.question1, p.question2)}
    held_questions = {question_key(q) for p in held for q in (p.question1, p.question2)}
    assert not rest_questions & held_questions
    # No duplicate group straddles the cut.
    graph = PairGraph.build(pairs)
    idx = {question_key(t): i for i, t in enumerate(graph.texts)}
    rest_groups = {graph.group[idx[q]] for q in rest_questions}
    held_groups = {graph.group[idx[q]] for q in held_questions}
    assert not rest_groups & held_groups


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99, 1.0])
def test_a_split_leaves_no_side_empty(fraction: float) -> None:
    # Three unlinked pairs at --fraction 0.9 once went whole to the held-out side, and 0 held none out.
    pairs = [Pair("A?", "B?", 1), Pair("C?", "D?", 0), Pair("E?", "F?", 1)]
    for seed in range(5):
        rest, held = split_by_groups(pairs, fraction, seed)
        assert rest and held and sorted(rest + held, key=str) == sorted(pairs, key=str)


def test_pairs_that_link_every_question_into_one_set_cannot_be_split() -> None:
    # Moderators' decisions often link new questions to one canonical one, "not" decisions too.
    pairs = [Pair("Canonical?", f"New {i}?", i % 2) for i in range(10)]
    with pytest.raises(ValueError, match="the pairs link all 11 of their questions into one set"):
        split_by_groups(pairs, 0.2)


def test_batches_never_repeat_a_group() -> None:
    rng = random.Random(0)
    pairs = []
    for g in range(60):
        members = [f"q{g}-{i}?" for i in range(3)]
        pairs += [Pair(x, y, 1) for x, y in combinations(members, 2)]
        pairs.append(Pair(members[0], f"q{(g + 1) % 60}-0?", 0))
    graph = PairGraph.build(pairs)
    positives = graph.group_positives(10, rng)
    batches = list(duplicate_batches(graph, positives, batch_size=16, rng=rng))
    assert len(batches) >= 5
    for anchors, others, extra in batches:
        assert len(anchors) == len(others) == 16
        groups = [graph.group[q] for q in anchors + extra]
        assert len(groups) == len(set(groups))  # rows, and extra columns, from distinct groups
        assert all(graph.group[a] == graph.group[b] for a, b in zip(anchors, others, strict=True))
        assert len(set(anchors + others + extra)) == 32 + len(extra)  # no question twice
    assert any(extra for _, _, extra in batches)


def test_topic_batches_take_each_batch_from_one_topic() -> None:
    rng = random.Random(0)
    pairs = []
    for g in range(100):
        members = [f"q{g}-{i}?" for i in range(3)]
        pairs += [Pair(x, y, 1) for x, y in combinations(members, 2)]
    graph = PairGraph.build(pairs)
    positives = graph.group_positives(10, rng)
    # Four topics of 25 groups (75 pairs) each; a batch needs 16 groups, so each topic leaves some over.
    topic_of_group = {graph.group[graph.texts.index(f"q{g}-0?")]: g % 4 for g in range(100)}
    topics = [topic_of_group[graph.group[a]] for a, _ in positives]
    batches = list(duplicate_batches(graph, positives, 16, rng, topics=topics))
    one_topic = [b for b in batches if len({topic_of_group[graph.group[a]] for a in b[0]}) == 1]
    assert len(one_topic) >= 4  # at least one whole batch from each topic
    assert len(batches) > len(one_topic)  # the leftovers are batched across topics
    for anchors, _, _ in batches:
        assert len({graph.group[a] for a in anchors}) == 16  # still one pair per group
    # Every pair is used at most once.
    used = [tuple(sorted(p)) for anchors, others, _ in batches for p in zip(anchors, others, strict=True)]
    assert len(used) == len(set(used))
    assert set(used) <= {tuple(sorted(p)) for p in positives}
