"""The Trust-Region step of the loop: after each optimizer step the rule says α, the applier mixes."""

from __future__ import annotations

import time
from typing import Any

import torch

from trustregion.engines.base import Engine
from trustregion.errors import TrainingError
from trustregion.reference.applier import Applier
from trustregion.reference.rules import Rule, StepStats


class ReferenceUpdate:
    """A rule (when, with what α) and an applier (how): ``after_step`` runs the update, ``log_fields`` reports it."""

    def __init__(self, rule: Rule, applier: Applier, engine: Engine) -> None:
        self.rule, self.applier, self.engine = rule, applier, engine
        self.num_updates = 0
        self.update_ms = 0.0  # the last update's wall time
        self.updated = False  # whether the last step updated

    def after_step(self, stats: StepStats) -> bool:
        """Ask the rule for this step's α and apply it; whether the reference moved."""
        alpha = float(self.rule.alpha(stats))
        self.updated = alpha > 0.0
        if not self.updated:
            return False
        if not alpha <= 1.0:
            raise TrainingError(
                f"ref_update rule {type(self.rule).__name__} gave alpha={alpha} at step {stats.step}: a rule's alpha "
                "must be in [0, 1]"
            )
        tic = time.perf_counter()
        self.applier.apply(alpha)
        self.update_ms = (time.perf_counter() - tic) * 1e3
        self.num_updates += 1
        return True

    def distance(self) -> float:
        """‖θ_ref − θ‖/‖θ‖ over every weight of every rank (one all-reduce: every rank calls it alike)."""
        diff_sq, norm_sq = self.applier.distance()
        engine = self.engine
        stacked = engine.reduce_sum(torch.stack([diff_sq, norm_sq]).to(engine.device)).cpu()
        return float((stacked[0] / stacked[1].clamp(min=1e-30)).sqrt())

    def log_fields(self) -> dict[str, float]:
        """``ref_updates``, ``ref/distance`` (``distance``), ``ref/update_ms``, and what the rule and the applier add.
        At log steps only (one collective)."""
        return {
            "ref_updates": self.num_updates,
            "ref/distance": self.distance(),
            "ref/update_ms": self.update_ms if self.updated else 0.0,
            **self.rule.metrics(),
            **self.applier.metrics(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "rule": self.rule.state_dict(), **self.applier.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        self.rule.load_state_dict(state.get("rule", {}))
        self.applier.load_state_dict(state)
