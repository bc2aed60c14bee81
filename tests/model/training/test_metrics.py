import numpy as np
import pytest

from model.calibration import probability
from model.training.groups import duplicate_groups
from model.training.metrics import (
    best_threshold,
    classification,
    fit_logistic,
    retrieval,
    roc_auc,
    threshold_near,
)


def test_roc_auc_by_hand() -> None:
    # Positives 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 positive/negative orderings right.
    assert roc_auc(np.array([0.9, 0.4, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)  # a tie counts half


def test_best_threshold_and_classification_by_hand() -> None:
    scores = np.array([0.95, 0.8, 0.7, 0.65, 0.6, 0.3, 0.2])
    labels = np.array([1, 1, 0, 1, 1, 0, 0])
    tau = best_threshold(scores, labels)
    assert tau == pytest.approx(0.45)  # between 0.6 and 0.3: 6 of 7 right (cutting at 0.75 gets 5)
    result = classification(scores, labels, tau)
    assert result.accuracy == pytest.approx(6 / 7)
    assert result.precision == pytest.approx(4 / 5)
    assert result.recall == pytest.approx(1.0)
    assert result.f1 == pytest.approx(2 * 0.8 / 1.8)


def test_the_balanced_threshold_weighs_the_rarer_class_up() -> None:
    scores = np.array([0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    # Plain accuracy cuts after the first (7 of 8 right); balanced accuracy after the fourth, where
    # both duplicates pass and 4 of 6 others do not: (2/2 + 4/6) / 2 = 0.83 against (1/2 + 6/6) / 2.
    assert best_threshold(scores, labels) == pytest.approx(0.875)
    assert best_threshold(scores, labels, balanced=True) == pytest.approx(0.65)
    balanced = np.array([1, 1, 0, 1, 0, 0])  # equal classes: the same tau either way
    assert best_threshold(scores[:6], balanced, balanced=True) == best_threshold(scores[:6], balanced)
    assert best_threshold(scores, np.zeros(8), balanced=True) == pytest.approx(0.9 + 1e-6)  # one class: accuracy


def test_threshold_near_moves_a_prior_only_as_far_as_the_pairs_give_evidence_for() -> None:
    scores = np.array([0.95, 0.85, 0.75, 0.65, 0.55, 0.45, 0.35, 0.25, 0.15, 0.05])
    labels = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0])
    # Cutting at 0.6 or at 0.4 gets 9 of 10 right, the best; one standard error of 0.9 on ten
    # pairs is 0.095, so 8 of 10 (cutting at 0.5) is not good enough.
    assert best_threshold(scores, labels) == pytest.approx(0.6)
    assert threshold_near(scores, labels, prior=0.42) == 0.42  # 9 of 10 there too: kept as it is
    assert threshold_near(scores, labels, prior=0.1) == pytest.approx(0.4)  # 6 of 10: the nearest good cut
    assert threshold_near(scores, labels, prior=0.9) == pytest.approx(0.6)


def test_logistic_calibration_is_monotonic_and_fits() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, 4000)
    labels = (rng.uniform(size=4000) < 1 / (1 + np.exp(-(6 * scores - 1)))).astype(int)
    slope, intercept = fit_logistic(scores, labels)
    assert slope == pytest.approx(6, rel=0.15) and intercept == pytest.approx(-1, abs=0.2)
    p = probability(np.array([-0.5, 0.0, 0.5]), slope, intercept)
    assert np.all(np.diff(p) > 0)


def test_retrieval_by_hand() -> None:
    vectors = np.eye(4, dtype=np.float32)
    vectors[1] = [0.8, 0.6, 0, 0]  # closest to row 0
    vectors[2] = [0.6, 0, 0.8, 0]  # second closest to row 0
    # Query 0 looking for 2: row 1 scores higher, so rank 2. Query 2 looking for 0: rank 1.
    result = retrieval(vectors, np.array([0, 2]), np.array([2, 0]))
    assert result == {"r@1": 0.5, "r@10": 1.0, "mrr@10": pytest.approx(0.75)}
    # Filtered: row 1 outranks the target only as another duplicate of the query, which is no miss;
    # a row of another group still is one.
    one_group = duplicate_groups(4, np.array([0, 0, 1]), np.array([1, 2, 3]), np.array([1, 1, 0]))
    assert one_group[0] == one_group[1] == one_group[2] != one_group[3]
    result = retrieval(vectors, np.array([0, 2]), np.array([2, 0]), one_group)
    assert result["mrr@10"] == pytest.approx(0.75) and result["mrr@10_filtered"] == 1.0
    apart = duplicate_groups(4, np.array([0, 1]), np.array([2, 3]), np.array([1, 0]))
    assert retrieval(vectors, np.array([0, 2]), np.array([2, 0]), apart)["mrr@10_filtered"] == pytest.approx(0.75)


def test_sparse_rows_give_the_figures_of_dense_ones() -> None:
    sparse = pytest.importorskip("scipy.sparse")
    from model.training.metrics import pair_dots

    vectors = np.eye(4, dtype=np.float32)
    vectors[1] = [0.8, 0.6, 0, 0]
    vectors[2] = [0.6, 0, 0.8, 0]
    rows = sparse.csr_matrix(vectors)
    queries, targets = np.array([0, 2]), np.array([2, 0])
    assert retrieval(rows, queries, targets) == retrieval(vectors, queries, targets)
    dots = pair_dots(rows, np.array([0, 0, 1]), np.array([1, 2, 3]))
    assert dots.shape == (3,) and dots == pytest.approx([0.8, 0.6, 0.0])
    assert pair_dots(vectors, np.array([0, 0, 1]), np.array([1, 2, 3])) == pytest.approx(dots)


def test_tfidf_keeps_its_rows_sparse_and_scores_as_if_dense() -> None:
    pytest.importorskip("sklearn")
    from model.training.data import Pair
    from model.training.evaluation import PairEvaluator, tfidf_encoder

    pairs = [
        Pair("how old are you", "what is your age", 1),
        Pair("how do i learn python", "how can i learn python fast", 1),
        Pair("how do i learn python", "how do i learn java", 0),
        Pair("where are you from", "where are you going", 0),
    ]
    encode = tfidf_encoder([q for p in pairs for q in (p.question1, p.question2)])
    rows = encode(["how do i learn python", "what is your age"])
    assert hasattr(rows, "toarray") and rows.shape[0] == 2
    figures = PairEvaluator(pairs)(encode)
    assert figures == pytest.approx(PairEvaluator(pairs)(lambda texts: encode(texts).toarray()))
    assert figures["questions"] == 7
