"""The reference update rule: every tau optimizer steps, ref <- alpha*policy + (1-alpha)*ref."""

import copy

import pytest
import torch
from torch import nn

from trustregion.reference import ReferenceUpdater, freeze


def model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)).to(dtype)


def perturb(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))


def flat(m):
    return torch.cat([p.detach().float().reshape(-1) for p in m.parameters()])


def test_hard_update_makes_reference_equal_policy_only_at_multiples_of_tau():
    policy = model()
    reference = freeze(copy.deepcopy(policy))
    updater = ReferenceUpdater.for_models(policy, reference, alpha=1.0, tau=3)
    for step in range(1, 10):
        before = flat(reference).clone()
        perturb(policy, step)
        updated = updater.maybe_update(step)
        assert updated == (step % 3 == 0)
        if updated:
            assert torch.equal(flat(reference), flat(policy))
        else:
            assert torch.equal(flat(reference), before)
    assert updater.num_updates == 3


def test_soft_update_every_step_equals_the_closed_form():
    alpha, n = 0.3, 6
    policy = model()
    theta0 = flat(policy).double()
    reference = freeze(copy.deepcopy(policy))
    updater = ReferenceUpdater.for_models(policy, reference, alpha=alpha, tau=1)
    thetas = []
    for step in range(1, n + 1):
        perturb(policy, step)
        thetas.append(flat(policy).double())
        updater.maybe_update(step)
    closed = (1 - alpha) ** n * theta0 + sum(alpha * (1 - alpha) ** (n - k) * thetas[k - 1] for k in range(1, n + 1))
    assert torch.allclose(flat(reference).double(), closed, atol=1e-6)


def test_no_update_rule_never_touches_the_reference():
    policy = model()
    reference = freeze(copy.deepcopy(policy))
    updater = ReferenceUpdater.for_models(policy, reference, alpha=1.0, tau=None)
    before = flat(reference).clone()
    for step in range(1, 20):
        perturb(policy, step)
        assert not updater.maybe_update(step)
    assert torch.equal(flat(reference), before)


def test_small_alpha_still_moves_a_bf16_reference():
    # Weights at 1.0: a bf16 step there is 2**-7, so a lerp of 1e-3 * 0.5 rounds to no change at all.
    policy, reference = model(dtype=torch.bfloat16), freeze(model(dtype=torch.bfloat16))
    with torch.no_grad():
        for p, r in zip(policy.parameters(), reference.parameters()):
            p.fill_(1.5)
            r.fill_(1.0)
    naive = copy.deepcopy(reference)
    updater = ReferenceUpdater.for_models(policy, reference, alpha=1e-3, tau=1)
    for step in range(1, 51):
        updater.maybe_update(step)
        torch._foreach_lerp_(list(naive.parameters()), list(policy.parameters()), 1e-3)
    expected = 0.5 * (1 - (1 - 1e-3) ** 50)  # 0.0244
    assert (flat(reference) - 1.0).mean().item() == pytest.approx(expected, abs=2**-7)
    assert torch.all(flat(naive) == 1.0), "a bf16 lerp without the fp32 master rounds the update away"


def test_soft_update_of_an_fp32_reference_takes_a_bf16_policy_upcast():
    # ZeRO-2 with bf16: the engine's policy is bf16 while the reference module stays fp32.
    policy, reference = model(seed=1, dtype=torch.bfloat16), freeze(model(seed=2))
    expected = torch.lerp(flat(reference), flat(policy), 0.3)
    ReferenceUpdater.for_models(policy, reference, alpha=0.3, tau=1).maybe_update(1)
    assert all(r.dtype == torch.float32 for r in reference.parameters())
    assert torch.allclose(flat(reference), expected, atol=1e-7)


def test_reference_is_frozen_and_in_eval_mode():
    reference = freeze(model())
    assert not reference.training
    assert not any(p.requires_grad for p in reference.parameters())


@pytest.mark.parametrize("alpha,tau", [(0.0, 1), (1.5, 1), (0.5, 0)])
def test_invalid_alpha_or_tau_is_rejected(alpha, tau):
    with pytest.raises(ValueError, match="alpha"):
        ReferenceUpdater.for_models(model(), model(), alpha=alpha, tau=tau)


def test_distance_is_relative_norm_of_the_difference():
    policy, reference = model(), freeze(model())
    with torch.no_grad():
        for p, r in zip(policy.parameters(), reference.parameters()):
            r.copy_(p * 1.1)
    diff_sq, norm_sq = ReferenceUpdater.for_models(policy, reference, 1.0, 1).distance()
    assert (diff_sq / norm_sq).sqrt().item() == pytest.approx(0.1, rel=1e-4)
