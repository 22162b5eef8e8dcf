"""The losses, checked against values worked out by hand."""

import math

import pytest
import torch

from trustregion.objectives.losses import dpo_loss, ipo_loss, kto_loss, kto_unpaired_loss

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_dpo_loss_matches_hand_computation():
    # h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2; beta 0.5 -> -log sigmoid(1)
    losses, chosen, rejected = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5)
    assert losses.item() == pytest.approx(-math.log(sigmoid(1.0)))
    assert chosen.item() == pytest.approx(0.5)
    assert rejected.item() == pytest.approx(-0.5)


def test_dpo_rewards_are_detached():
    p = t(-1.0).requires_grad_()
    _, chosen, _ = dpo_loss(p, t(-3.0), t(-2.0), t(-2.0), beta=0.5)
    assert not chosen.requires_grad


def test_ipo_loss_is_squared_distance_to_half_inverse_beta():
    # h = 2, beta = 0.25 -> (2 - 2)^2 = 0; beta = 0.5 -> (2 - 1)^2 = 1
    assert ipo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.25)[0].item() == pytest.approx(0.0)
    assert ipo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5)[0].item() == pytest.approx(1.0)


def test_kto_mismatched_reference_point_is_clamped_detached_batch_mean():
    pc, pr, rc, rr = t(-1.0, -2.0).requires_grad_(), t(-4.0, -3.0), t(-2.0, -2.0), t(-3.0, -3.0)
    pm, rm = t(-5.0, -6.0).requires_grad_(), t(-6.0, -6.0)
    losses, _, _ = kto_loss(
        pc,
        pr,
        rc,
        rr,
        beta=1.0,
        desirable_weight=2.0,
        undesirable_weight=0.5,
        policy_mismatched_logps=pm,
        reference_mismatched_logps=rm,
    )
    z = max(0.0, ((-5 + 6) + (-6 + 6)) / 2)  # 0.5
    expected0 = 2.0 * (1 - sigmoid(1.0 - z)) + 0.5 * (1 - sigmoid(z - (-1.0)))
    expected1 = 2.0 * (1 - sigmoid(0.0 - z)) + 0.5 * (1 - sigmoid(z - 0.0))
    assert losses.tolist() == pytest.approx([expected0, expected1])
    losses.sum().backward()
    assert pm.grad is None or torch.all(pm.grad == 0)


def test_kto_reference_point_clamps_at_zero():
    pm, rm = t(-9.0), t(-1.0)  # mean log-ratio -8 -> z = 0
    losses, _, _ = kto_loss(
        t(-1.0), t(-1.0), t(-1.0), t(-1.0), beta=1.0, policy_mismatched_logps=pm, reference_mismatched_logps=rm
    )
    assert losses.item() == pytest.approx(2 * (1 - sigmoid(0.0)))


def test_kto_paired_measures_each_half_against_the_other():
    pc, pr, rc, rr = t(-1.0, -1.0), t(-2.0, -4.0), t(-2.0, -2.0), t(-3.0, -3.0)
    losses, _, _ = kto_loss(pc, pr, rc, rr, beta=1.0, reference_point="paired")
    z_chosen = max(0.0, ((-2 + 3) + (-4 + 3)) / 2)  # rejected half's mean: 0
    z_rejected = max(0.0, ((-1 + 2) + (-1 + 2)) / 2)  # chosen half's mean: 1
    expected = [(1 - sigmoid(1 - z_chosen)) + (1 - sigmoid(z_rejected - r)) for r in (1.0, -1.0)]
    assert losses.tolist() == pytest.approx(expected)


def test_kto_mismatched_without_mismatched_logps_is_an_error():
    with pytest.raises(ValueError, match="mismatched"):
        kto_loss(t(-1.0), t(-2.0), t(-1.0), t(-2.0), beta=0.1)


def test_kto_unpaired_uses_desirable_and_undesirable_branches():
    losses, rewards = kto_unpaired_loss(t(0.0, 0.0), t(-1.0, 1.0), torch.tensor([True, False]), beta=1.0)
    z = max(0.0, (1.0 + -1.0) / 2)  # 0
    assert losses.tolist() == pytest.approx([1 - sigmoid(1.0 - z), 1 - sigmoid(z - (-1.0))])
    assert rewards.tolist() == pytest.approx([1.0, -1.0])


@pytest.mark.parametrize("margin", [1e4, -1e4])
def test_losses_stay_finite_at_extreme_margins(margin):
    pc, pr, ref = t(margin), t(-margin), t(0.0)
    pc32 = pc.float().requires_grad_()
    for loss_fn in (dpo_loss, ipo_loss):
        losses, _, _ = loss_fn(pc32, pr.float(), ref.float(), ref.float(), beta=0.1)
        assert torch.isfinite(losses).all()
        losses.sum().backward()
        assert torch.isfinite(pc32.grad).all()
        pc32.grad = None
    for point in ("mismatched", "paired"):
        losses, _, _ = kto_loss(
            pc32,
            pr.float(),
            ref.float(),
            ref.float(),
            beta=0.1,
            reference_point=point,
            policy_mismatched_logps=pc32,
            reference_mismatched_logps=ref.float(),
        )
        assert torch.isfinite(losses).all()
