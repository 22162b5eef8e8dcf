"""The reference update: a rule says when and with what alpha, an applier mixes ref <- alpha*policy + (1-alpha)*ref."""

import copy
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trustregion.engines.base import OptimSettings
from trustregion.engines.local import LocalEngine
from trustregion.errors import ConfigError
from trustregion.models.loading import freeze
from trustregion.reference.dense import DenseApplier
from trustregion.reference.rules import EveryTau, Frozen, build_rule
from trustregion.reference.select import make_applier
from trustregion.reference.update import ReferenceUpdate

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast


@dataclass
class Step:
    """The step a rule is asked about (a rule of fixed (alpha, tau) reads no metric)."""

    step: int

    def mean(self, key: str) -> float:
        raise AssertionError(f"a fixed rule read the metric {key}")


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


def every_tau(alpha, tau):
    return EveryTau(OmegaConf.create({"alpha": alpha, "tau": tau}))


def moving(policy, reference, alpha, tau) -> ReferenceUpdate:
    engine = LocalEngine(policy, reference, OptimSettings(lr=1e-3, total_steps=10, device="cpu"))
    return ReferenceUpdate(every_tau(alpha, tau), make_applier(engine), engine)


def test_hard_update_makes_reference_equal_policy_only_at_multiples_of_tau():
    policy = model()
    reference = freeze(copy.deepcopy(policy))
    update = moving(policy, reference, alpha=1.0, tau=3)
    for step in range(1, 10):
        before = flat(reference).clone()
        perturb(policy, step)
        updated = update.after_step(Step(step))
        assert updated == (step % 3 == 0)
        if updated:
            assert torch.equal(flat(reference), flat(policy))
        else:
            assert torch.equal(flat(reference), before)
    assert update.num_updates == 3


def test_soft_update_every_step_equals_the_closed_form():
    alpha, n = 0.3, 6
    policy = model()
    theta0 = flat(policy).double()
    reference = freeze(copy.deepcopy(policy))
    update = moving(policy, reference, alpha=alpha, tau=1)
    thetas = []
    for step in range(1, n + 1):
        perturb(policy, step)
        thetas.append(flat(policy).double())
        update.after_step(Step(step))
    closed = (1 - alpha) ** n * theta0 + sum(alpha * (1 - alpha) ** (n - k) * thetas[k - 1] for k in range(1, n + 1))
    assert torch.allclose(flat(reference).double(), closed, atol=1e-6)


def test_frozen_rule_never_moves_and_gives_no_alpha():
    rule = build_rule(OmegaConf.create({"_target_": "trustregion.reference.rules.Frozen", "alpha": 1.0, "tau": None}))
    assert isinstance(rule, Frozen) and not rule.moves
    assert all(rule.alpha(Step(s)) == 0.0 for s in range(1, 20))


def test_small_alpha_still_moves_a_bf16_reference():
    # Weights at 1.0: a bf16 step there is 2**-7, so a lerp of 1e-3 * 0.5 rounds to no change at all.
    policy, reference = model(dtype=torch.bfloat16), freeze(model(dtype=torch.bfloat16))
    with torch.no_grad():
        for p, r in zip(policy.parameters(), reference.parameters()):
            p.fill_(1.5)
            r.fill_(1.0)
    naive = copy.deepcopy(reference)
    applier = DenseApplier.for_models(policy, reference)
    for _ in range(50):
        applier.apply(1e-3)
        torch._foreach_lerp_(list(naive.parameters()), list(policy.parameters()), 1e-3)
    expected = 0.5 * (1 - (1 - 1e-3) ** 50)  # 0.0244
    assert (flat(reference) - 1.0).mean().item() == pytest.approx(expected, abs=2**-7)
    assert torch.all(flat(naive) == 1.0), "a bf16 lerp without the fp32 master rounds the update away"


def test_soft_update_of_an_fp32_reference_takes_a_bf16_policy_upcast():
    # ZeRO-2 with bf16: the engine's policy is bf16 while the reference module stays fp32.
    policy, reference = model(seed=1, dtype=torch.bfloat16), freeze(model(seed=2))
    expected = torch.lerp(flat(reference), flat(policy), 0.3)
    DenseApplier.for_models(policy, reference).apply(0.3)
    assert all(r.dtype == torch.float32 for r in reference.parameters())
    assert torch.allclose(flat(reference), expected, atol=1e-7)


def test_reference_is_frozen_and_in_eval_mode():
    reference = freeze(model())
    assert not reference.training
    assert not any(p.requires_grad for p in reference.parameters())


@pytest.mark.parametrize(
    "alpha,tau,key", [(0.0, 1, "ref_update.alpha"), (1.5, 1, "ref_update.alpha"), (0.5, 0, "ref_update.tau")]
)
def test_invalid_alpha_or_tau_is_rejected_naming_the_field(alpha, tau, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        every_tau(alpha, tau)


def test_a_setting_the_rule_does_not_have_is_refused_naming_it():
    cfg = OmegaConf.create({"_target_": "trustregion.reference.rules.EveryTau", "alpha": 0.5, "tau": 1, "delta": 3})
    with pytest.raises(ConfigError, match="ref_update.delta is not a setting of EveryTau"):
        build_rule(cfg)


def test_a_target_that_is_not_a_rule_is_refused():
    with pytest.raises(ConfigError, match="ref_update._target_=torch.nn.Linear is not a subclass"):
        build_rule(OmegaConf.create({"_target_": "torch.nn.Linear"}))


def test_a_rule_alpha_above_one_stops_the_run_naming_the_rule():
    class TooMuch(EveryTau):
        def alpha(self, stats):
            return 1.5

    engine = LocalEngine(model(), freeze(model()), OptimSettings(lr=1e-3, total_steps=10, device="cpu"))
    update = ReferenceUpdate(TooMuch(OmegaConf.create({"alpha": 0.5, "tau": 1})), make_applier(engine), engine)
    with pytest.raises(Exception, match="TooMuch gave alpha=1.5 at step 3"):
        update.after_step(Step(3))


def test_distance_is_relative_norm_of_the_difference():
    policy, reference = model(), freeze(model())
    with torch.no_grad():
        for p, r in zip(policy.parameters(), reference.parameters()):
            r.copy_(p * 1.1)
    diff_sq, norm_sq = DenseApplier.for_models(policy, reference).distance()
    assert (diff_sq / norm_sq).sqrt().item() == pytest.approx(0.1, rel=1e-4)
