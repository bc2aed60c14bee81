import math

import pytest
import torch

from model.losses import (
    pair_logistic_loss,
    ranking_distillation_loss,
    similarity_distillation_loss,
    softmax_contrastive_loss,
    triplet_loss,
)

# The course's 4 x 4 example: positives on the diagonal.
COURSE = torch.tensor(
    [
        [0.9, -0.8, 0.3, -0.5],
        [-0.8, 0.5, 0.1, -0.2],
        [0.3, 0.1, 0.7, -0.8],
        [-0.5, -0.2, -0.8, 1.0],
    ]
)


def test_triplet_loss_on_the_course_example_by_hand() -> None:
    # Mean negatives: -1/3, -0.3, -0.4/3, -0.5. Closest negatives (largest below the diagonal): 0.3, 0.1, 0.3, -0.2.
    # alpha = 1: closest terms 0.4 + 0.6 + 0.6 + 0 = 1.6; mean terms 0 + 0.2 + 1/6 + 0 = 11/30.
    expected_sum = 1.6 + 11 / 30
    assert triplet_loss(COURSE, margin=1.0, reduction="sum").item() == pytest.approx(expected_sum, abs=1e-6)
    assert triplet_loss(COURSE, margin=1.0).item() == pytest.approx(expected_sum / 4, abs=1e-6)
    # alpha = 0.25: every row already separates its positive by more than the margin.
    assert triplet_loss(COURSE, margin=0.25).item() == pytest.approx(0.0, abs=1e-7)


def test_closest_negative_skips_negatives_above_the_positive() -> None:
    sim = torch.tensor([[0.2, 0.9, 0.1], [0.0, 0.5, 0.4]])  # row 0: 0.9 is above 0.2, so 0.1 is closest
    # Row 0: mean neg 0.5 -> relu(0.5 - 0.2 + 0.1) = 0.4; closest 0.1 -> relu(0.1 - 0.2 + 0.1) = 0.
    # Row 1: mean neg 0.2 -> relu(0.2 - 0.5 + 0.1) = 0; closest 0.4 -> relu(0.4 - 0.5 + 0.1) = 0.
    assert triplet_loss(sim, margin=0.1, reduction="sum").item() == pytest.approx(0.4, abs=1e-6)


def test_extra_negative_columns_count() -> None:
    base = triplet_loss(COURSE, margin=1.0, reduction="sum")
    with_hard = triplet_loss(torch.cat([COURSE, torch.full((4, 1), 0.95)], dim=1), margin=1.0, reduction="sum")
    assert with_hard > base


def test_triplet_loss_rejects_a_matrix_without_negatives() -> None:
    with pytest.raises(ValueError):
        triplet_loss(torch.tensor([[1.0]]), margin=0.1)


def test_softmax_loss_matches_cross_entropy_by_hand() -> None:
    sim = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # Row 0: -log(e^10 / (e^10 + 1)); row 1: -log(1/2), at temperature 0.1.
    expected = (torch.log1p(torch.exp(torch.tensor(-10.0))) + torch.log(torch.tensor(2.0))) / 2
    assert softmax_contrastive_loss(sim, 0.1).item() == pytest.approx(expected.item(), abs=1e-6)


def test_pair_loss_prefers_separated_pairs() -> None:
    labels = torch.tensor([1, 0])
    good = pair_logistic_loss(torch.tensor([0.9, 0.1]), labels, torch.tensor(10.0), torch.tensor(0.5))
    bad = pair_logistic_loss(torch.tensor([0.1, 0.9]), labels, torch.tensor(10.0), torch.tensor(0.5))
    assert good.item() < 0.05 < bad.item()


def test_distillation_compares_geometry_not_coordinates() -> None:
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5))
    assert similarity_distillation_loss(teacher @ rotation, teacher).item() == pytest.approx(0.0, abs=1e-10)
    wider = torch.cat([teacher @ rotation, torch.zeros(6, 3)], dim=1)  # another width, same geometry
    assert similarity_distillation_loss(wider, teacher).item() == pytest.approx(0.0, abs=1e-10)
    # By hand: two questions, student cosine 0, teacher cosine 1 -> both off-diagonal entries miss by 1.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert similarity_distillation_loss(s, t).item() == pytest.approx(1.0)


def test_ranking_distillation_compares_each_questions_order_of_neighbours() -> None:
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5))
    wider = torch.cat([teacher @ rotation, torch.zeros(6, 3)], dim=1)  # another width, same geometry
    assert ranking_distillation_loss(wider, teacher, 0.05).item() == pytest.approx(0.0, abs=1e-6)
    # By hand, temperature 1. Student: e1, e1, e2; teacher: e1, e2, e2. Each question's cosines with
    # the other two (itself left out), student | teacher: q0 (1, 0) | (0, 0); q1 (1, 0) | (0, 1);
    # q2 (0, 0) | (0, 1). With a = e / (1 + e), the softmax of (1, 0) is (a, 1 - a), so
    # KL(q0) = ln(0.5 / a) / 2 + ln(0.5 / (1 - a)) / 2, KL(q1) = (1 - a) ln((1 - a) / a) + a ln(a / (1 - a)),
    # KL(q2) = (1 - a) ln(2 (1 - a)) + a ln(2 a); the loss is their mean.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    a = math.e / (1 + math.e)
    kl0 = 0.5 * math.log(0.5 / a) + 0.5 * math.log(0.5 / (1 - a))
    kl1 = (1 - a) * math.log((1 - a) / a) + a * math.log(a / (1 - a))
    kl2 = (1 - a) * math.log(2 * (1 - a)) + a * math.log(2 * a)
    loss = ranking_distillation_loss(torch.stack([e1, e1, e2]), torch.stack([e1, e2, e2]), 1.0)
    assert loss.item() == pytest.approx((kl0 + kl1 + kl2) / 3, rel=1e-6)
    assert loss.item() == pytest.approx(0.23107, abs=1e-4)  # worked out on paper
