"""``ref_update=kl_budget``: move the reference when the policy has drifted a budget away from it, not on a clock.

The drift is read from the training batches. Per optimizer step the objective logs ``logratio/policy_ref``, the per-token
mean of log π(y|x) − log π_ref(y|x) over the batch's chosen and rejected responses; the rule's estimate is

    D̂ = bias-corrected EMA, since the last update, of −logratio/policy_ref        (nats per response token)

What it estimates, and its bias: when the responses are samples of π_ref, E[log π_ref − log π] = KL(π_ref‖π), the
reverse of KL(π‖π_ref), which it matches to second order for nearby policies. The preference responses are samples of
another model (the SFT model, or people), and chosen/rejected are selected by a judge, so D̂ is biased in an unknown
direction and can be negative; once the reference has moved away from the model that wrote the data the bias grows
(docs/concepts/update-rule.md, *kl_budget*, compares it with the sampled KL on the toy task). The step's metrics are
measured before the step's optimizer update, so D̂ lags the policy by one step. Measurements taken against an earlier
reference are dropped at an update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from trustregion.config import RefUpdateConfig
from trustregion.reference.rules import Rule, StepStats, require_tau
from trustregion.schema import FRACTION, POSITIVE, at_least, or_null, setting

ESTIMATE_KEY = "logratio/policy_ref"


@dataclass
class KLBudgetConfig(RefUpdateConfig):
    """``alpha``: the update's α (1: reset the reference to the policy); ``tau``: the minimum spacing, in optimizer
    steps, between two updates; ``budget``: δ, in nats per response token; ``smoothing``: the EMA's weight of the
    newest step (1: the step's value alone)."""

    _target_: str = "trustregion.reference.kl_budget.KLBudget"
    name: str = "kl_budget"
    alpha: float = setting(1.0, "α of an update (1: reset the reference to the policy)", FRACTION)
    tau: Optional[int] = setting(8, "the fewest optimizer steps between two updates", or_null(at_least(1)))
    budget: float = setting(0.1, "δ: the drift, in nats per response token, that triggers an update", POSITIVE)
    smoothing: float = setting(0.2, "the EMA's weight of the newest step (1: no smoothing)", FRACTION)


class KLBudget(Rule):
    """Update by ``alpha`` after a step whose running estimate of the policy–reference KL is at least ``budget``,
    provided ``tau`` steps have passed since the last update. Every rank reads the same all-reduced metric, so every
    rank decides alike."""

    config_class = KLBudgetConfig

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.ema = 0.0  # the EMA's running sum, not yet bias-corrected
        self.weight = 0.0  # 1 − (1 − smoothing)^n after n measurements since the last update
        self.last_update = 0  # the step of the last update (0: the start)

    def check(self) -> None:
        require_tau(self.cfg)

    @property
    def estimate(self) -> float:
        """D̂: the bias-corrected EMA of −logratio/policy_ref since the last update (0 before the first measurement)."""
        return self.ema / self.weight if self.weight > 0 else 0.0

    def observe(self, value: float) -> None:
        """Fold one step's −logratio/policy_ref into the EMA."""
        w = float(self.cfg.smoothing)
        self.ema = (1 - w) * self.ema + w * value
        self.weight = (1 - w) * self.weight + w

    def alpha(self, stats: StepStats) -> float:
        self.observe(-stats.mean(ESTIMATE_KEY))
        if self.estimate < self.cfg.budget or stats.step - self.last_update < self.cfg.tau:
            return 0.0
        self.last_update = stats.step
        self.ema = self.weight = 0.0  # what was measured against the old reference no longer applies
        return float(self.cfg.alpha)

    def metrics(self) -> dict[str, float]:
        return {"ref/kl_estimate": self.estimate, "ref/last_update_step": float(self.last_update)}

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "weight": self.weight, "last_update": self.last_update}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema, self.weight = float(state["ema"]), float(state["weight"])
        self.last_update = int(state["last_update"])
