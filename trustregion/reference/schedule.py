"""``ref_update=schedule``: every τ steps, mix by an α that follows a schedule from α₀ to α₁ over the run.

At an update step s of a run of T optimizer steps, with progress p = s / T:
constant α₀; linear α₀ + (α₁ − α₀)·p; cosine α₁ + (α₀ − α₁)·(1 + cos πp)/2. So α₀ is where the schedule starts and α₁
is the α of the run's last step; a large early α lets the reference follow while the policy moves fast, a small late one
lets it settle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from trustregion.config import RefUpdateConfig, Schedule
from trustregion.errors import ConfigError
from trustregion.reference.rules import Rule, StepStats, require_tau
from trustregion.schema import Range, at_least, or_null, setting

UNIT = Range(lambda v: isinstance(v, (int, float)) and 0 <= v <= 1, "a number in [0, 1]")


@dataclass
class ScheduleConfig(RefUpdateConfig):
    """``alpha``: α₀ at the start; ``alpha_end``: α₁ at the last step; ``shape``: constant | linear | cosine;
    ``tau``: update every tau optimizer steps."""

    _target_: str = "trustregion.reference.schedule.AlphaSchedule"
    name: str = "schedule"
    alpha: float = setting(0.1, "α₀, at the start", UNIT)
    alpha_end: float = setting(0.01, "α₁, at the run's last step", UNIT)
    shape: Schedule = setting(Schedule.cosine, "constant, linear or cosine from α₀ to α₁")
    tau: Optional[int] = setting(1, "optimizer steps between updates", or_null(at_least(1)))


def scheduled_alpha(shape: str, start: float, end: float, progress: float) -> float:
    """α at ``progress`` in [0, 1] of the run for the schedule ``shape`` from ``start`` to ``end``."""
    if shape == "constant":
        return start
    if shape == "linear":
        return start + (end - start) * progress
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


class AlphaSchedule(Rule):
    """Every ``tau`` steps, mix by the schedule's α at that step; stateless (the step and the run's length say all)."""

    config_class = ScheduleConfig
    last = 0.0  # the α of the last update step, for the log

    def check(self) -> None:
        c = self.cfg
        if c.alpha == 0 and (c.alpha_end == 0 or str(c.shape.value) == "constant"):
            raise ConfigError(
                "ref_update.alpha=0 never moves the reference with this schedule: set ref_update.alpha or "
                "ref_update.alpha_end above 0, or ref_update=none for a frozen reference"
            )
        require_tau(c)

    def alpha(self, stats: StepStats) -> float:
        if stats.step % int(self.cfg.tau):
            return 0.0
        progress = min(stats.step / max(stats.total_steps, 1), 1.0)
        c = self.cfg
        self.last = scheduled_alpha(str(c.shape.value), float(c.alpha), float(c.alpha_end), progress)
        return self.last

    def metrics(self) -> dict[str, float]:
        return {"ref/alpha": self.last}
