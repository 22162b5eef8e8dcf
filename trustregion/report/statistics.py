"""Means over seeds with a t-interval, and the verdict a paired difference earns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
POWER = 0.80  # the power at which a study's smallest detectable paired effect is stated
FEW_SEEDS = 3  # below this many seeds an interval is reported but flagged
ROUNDING = 1e-9  # paired differences of O(1) golds this small are float rounding (e.g. read at KL 1e-7), not effects


@dataclass
class Interval:
    """Mean over seeds with a two-sided t-interval; ``lo``/``hi`` are NaN with fewer than two values."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float

    @property
    def few(self) -> bool:
        return self.n < FEW_SEEDS

    def text(self, digits: int = 3) -> str:
        """``mean [lo, hi]`` (``†`` with few seeds), ``mean (1 seed)``, or ``-`` without a value."""
        if self.n == 0:
            return "-"
        if self.n < 2:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]" + ("†" if self.few else "")

    def verdict(self) -> str:
        """Of a paired difference: better/worse where the interval excludes 0, identical where every value is 0."""
        if self.n >= 1 and abs(self.mean) <= ROUNDING and self.sd <= ROUNDING:
            return "identical"  # e.g. no reference update happened before the matched KL, or it is the start
        if self.n < 2:
            return "too few seeds"
        if self.lo > 0:
            return "better"
        if self.hi < 0:
            return "worse"
        return "within noise"

    def direction(self) -> str:
        """The verdict on a difference of a preference metric: higher/lower where the interval excludes 0."""
        return {"better": "higher", "worse": "lower"}.get(self.verdict(), self.verdict())

    def detectable(self, power: float = POWER, confidence: float = CONFIDENCE) -> float:
        """Of a paired difference: the smallest true effect its seeds would call better/worse with probability
        ``power``, from their spread: (t_{(1+c)/2, n-1} + t_{power, n-1}) · sd / √n. NaN below two seeds."""
        return detectable_effect(self.sd, self.n, power, confidence)

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n, "sd": self.sd}


def detectable_effect(sd: float, n: int, power: float = POWER, confidence: float = CONFIDENCE) -> float:
    """The smallest paired effect a two-sided t-test at ``confidence`` detects with probability ``power`` over ``n``
    paired values of spread ``sd`` (the normal-approximation of the t-test's power, with t quantiles for small n)."""
    from scipy import stats

    if n < 2 or not math.isfinite(sd):
        return math.nan
    t_sum = float(stats.t.ppf(0.5 + confidence / 2, n - 1) + stats.t.ppf(power, n - 1))
    return t_sum * sd / math.sqrt(n)


def t_interval(values: Sequence[float | None], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t_{(1+c)/2, n-1} · sd / √n over ``values`` (seeds); None and non-finite values are left out."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, 0.0 if mean == 0.0 else math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)
