"""The study: families over seeds, and each Trust-Region family against its frozen baseline paired by seed.

Per family, the mean over seeds with a 95 % t-interval (``statistics``). Trust-Region families are compared with
the frozen family of the same settings but the rule (``RunIdentity.baseline``), *paired by seed* (same training
pairs, same evaluation samples), at the KL where the frozen runs peak on average and in peak gold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from trustregion.report.families import Families, Family, baselines, group
from trustregion.report.runs import Run, gold_at_kl
from trustregion.report.statistics import Interval, t_interval

# Datasets whose loader attaches a gold judge (PreferenceData.task in trustregion.data); other data has none.
GOLD_JUDGED = ("toy", "sentiment")
Reading = Callable[[Run], "float | None"]


@dataclass
class Comparison:
    """A Trust-Region family against its frozen baseline, paired by seed."""

    family: Family
    kl: float  # the matched KL: where the frozen runs peak, on average
    at_kl: Interval  # TR - frozen gold at that KL
    peak: Interval  # TR - frozen peak gold
    seeds: list[int]


@dataclass
class Study:
    """The counted runs, their families (ordered, members by seed) and what grouping them decided."""

    runs: list[Run]
    families: dict[Family, list[Run]]
    grouping: Families = field(repr=False)

    @classmethod
    def of(cls, runs: list[Run]) -> Study:
        """The study of ``runs`` grouped into families (``families.group``); duplicates are not counted."""
        grouping = group(runs)
        counted = {id(r) for members in grouping.members.values() for r in members}
        return cls([r for r in runs if id(r) in counted], grouping.members, grouping)

    @property
    def gold(self) -> bool:
        """Whether the runs have gold-reward evaluations (else the report is on held-out preference metrics)."""
        return all(r.has_gold for r in self.runs)

    def no_gold_reason(self) -> str:
        """One line saying why a report has no gold columns."""
        datasets = sorted({r.dataset for r in self.runs})
        judgeless = [d for d in datasets if d not in GOLD_JUDGED]
        if judgeless:
            verb = "has" if len(judgeless) == 1 else "have"
            return f"no gold reward: {', '.join(f'dataset={d}' for d in judgeless)} {verb} no gold judge; gold columns omitted"
        if not any(r.generate for r in self.runs):
            return (
                f"no gold reward: eval.generate=false in every run ({', '.join(f'dataset={d}' for d in datasets)} "
                "has a gold judge: set eval.generate=true to score samples); gold columns omitted"
            )
        return "no gold reward: no generation evaluation logged yet; gold columns omitted"

    @cached_property
    def _baselines(self) -> dict[str, Family]:
        return baselines(list(self.families))

    def baseline(self, family: Family) -> Family | None:
        """The frozen family ``family`` is compared with: the same settings but the update rule."""
        return self._baselines.get(family.baseline)

    def pairable(self) -> list[Family]:
        """The moving-reference families with a frozen baseline in the study."""
        return [f for f in self.families if not f.frozen and self.baseline(f) is not None]

    def no_baseline_line(self) -> str | None:
        """One line where moving-reference families have no frozen baseline in the sweep; None where all do."""
        missing = [f for f in self.families if not f.frozen and self.baseline(f) is None]
        if not missing:
            return None
        if not any(f.frozen for f in self.families):
            return (
                "No frozen baseline: no run in this sweep has ref_update=none, so there is nothing to compare against."
            )
        return "No frozen baseline (ref_update=none with the same settings but the rule) for: " + ", ".join(
            f.name for f in missing
        )

    def over_seeds(self, family: Family, reading: Reading) -> Interval:
        """``reading`` of each run of ``family``: mean and interval over seeds."""
        return t_interval([reading(r) for r in self.families[family]])

    def matched_kl(self, family: Family) -> float | None:
        """The KL where the runs of ``family``'s frozen baseline peak, averaged over seeds."""
        frozen = self.baseline(family)
        return float(np.mean([r.peak_kl for r in self.families[frozen]])) if frozen else None

    def paired(self, family: Family, reading: Reading, against: Family | None = None) -> tuple[Interval, list[int]]:
        """``family`` − ``against`` (default: its frozen baseline) of ``reading`` over the seeds both have (a seed
        missing either side, or a reading of None, is left out)."""
        other = against or self.baseline(family)
        by_seed = {r.seed: r for r in self.families.get(other, [])} if other else {}
        diffs, seeds = [], []
        for r in self.families[family]:
            if r.seed in by_seed:
                a, b = reading(r), reading(by_seed[r.seed])
                if a is not None and b is not None:
                    diffs.append(a - b)
                    seeds.append(r.seed)
        return t_interval(diffs), seeds

    def comparisons(self) -> list[Comparison]:
        """Each moving family with a frozen baseline: gold at the baseline's mean peak KL, and peak gold."""
        out = []
        for fam in self.families:
            kl = self.matched_kl(fam)
            if fam.frozen or kl is None:
                continue
            at_kl, seeds = self.paired(fam, lambda r, kl=kl: gold_at_kl(r, kl))
            peak, _ = self.paired(fam, lambda r: r.peak_gold)
            out.append(Comparison(fam, kl, at_kl, peak, seeds))
        return out

    def mean_peak(self, family: Family) -> float:
        """Peak gold averaged over the family's seeds (to pick the best family)."""
        return float(np.mean([r.peak_gold for r in self.families[family]]))

    def best_per_method(self) -> list[dict]:
        """Per method with beta tuned too: the best frozen and the best Trust-Region family by mean peak gold,
        and their paired (by seed) difference in peak gold."""
        out = []
        for method in sorted({f.method for f in self.families}):
            frozen = [f for f in self.families if f.method == method and f.frozen]
            moving = [f for f in self.families if f.method == method and not f.frozen]
            if not frozen or not moving:
                continue
            best_frozen, best_tr = max(frozen, key=self.mean_peak), max(moving, key=self.mean_peak)
            out.append(
                {
                    "method": method,
                    "frozen": best_frozen,
                    "tr": best_tr,
                    "diff": self.paired(best_tr, lambda r: r.peak_gold, against=best_frozen)[0],
                    "frozen_peak": self.over_seeds(best_frozen, lambda r: r.peak_gold),
                    "tr_peak": self.over_seeds(best_tr, lambda r: r.peak_gold),
                    "candidates": len(moving),
                }
            )
        return out

    def versus_best_fixed(self) -> list[dict]:
        """Each rule beyond a fixed (alpha, tau) against the fixed rule with the highest mean peak gold among the
        families of the same settings but the rule, paired by seed: peak gold and gold at the frozen runs' peak KL."""
        out = []
        for fam in self.families:
            if fam.frozen or fam.fixed:
                continue
            same = [f for f in self.families if f.fixed and f.grid == fam.grid]
            if not same:
                continue
            best = max(same, key=self.mean_peak)
            kl = self.matched_kl(fam)
            peak = self.paired(fam, lambda r: r.peak_gold, against=best)[0]
            by_seed = {r.seed: r for r in self.families[best]}
            at_kl = t_interval(
                [
                    None if kl is None else _difference(gold_at_kl(r, kl), gold_at_kl(by_seed[r.seed], kl))
                    for r in self.families[fam]
                    if r.seed in by_seed
                ]
            )
            out.append({"family": fam, "best_fixed": best, "kl": kl, "peak": peak, "at_kl": at_kl})
        return out

    def eval_noise(self, family: Family) -> float:
        """The typical standard error of one gold estimate (its prompts x samples), at each run's peak evaluation."""
        values = [r.gold_sem[r.best] for r in self.families[family] if math.isfinite(r.gold_sem[r.best])]
        return float(np.mean(values)) if values else math.nan


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
