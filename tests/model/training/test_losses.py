import pytest
import torch

from model.training.losses import (
    StepTensors,
    pair_logistic_loss,
    recipe_terms,
    similarity_distillation_loss,
    softmax_contrastive_loss,
    total_loss,
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


def _step(pairs: int = 2, teacher: bool = True) -> StepTensors:
    torch.manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    v1, v2, v3 = vectors[:3], vectors[3:6], vectors[6:7]
    return StepTensors(
        sim=v1 @ torch.cat([v2, v3]).T,
        sim_back=v2 @ v1.T,
        pair_sims=torch.tensor([0.9, 0.2][:pairs]),
        pair_labels=torch.tensor([1, 0][:pairs]),
        vectors=vectors,
        teacher=torch.nn.functional.normalize(torch.randn(8, 6), dim=1) if teacher else None,
    )


def test_the_loss_is_the_weighted_sum_of_the_recipes_terms_in_order() -> None:
    scale, shift = torch.tensor(10.0), torch.tensor(0.7)
    terms = recipe_terms(0.25, 0.05, pair_weight=2.0, distill_weight=5.0, pair_scale=scale, pair_shift=shift)
    assert [(t.name, t.weight) for t in terms] == [
        ("triplet", 1.0),
        ("triplet, other side", 1.0),
        ("softmax", 1.0),
        ("softmax, other side", 1.0),
        ("pair", 2.0),
        ("distillation", 5.0),
    ]
    step = _step()
    by_hand = (
        triplet_loss(step.sim, 0.25)
        + triplet_loss(step.sim_back, 0.25)
        + softmax_contrastive_loss(step.sim, 0.05)
        + softmax_contrastive_loss(step.sim_back, 0.05)
        + 2.0 * pair_logistic_loss(step.pair_sims, step.pair_labels, scale, shift)
        + 5.0 * similarity_distillation_loss(step.vectors, step.teacher)  # type: ignore[arg-type]
    )
    assert total_loss(terms, step).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_a_term_of_weight_zero_is_left_out_and_a_step_without_pairs_adds_no_pair_loss() -> None:
    scale, shift = torch.tensor(10.0), torch.tensor(0.7)
    terms = recipe_terms(0.25, 0.05, pair_weight=1.0, distill_weight=0.0, pair_scale=scale, pair_shift=shift)
    assert "distillation" not in [t.name for t in terms]
    with_pairs, without = _step(teacher=False), _step(pairs=0, teacher=False)
    assert total_loss(terms, without).item() == pytest.approx(
        total_loss(terms, with_pairs).item()
        - pair_logistic_loss(with_pairs.pair_sims, with_pairs.pair_labels, scale, shift).item(),
        rel=1e-6,
    )
    distilled = recipe_terms(0.25, 0.05, 1.0, distill_weight=1.0, pair_scale=scale, pair_shift=shift)
    with pytest.raises(ValueError, match="needs the teacher's vectors"):
        total_loss(distilled, without)
