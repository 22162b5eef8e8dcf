"""Sweep report: moving vs frozen reference in gold reward at matched KL (else held-out preference metrics), over seeds.

    python -m trustregion.report outputs/sweep_toy/<date>/<time>          # a sweep dir, or globs of run dirs
    python -m trustregion.report --compare RUN_FROZEN RUN_TR --out DIR     # two runs side by side

Reads each run's ``config.yaml`` and ``metrics.jsonl`` (partial runs too). A *family* is a method, a beta
and an update rule (alpha, tau); its runs differ only in seed. Per run we read the gold reward at a KL to the
SFT model (interpolated between its evaluations ordered by KL, the KL = 0 point being its step-0
evaluation) and its peak (best evaluation and the KL there); per family, the mean over seeds with a
95 % t-interval (n - 1 degrees of freedom; none with one seed). Trust-Region families are compared with
the frozen reference of the same method and beta *paired by seed* (same training pairs, same evaluation
samples), at the KL where the frozen runs peak on average and in peak gold: the verdict is ``better``/``worse``
when the paired interval excludes 0, ``identical`` when every seed gives exactly 0 (no update happened yet),
else ``within noise``. Without a frozen family the comparison sections say so in one line. Writes
``report.md``, ``report.json``, ``bands.png``, ``gold_vs_kl.png`` and, where a fixed (alpha, tau) rule has a frozen
family to pair with, ``heatmap.png`` and ``heatmap_peak.png``; report.md lists what was written, and the same files
go to wandb as an artifact (offline unless asked).

Without a gold reward (no run has generation evaluations: data without a gold judge such as dataset=hh, or
eval.generate=false) the report says why in one line and summarises each family's held-out preference metrics
(the objective's ``eval/*`` rows: accuracy and margin against SFT and against the reference, log-ratio to the
reference, loss, log-probs) at each run's final evaluation, with the same intervals over seeds and the same
pairing by seed against frozen; it writes report.md and report.json only.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from trustregion.cli.app import exit_on_error
from trustregion.errors import ConfigError, DataError
from trustregion.training.steps import total_optimizer_steps

KL_LEVELS = (2.0, 5.0, 10.0)
# The objective's held-out metrics (``eval/*`` rows of metrics.jsonl, every evaluation, with or without a gold
# judge) as the report names them; the vs-SFT ones first: they share one yardstick across update rules.
PREFERENCE = {
    "eval/rewards_sft/accuracies": "accuracy vs SFT",
    "eval/rewards_sft/margins": "margin vs SFT",
    "eval/rewards/accuracies": "accuracy vs reference",
    "eval/rewards/margins": "margin vs reference",
    "eval/kl/policy_ref": "log π/π_ref per token",
    "eval/loss": "loss",
    "eval/logps/chosen": "logp chosen",
    "eval/logps/rejected": "logp rejected",
}
# Datasets whose loader attaches a gold judge (PreferenceData.task in trustregion.data); other data has none.
GOLD_JUDGED = ("toy", "sentiment")
NO_GENERATION = "no generation evaluations in metrics.jsonl (eval.generate=false, or not evaluated yet)"
CONFIDENCE = 0.95
FEW_SEEDS = 3  # below this many seeds an interval is reported but flagged
FROZEN_COLOR = "#222222"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


@dataclass(frozen=True, order=True)
class Family:
    """A sweep point apart from its seed: method, beta and update rule (alpha and tau; both None when frozen)."""

    method: str
    beta: float
    tau: int | None = None
    alpha: float | None = None
    peft: str = ""  # "" (full fine-tuning) or "LoRA", plus a moving reference's mode ("LoRA exact", "LoRA factors")
    spec: str = ""  # a rule beyond a fixed (alpha, tau): its name and own settings ("kl_budget budget=0.1"); "" if none

    @property
    def frozen(self) -> bool:
        return self.tau is None and not self.spec

    @property
    def fixed(self) -> bool:
        """A fixed (alpha, tau) rule: soft or hard."""
        return not self.frozen and not self.spec

    @property
    def rule(self) -> str:
        if self.spec:
            return f"{self.spec} α={self.alpha:g} τ={self.tau}"
        if self.tau is None:
            return "frozen"
        if self.alpha == 1.0:
            return f"hard τ={self.tau}"
        return f"soft α={self.alpha:g} τ={self.tau}"

    @property
    def label(self) -> str:
        """The rule, with the adapter and reference mode under LoRA (legends within one method and β)."""
        return f"{self.peft} {self.rule}" if self.peft else self.rule

    @property
    def style(self) -> str:
        """Line style in figures: solid for full fine-tuning, dashed for LoRA."""
        return "--" if self.peft else "-"

    @property
    def name(self) -> str:
        return f"{self.method} β={self.beta:g}{' ' + self.peft if self.peft else ''} {self.rule}"

    @property
    def baseline(self) -> Family:
        """The frozen-reference family this one is compared with."""
        return Family(self.method, self.beta, peft=self.peft.split(" ")[0])

    def sort_key(self) -> tuple:
        tuning = self.peft.split(" ")[0]
        return (
            self.method,
            self.beta,
            tuning,
            not self.frozen,
            self.spec,
            self.alpha != 1.0,
            self.tau or 0,
            self.alpha or 0.0,
        )


@dataclass
class Run:
    """One alignment run: its family, seed and evaluation points (KL to SFT, gold reward, its standard error)."""

    path: Path
    family: Family
    seed: int
    steps: list[int] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)
    gold_sem: list[float] = field(default_factory=list)
    in_domain: list[float] = field(default_factory=list)
    sft_gold: float | None = None
    finished: bool = False
    model: str = ""
    dataset: str = ""
    generate: bool = True  # eval.generate: whether the run asked for generation evaluations
    preference: dict[str, float] = field(default_factory=dict)  # the final held-out preference evaluation
    preference_step: int | None = None  # the step of that evaluation

    @property
    def has_gold(self) -> bool:
        """Whether the run logged a generation evaluation (gold reward and KL to SFT)."""
        return bool(self.steps)

    def path_from_sft(self) -> tuple[list[float], list[float]]:
        """(KL, gold) along the run, starting at the KL = 0 point: its step-0 evaluation, else the SFT gold."""
        if self.steps and self.steps[0] == 0:
            return list(self.kl), list(self.gold)
        start = self.sft_gold if self.sft_gold is not None else (self.gold[0] if self.gold else 0.0)
        return [0.0] + self.kl, [start] + self.gold

    @property
    def best(self) -> int:
        return int(np.argmax(self.gold))

    @property
    def peak_gold(self) -> float:
        return self.gold[self.best]

    @property
    def peak_kl(self) -> float:
        return self.kl[self.best]


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
        if self.n == 0:
            return "-"
        if self.n < 2:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]" + ("†" if self.few else "")

    def verdict(self) -> str:
        if self.n >= 1 and self.sd == 0.0 and self.mean == 0.0:
            return "identical"  # e.g. no reference update happened before the matched KL
        if self.n < 2:
            return "too few seeds"
        if self.lo > 0:
            return "better"
        if self.hi < 0:
            return "worse"
        return "within noise"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t_{(1+c)/2, n-1} · sd / √n over ``values`` (seeds)."""
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


# --- reading runs ---------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a run that is still writing, or one cut by a crash
    return rows


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _peft_label(peft: dict, moving: bool) -> str:
    """ "" for full fine-tuning; "LoRA" for adapters, with the moving reference's mode ("LoRA exact")."""
    if peft.get("name", "none") == "none":
        return ""
    return f"LoRA {peft.get('reference', 'auto')}" if moving else "LoRA"


_FIXED_RULES = ("trustregion.reference.rules.EveryTau", "trustregion.reference.rules.Frozen")


def _rule_spec(r: dict) -> str:
    """ "" for the frozen and fixed (alpha, tau) rules; otherwise the rule's name and its own settings."""
    if r.get("_target_", _FIXED_RULES[0]) in _FIXED_RULES:
        return ""
    own = {k: v for k, v in r.items() if k not in ("_target_", "name", "alpha", "tau")}
    return " ".join([str(r.get("name", r["_target_"]))] + [f"{k}={_short(v)}" for k, v in sorted(own.items())])


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def load_run(path: Path) -> Run | str:
    """The run in ``path``, or a string saying why it is skipped."""
    cfg_path, metrics_path = path / "config.yaml", path / "metrics.jsonl"
    if not cfg_path.exists():
        return "no config.yaml"
    if not metrics_path.exists():
        return "no metrics.jsonl"
    with open(cfg_path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    rows = _read_jsonl(metrics_path)
    if any("sft/loss" in r for r in rows):
        return "an SFT run"
    try:
        m, r = cfg["method"], cfg["ref_update"]
        tau, spec = r.get("tau"), _rule_spec(r)
        family = Family(
            str(m["name"]),
            float(m["beta"]),
            None if tau is None else int(tau),
            None if tau is None and not spec else float(r.get("alpha", 1.0)),
            _peft_label(cfg.get("peft") or {}, moving=tau is not None or bool(spec)),
            spec,
        )
        run = Run(
            path,
            family,
            int(cfg.get("trainer", {}).get("seed", 0)),
            model=str((cfg.get("model") or {}).get("name", "")),
            dataset=str((cfg.get("dataset") or {}).get("name", "")),
            generate=bool((cfg.get("eval") or {}).get("generate", True)),
        )
    except (KeyError, TypeError, ValueError) as e:
        return f"config.yaml lacks {e}"
    for row in rows:
        kl, gold = _num(row.get("eval/kl_sft")), _num(row.get("eval/gold_reward"))
        if math.isfinite(kl) and math.isfinite(gold):
            run.steps.append(int(row["step"]))
            run.kl.append(kl)
            run.gold.append(gold)
            run.gold_sem.append(_num(row.get("eval/gold_reward_sem")))
            run.in_domain.append(_num(row.get("eval/in_domain_rate")))
        if run.sft_gold is None and math.isfinite(_num(row.get("eval/sft_gold_reward"))):
            run.sft_gold = float(row["eval/sft_gold_reward"])
        if any(k in row for k in PREFERENCE):
            run.preference = {k: _num(row[k]) for k in PREFERENCE if k in row}
            run.preference_step = int(row["step"])
    if not run.steps and run.preference_step is None:
        return "no evaluations in metrics.jsonl (not evaluated yet)"
    total = _total_steps(cfg, rows)
    last = run.steps[-1] if run.steps else run.preference_step
    run.finished = total is not None and last >= total
    return run


def _total_steps(cfg: dict, rows: list[dict]) -> int | None:
    t = cfg.get("trainer", {}) or {}
    first = next((row for row in rows if "data/train_pairs" in row), None)
    if first is None or not t.get("batch_size"):
        return int(t["max_steps"]) if t.get("max_steps") else None
    try:
        return total_optimizer_steps(t, int(first["data/train_pairs"]), int(first.get("world_size", 1)))
    except ConfigError:
        return None


def find_run_dirs(targets: Sequence[str]) -> list[Path]:
    """Every directory at or under ``targets`` (dirs or globs) that holds a config.yaml or metrics.jsonl."""
    dirs: set[Path] = set()
    for target in targets:
        matches = [Path(p) for p in glob.glob(target)] or ([Path(target)] if Path(target).exists() else [])
        if not matches:
            raise DataError(
                f"{target}: no such file or directory; pass a sweep dir (outputs/multirun/<date>/<time>) or a glob"
            )
        for m in matches:
            if not m.is_dir():
                continue
            for name in ("config.yaml", "metrics.jsonl"):
                for hit in m.rglob(name):
                    if not {".hydra", "checkpoints", "wandb"} & set(hit.parts):
                        dirs.add(hit.parent)
    return sorted(dirs, key=lambda p: (len(p.parts), str(p)))


# --- per-run readings -----------------------------------------------------------------------------
def gold_at_kl(run: Run, level: float) -> float | None:
    """Gold at KL ``level``: linear between the run's evaluations ordered by KL (its KL path wanders, being a
    Monte-Carlo estimate, so ordering by step would read a dip as a second crossing); None beyond its largest KL."""
    kl, gold = run.path_from_sft()
    order = sorted(range(len(kl)), key=lambda i: kl[i])
    xs, ys = [kl[i] for i in order], [gold[i] for i in order]
    if level > xs[-1]:
        return None
    return float(np.interp(level, xs, ys))


def reach(run: Run) -> float:
    """The largest KL the run's path reached."""
    return max(run.path_from_sft()[0])


# --- the study ------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """A Trust-Region family against the frozen family of its method and beta, paired by seed."""

    family: Family
    kl: float  # the matched KL: where the frozen runs peak, on average
    at_kl: Interval  # TR - frozen gold at that KL
    peak: Interval  # TR - frozen peak gold
    seeds: list[int]


@dataclass
class Study:
    runs: list[Run]
    families: dict[Family, list[Run]]

    @classmethod
    def of(cls, runs: list[Run]) -> Study:
        families: dict[Family, list[Run]] = {}
        for r in runs:
            families.setdefault(r.family, []).append(r)
        ordered = dict(sorted(families.items(), key=lambda kv: kv[0].sort_key()))
        for members in ordered.values():
            members.sort(key=lambda r: r.seed)
        return cls(runs, ordered)

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

    def unpaired(self) -> list[Family]:
        """The moving-reference families with no frozen family of their method, beta and tuning to pair with."""
        return [f for f in self.families if not f.frozen and f.baseline not in self.families]

    def no_baseline_line(self) -> str | None:
        """One line where moving-reference families have no frozen baseline in the sweep; None where all do."""
        missing = self.unpaired()
        if not missing:
            return None
        if not any(f.frozen for f in self.families):
            return (
                "No frozen baseline: no run in this sweep has ref_update=none, so there is nothing to compare against."
            )
        return "No frozen baseline (ref_update=none at the same method, β and tuning) for: " + ", ".join(
            f.name for f in missing
        )

    def over_seeds(self, family: Family, reading: Callable[[Run], float | None]) -> Interval:
        return t_interval([reading(r) for r in self.families[family]])

    def matched_kl(self, family: Family) -> float | None:
        """The KL where the frozen runs of ``family``'s method and beta peak, averaged over seeds."""
        frozen = self.families.get(family.baseline)
        return float(np.mean([r.peak_kl for r in frozen])) if frozen else None

    def paired(self, family: Family, reading: Callable[[Run], float | None]) -> tuple[Interval, list[int]]:
        """TR - frozen of ``reading`` over the seeds both have (a seed missing either side is left out)."""
        frozen = {r.seed: r for r in self.families.get(family.baseline, [])}
        diffs, seeds = [], []
        for r in self.families[family]:
            if r.seed in frozen:
                a, b = reading(r), reading(frozen[r.seed])
                if a is not None and b is not None:
                    diffs.append(a - b)
                    seeds.append(r.seed)
        return t_interval(diffs), seeds

    def comparisons(self) -> list[Comparison]:
        out = []
        for fam in self.families:
            kl = self.matched_kl(fam)
            if fam.frozen or kl is None:
                continue
            at_kl, seeds = self.paired(fam, lambda r, kl=kl: gold_at_kl(r, kl))
            peak, _ = self.paired(fam, lambda r: r.peak_gold)
            out.append(Comparison(fam, kl, at_kl, peak, seeds))
        return out

    def best_per_method(self) -> list[dict]:
        """Per method with beta tuned too: the best frozen and the best Trust-Region family by mean peak gold,
        and their paired (by seed) difference in peak gold."""
        out = []
        for method in sorted({f.method for f in self.families}):

            def mean_peak(f: Family) -> float:
                return float(np.mean([r.peak_gold for r in self.families[f]]))

            frozen = [f for f in self.families if f.method == method and f.frozen]
            moving = [f for f in self.families if f.method == method and not f.frozen]
            if not frozen or not moving:
                continue
            best_frozen, best_tr = max(frozen, key=mean_peak), max(moving, key=mean_peak)
            by_seed = {r.seed: r.peak_gold for r in self.families[best_frozen]}
            diff = t_interval([r.peak_gold - by_seed[r.seed] for r in self.families[best_tr] if r.seed in by_seed])
            out.append(
                {
                    "method": method,
                    "frozen": best_frozen,
                    "tr": best_tr,
                    "diff": diff,
                    "frozen_peak": self.over_seeds(best_frozen, lambda r: r.peak_gold),
                    "tr_peak": self.over_seeds(best_tr, lambda r: r.peak_gold),
                    "candidates": len(moving),
                }
            )
        return out

    def versus_best_fixed(self) -> list[dict]:
        """Each rule beyond a fixed (alpha, tau) against the fixed rule with the highest mean peak gold at its method,
        beta and tuning, paired by seed: peak gold and gold at the frozen runs' peak KL."""
        out = []
        for fam in self.families:
            if not fam.spec:
                continue

            def mean_peak(f: Family) -> float:
                return float(np.mean([r.peak_gold for r in self.families[f]]))

            same = [
                f for f in self.families if f.fixed and (f.method, f.beta, f.peft) == (fam.method, fam.beta, fam.peft)
            ]
            if not same:
                continue
            best = max(same, key=mean_peak)
            by_seed = {r.seed: r for r in self.families[best]}
            kl = self.matched_kl(fam)
            peak, at_kl = [], []
            for r in self.families[fam]:
                if r.seed in by_seed:
                    peak.append(r.peak_gold - by_seed[r.seed].peak_gold)
                    a, b = (gold_at_kl(r, kl), gold_at_kl(by_seed[r.seed], kl)) if kl is not None else (None, None)
                    at_kl.append(None if a is None or b is None else a - b)
            out.append(
                {"family": fam, "best_fixed": best, "kl": kl, "peak": t_interval(peak), "at_kl": t_interval(at_kl)}
            )
        return out

    def eval_noise(self, family: Family) -> float:
        """The typical standard error of one gold estimate (its prompts x samples), at each run's peak evaluation."""
        values = [r.gold_sem[r.best] for r in self.families[family] if math.isfinite(r.gold_sem[r.best])]
        return float(np.mean(values)) if values else math.nan


# --- markdown -------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}f}"


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve())) or "."
    except ValueError:
        return str(path)


def paired_table(study: Study) -> list[str]:
    lines = [
        "| family | seeds | matched KL | Δ gold at matched KL | verdict | Δ peak gold | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in study.comparisons():
        lines.append(
            f"| {c.family.name} | {c.at_kl.n} | {c.kl:.2f} | {c.at_kl.text()} | {c.at_kl.verdict()} | "
            f"{c.peak.text()} | {c.peak.verdict()} |"
        )
    return lines


def versus_fixed_table(study: Study) -> list[str]:
    lines = [
        "| rule | best fixed rule | seeds | Δ gold at matched KL | verdict | Δ peak gold | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in study.versus_best_fixed():
        kl = "-" if v["kl"] is None else f"{v['kl']:.2f}"
        lines.append(
            f"| {v['family'].name} | {v['best_fixed'].rule} | {v['peak'].n} | {v['at_kl'].text()} (KL {kl}) | "
            f"{v['at_kl'].verdict()} | {v['peak'].text()} | {v['peak'].verdict()} |"
        )
    return lines


def family_table(study: Study) -> list[str]:
    head = " | ".join(f"gold at KL {x:g}" for x in KL_LEVELS)
    lines = [
        f"| family | seeds | {head} | peak gold | KL at peak | eval SE | seed SD of peak |",
        "|---|---|" + "---|" * len(KL_LEVELS) + "---|---|---|---|",
    ]
    for fam in study.families:
        cells = []
        for level in KL_LEVELS:
            iv = study.over_seeds(fam, lambda r, x=level: gold_at_kl(r, x))
            n_all = len(study.families[fam])
            cells.append(iv.text() + (f" ({iv.n}/{n_all} reached)" if 0 < iv.n < n_all else ""))
        peak = study.over_seeds(fam, lambda r: r.peak_gold)
        kl = study.over_seeds(fam, lambda r: r.peak_kl)
        lines.append(
            f"| {fam.name} | {len(study.families[fam])} | "
            + " | ".join(cells)
            + f" | {peak.text()} | {kl.text(2)} | {_fmt(study.eval_noise(fam))} | {_fmt(peak.sd)} |"
        )
    return lines


def best_table(study: Study) -> list[str]:
    lines = [
        "| method | best frozen (peak gold) | best Trust-Region (peak gold) | Δ peak gold, paired | verdict |",
        "|---|---|---|---|---|",
    ]
    for b in study.best_per_method():
        lines.append(
            f"| {b['method']} | {b['frozen'].name}: {b['frozen_peak'].text()} | {b['tr'].name}: "
            f"{b['tr_peak'].text()} | {b['diff'].text()} | {b['diff'].verdict()} |"
        )
    return lines


def _or_why(table: list[str], rows: list, study: Study, note: bool = True) -> list[str]:
    """A comparison table, with (``note``) a line under it naming the families left out for want of a frozen
    baseline; in its place that line alone (or that there is no moving reference) when the table would be empty."""
    why = study.no_baseline_line()
    if rows:
        return table + ([] if why is None or not note else ["", why])
    return [why or "No Trust-Region family: every run has ref_update=none, so there is nothing to compare."]


FIGURES = {
    "bands.png": "gold vs KL, mean and 95 % band over seeds, one panel per method and β",
    "heatmap.png": "paired Δ gold at matched KL over α and τ",
    "heatmap_peak.png": "paired Δ peak gold over α and τ",
    "gold_vs_kl.png": "every run",
}


def _with_tail(lines: list[str], skipped, root, written: list[str]) -> str:
    """A report's text: its lines, then the runs skipped and why, then the files written."""
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- `{_rel(p, root)}`: {why}" for p, why in skipped]
    return "\n".join([*lines, "", _written_line(written), ""])


def _written_line(written: Sequence[str]) -> str:
    figures = [f"`{f}` ({FIGURES[f]})" for f in written if f in FIGURES]
    others = [f"`{f}`" for f in written if f not in FIGURES]
    return "Written: " + ", ".join(["`report.md`", "`report.json`", *others, *figures]) + "."


def markdown(study: Study, skipped: list[tuple[Path, str]], root: Path, written: Sequence[str] = ()) -> str:
    seeds = sorted({r.seed for r in study.runs})
    counts = sorted({len(m) for m in study.families.values()})
    few = counts[0] < FEW_SEEDS
    lines = [
        "# Sweep report",
        "",
        f"{len(study.runs)} runs in {len(study.families)} families from `{root}`; seeds {seeds} "
        f"({'/'.join(map(str, counts))} per family). {_setting(study)}",
        "",
        f"Intervals: mean over seeds ± a two-sided {CONFIDENCE:.0%} t-interval (n − 1 degrees of freedom). "
        "None with one seed; † marks fewer than 3 seeds, where the interval is very wide."
        + (" **Some families have fewer than 3 seeds: read their verdicts as unknown.**" if few else ""),
        "Gold at a KL is read off each run's evaluations ordered by KL (linear between them; KL 0 is the step-0 "
        "evaluation). Peak gold is the best evaluation of each run; as a maximum over noisy "
        "evaluations it is biased upward, alike for every family.",
        "",
        "## Trust-Region vs frozen, paired by seed",
        "",
        "TR − frozen on the same seed (same training pairs, same evaluation prompts and sampling seed), "
        "same method and β. Matched KL: where the frozen runs peak, on average. Verdict: *better*/*worse* when the "
        "paired interval excludes 0, *identical* when every seed gives exactly 0 (no update before that point), "
        "else *within noise*.",
        "",
        *_or_why(paired_table(study), study.comparisons(), study),
        "",
        "## Best per method, β tuned too",
        "",
        "The family with the highest mean peak gold among the frozen ones and among the Trust-Region ones "
        "(any β, α, τ), paired by seed. Picking the best of many families on the same seeds favours the side "
        "with more candidates: treat a *better* here as a lead to confirm on new seeds.",
        "",
        *_or_why(best_table(study), study.best_per_method(), study, note=False),
        "",
        *(
            [
                "## Rules beyond a fixed (α, τ) vs the best fixed rule, paired by seed",
                "",
                "Each adaptive or scheduled rule against the soft/hard family with the highest mean peak gold at its "
                "method and β, chosen on these same seeds (which favours the fixed side).",
                "",
                *versus_fixed_table(study),
                "",
            ]
            if study.versus_best_fixed()
            else []
        ),
        "## Families",
        "",
        "Mean [95 % interval] over seeds. *eval SE*: the standard error of one gold estimate from its prompts × "
        "samples (at the peak evaluation, averaged over seeds): sampling noise. *seed SD*: the spread of peak gold "
        "across seeds: training noise. When seed SD ≫ eval SE, more seeds help more than more samples.",
        "",
        *family_table(study),
        "",
        "## Runs",
        "",
        "| run | family | seed | evals | final gold | peak gold (step) | KL at peak | final KL | final in-domain | done |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(study.runs, key=lambda r: (r.family.sort_key(), r.seed)):
        b = r.best
        lines.append(
            f"| {_rel(r.path, root)} | {r.family.name} | {r.seed} | {len(r.steps)} | {_fmt(r.gold[-1])} | "
            f"{_fmt(r.peak_gold)} ({r.steps[b]}) | {_fmt(r.peak_kl, 2)} | {_fmt(r.kl[-1], 2)} | "
            f"{_fmt(r.in_domain[-1], 2)} | {'yes' if r.finished else 'partial'} |"
        )
    return _with_tail(lines, skipped, root, written)


def _iv(iv: Interval) -> dict:
    return {"mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n, "sd": iv.sd}


def summary_json(study: Study) -> dict:
    """The report's numbers, for scripts and tests."""
    fams = {}
    for fam, members in study.families.items():
        fams[fam.name] = {
            "method": fam.method,
            "beta": fam.beta,
            "alpha": fam.alpha,
            "tau": fam.tau,
            "rule": fam.spec or fam.rule,
            "seeds": [r.seed for r in members],
            "gold_at_kl": {f"{x:g}": _iv(study.over_seeds(fam, lambda r, x=x: gold_at_kl(r, x))) for x in KL_LEVELS},
            "peak_gold": _iv(study.over_seeds(fam, lambda r: r.peak_gold)),
            "peak_kl": _iv(study.over_seeds(fam, lambda r: r.peak_kl)),
            "eval_se": study.eval_noise(fam),
        }
    paired = {
        c.family.name: {
            "matched_kl": c.kl,
            "at_kl": _iv(c.at_kl),
            "at_kl_verdict": c.at_kl.verdict(),
            "peak": _iv(c.peak),
            "peak_verdict": c.peak.verdict(),
            "seeds": c.seeds,
        }
        for c in study.comparisons()
    }
    best = [
        {
            "method": b["method"],
            "frozen": b["frozen"].name,
            "tr": b["tr"].name,
            "diff": _iv(b["diff"]),
            "verdict": b["diff"].verdict(),
        }
        for b in study.best_per_method()
    ]
    versus_fixed = {
        v["family"].name: {
            "best_fixed": v["best_fixed"].name,
            "matched_kl": v["kl"],
            "at_kl": _iv(v["at_kl"]),
            "peak": _iv(v["peak"]),
            "peak_verdict": v["peak"].verdict(),
        }
        for v in study.versus_best_fixed()
    }
    return {
        "gold": True,
        "no_baseline": study.no_baseline_line(),
        "families": fams,
        "paired": paired,
        "best": best,
        "versus_best_fixed": versus_fixed,
    }


# --- without a gold reward: held-out preference metrics -----------------------------------------------
PAIRED_PREFERENCE = ("eval/rewards_sft/accuracies", "eval/rewards_sft/margins")


def _final(key: str) -> Callable[[Run], float | None]:
    """A run's ``key`` at its final held-out evaluation (None where it has none)."""
    return lambda r: r.preference.get(key)


def _direction(iv: Interval) -> str:
    """The verdict on a paired difference of a preference metric: higher/lower where the interval excludes 0."""
    return {"better": "higher", "worse": "lower"}.get(iv.verdict(), iv.verdict())


def _final_steps(members: list[Run]) -> str:
    steps = sorted({r.preference_step for r in members if r.preference_step is not None})
    return "-" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"


def _pairable(study: Study) -> list[Family]:
    return [f for f in study.families if not f.frozen and f.baseline in study.families]


def _setting(study: Study) -> str:
    """ "Model tiny; dataset hh." from the runs' configs (the parts they name)."""
    parts = [
        f"{what} {', '.join(names)}"
        for what, names in (
            ("Model", sorted({r.model for r in study.runs if r.model})),
            ("dataset", sorted({r.dataset for r in study.runs if r.dataset})),
        )
        if names
    ]
    return "; ".join(parts) + "." if parts else ""


def preference_family_table(study: Study) -> list[str]:
    lines = [
        "| family | seeds | final eval step | " + " | ".join(PREFERENCE.values()) + " |",
        "|---|---|---|" + "---|" * len(PREFERENCE),
    ]
    for fam, members in study.families.items():
        cells = [study.over_seeds(fam, _final(k)).text() for k in PREFERENCE]
        lines.append(f"| {fam.name} | {len(members)} | {_final_steps(members)} | " + " | ".join(cells) + " |")
    return lines


def preference_paired_table(study: Study) -> list[str]:
    names = [PREFERENCE[k] for k in PAIRED_PREFERENCE]
    lines = [
        "| family | seeds | " + " | ".join(f"Δ {n} | verdict" for n in names) + " |",
        "|---|---|" + "---|---|" * len(names),
    ]
    for fam in _pairable(study):
        pairs = [study.paired(fam, _final(k)) for k in PAIRED_PREFERENCE]
        cells = [f"{iv.text()} | {_direction(iv)}" for iv, _ in pairs]
        lines.append(f"| {fam.name} | {len(pairs[0][1])} | " + " | ".join(cells) + " |")
    return lines


def preference_markdown(study: Study, skipped: list[tuple[Path, str]], root: Path) -> str:
    """The report of a sweep without gold reward: each family's held-out preference metrics at the final
    evaluation, mean and interval over seeds, and the moving-reference families paired with frozen by seed."""
    seeds = sorted({r.seed for r in study.runs})
    counts = sorted({len(m) for m in study.families.values()})
    few = counts[0] < FEW_SEEDS
    lines = [
        "# Sweep report",
        "",
        f"{len(study.runs)} runs in {len(study.families)} families from `{root}`; seeds {seeds} "
        f"({'/'.join(map(str, counts))} per family). {_setting(study)}",
        "",
        study.no_gold_reason(),
        "",
        "Held-out preference metrics: the objective on the held-out pairs at each run's final evaluation "
        "(`eval/*` in metrics.jsonl). "
        f"Intervals: mean over seeds ± a two-sided {CONFIDENCE:.0%} t-interval (n − 1 degrees of freedom); none "
        "with one seed; † marks fewer than 3 seeds."
        + (" **Some families have fewer than 3 seeds: read their verdicts as unknown.**" if few else ""),
        "*vs SFT*: implicit rewards β·log π/π_SFT, one yardstick for every update rule; *vs reference*: against each "
        "run's own reference, which a moving reference shifts, so compare families on the vs-SFT columns. "
        "A KL to SFT needs samples from the policy (generation evaluations); *log π/π_ref per token* is the "
        "held-out responses' log-ratio to the current reference.",
        "",
        "## Trust-Region vs frozen, paired by seed",
        "",
        "TR − frozen on the same seed, same method and β, at each run's final evaluation. Verdict: *higher*/*lower* "
        "when the paired interval excludes 0, *identical* when every seed gives exactly 0, else *within noise*.",
        "",
        *_or_why(preference_paired_table(study), _pairable(study), study),
        "",
        "## Families",
        "",
        "Mean [95 % interval] over seeds at the final evaluation.",
        "",
        *preference_family_table(study),
        "",
        "## Runs",
        "",
        "| run | family | seed | final eval step | accuracy vs SFT | margin vs SFT | loss | done |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(study.runs, key=lambda r: (r.family.sort_key(), r.seed)):
        pref = r.preference
        lines.append(
            f"| {_rel(r.path, root)} | {r.family.name} | {r.seed} | {r.preference_step} | "
            f"{_fmt(pref.get('eval/rewards_sft/accuracies'))} | {_fmt(pref.get('eval/rewards_sft/margins'))} | "
            f"{_fmt(pref.get('eval/loss'))} | {'yes' if r.finished else 'partial'} |"
        )
    return _with_tail(lines, skipped, root, [])


def preference_json(study: Study) -> dict:
    """The numbers of a report without gold reward, for scripts and tests."""
    fams = {}
    for fam, members in study.families.items():
        fams[fam.name] = {
            "method": fam.method,
            "beta": fam.beta,
            "alpha": fam.alpha,
            "tau": fam.tau,
            "rule": fam.spec or fam.rule,
            "seeds": [r.seed for r in members],
            "final_step": [r.preference_step for r in members],
            "preference": {k.removeprefix("eval/"): _iv(study.over_seeds(fam, _final(k))) for k in PREFERENCE},
        }
    paired = {}
    for fam in _pairable(study):
        entry: dict = {}
        for k in PAIRED_PREFERENCE:
            iv, seeds = study.paired(fam, _final(k))
            entry[k.removeprefix("eval/")] = {**_iv(iv), "verdict": _direction(iv)}
            entry["seeds"] = seeds
        paired[fam.name] = entry
    return {
        "gold": False,
        "no_gold": study.no_gold_reason(),
        "no_baseline": study.no_baseline_line(),
        "families": fams,
        "paired": paired,
    }


# --- figures --------------------------------------------------------------------------------------
def _panels(study: Study) -> list[tuple[str, float]]:
    return sorted({(f.method, f.beta) for f in study.families})


def _colors(families: list[Family]) -> dict[Family, str]:
    moving = [f for f in families if not f.frozen]
    out = {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(moving)}
    out.update({f: FROZEN_COLOR for f in families if f.frozen})
    return out


def _figure(n: int, height: float = 4.2):
    """A figure of ``n`` panels, three to a row, and its axes."""
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(5.2 * cols, height * rows), dpi=100)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def _gold_vs_kl_axes(ax, method: str, beta: float) -> None:
    ax.set_title(f"{method.upper()}, β={beta:g}")
    ax.set_xlabel("KL(policy ‖ SFT)")
    ax.set_ylabel("gold reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_bands(study: Study, path: Path) -> None:
    """Gold vs KL per family: mean over seeds and its 95 % band, on KLs every seed of the family reached."""
    panels = _panels(study)
    fig, axes = _figure(len(panels))
    for ax, (method, beta) in zip(axes, panels):
        fams = [f for f in study.families if (f.method, f.beta) == (method, beta)]
        colors = _colors(fams)
        for fam in fams:
            members = study.families[fam]
            top = min(reach(r) for r in members)
            grid = np.linspace(0.0, top, 40)
            ivs = [t_interval([gold_at_kl(r, x) for r in members]) for x in grid]
            mean = np.array([iv.mean for iv in ivs])
            width = 2.2 if fam.frozen else 1.4
            label = f"{fam.label} (n={len(members)})"
            ax.plot(grid, mean, fam.style, color=colors[fam], lw=width, label=label)
            if len(members) > 1:
                ax.fill_between(grid, [iv.lo for iv in ivs], [iv.hi for iv in ivs], color=colors[fam], alpha=0.12)
        _gold_vs_kl_axes(ax, method, beta)
    fig.tight_layout()
    fig.savefig(path)


def plot_heatmap(study: Study, path: Path, peak: bool = False) -> bool:
    """Paired TR − frozen (mean over seeds) over α (rows) and τ (columns), one panel per method and β: gold at
    the matched KL, or (``peak``) peak gold. Writes nothing and returns False without a fixed rule to pair."""

    comps = [c for c in study.comparisons() if c.family.fixed]  # the (alpha, tau) grid; other rules are off it
    panels = sorted({(c.family.method, c.family.beta, c.family.peft) for c in comps})
    if not panels:
        return False
    pick = (lambda c: c.peak) if peak else (lambda c: c.at_kl)
    fig, axes = _figure(len(panels), height=4.0)
    span = max([abs(pick(c).mean) for c in comps if math.isfinite(pick(c).mean)] or [1.0]) or 1.0
    for ax, (method, beta, peft) in zip(axes, panels):
        mine = [c for c in comps if (c.family.method, c.family.beta, c.family.peft) == (method, beta, peft)]
        alphas = sorted({c.family.alpha for c in mine})
        taus = sorted({c.family.tau for c in mine})
        values = np.full((len(alphas), len(taus)), np.nan)
        for c in mine:
            i, j = alphas.index(c.family.alpha), taus.index(c.family.tau)
            values[i, j] = pick(c).mean
            mark = {"better": "+", "worse": "−"}.get(pick(c).verdict(), "")
            ax.text(j, i, f"{pick(c).mean:+.2f}{mark}", ha="center", va="center", fontsize=8)
        image = ax.imshow(values, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
        ax.set_xticks(range(len(taus)), [str(t) for t in taus])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("τ (steps between updates)")
        ax.set_ylabel("α")
        what = "Δ peak gold" if peak else f"Δ gold at KL {mine[0].kl:.1f}"
        ax.set_title(f"{method.upper()} β={beta:g}{' ' + peft if peft else ''}: {what}")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.text(0.01, 0.005, "TR − frozen, paired by seed; + / −: the 95 % interval excludes 0", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return True


def plot_runs(study: Study, path: Path) -> None:
    """Every run's gold vs KL path, one panel per method and β, coloured by family."""
    panels = _panels(study)
    fig, axes = _figure(len(panels))
    for ax, (method, beta) in zip(axes, panels):
        fams = [f for f in study.families if (f.method, f.beta) == (method, beta)]
        colors = _colors(fams)
        for fam in fams:
            for i, r in enumerate(study.families[fam]):
                kl, gold = r.path_from_sft()
                ax.plot(
                    kl,
                    gold,
                    marker="o",
                    ms=2,
                    lw=1.8 if fam.frozen else 1.0,
                    color=colors[fam],
                    alpha=0.7,
                    ls=fam.style,
                    label=fam.label if i == 0 else None,
                )
        _gold_vs_kl_axes(ax, method, beta)
    fig.tight_layout()
    fig.savefig(path)


# --- wandb ----------------------------------------------------------------------------------------
def log_to_wandb(out: Path, study: Study, project: str, files: Sequence[str] | None = None):
    """The report as a wandb artifact (``files``, default report.md, report.json and whichever figures are in
    ``out``) plus its tables; returns the artifact, or None where wandb is off (WANDB_MODE=disabled)."""
    if files is None:
        files = [f for f in ("report.md", "report.json", *FIGURES) if (out / f).exists()]
    mode = os.environ.get("WANDB_MODE", "offline")
    if mode == "disabled":
        return None
    import wandb

    name = "report-" + "-".join(out.resolve().parts[-2:]).replace(" ", "_")
    run = wandb.init(
        project=project,
        job_type="report",
        name=name,
        group="reports",
        dir=str(out),
        mode=mode,
        settings=wandb.Settings(quiet=True, console="off"),
    )
    try:
        if study.gold:
            table = wandb.Table(
                columns=["family", "seeds", "matched_kl", "delta_gold", "lo", "hi", "verdict"],
                data=[
                    [c.family.name, c.at_kl.n, c.kl, c.at_kl.mean, c.at_kl.lo, c.at_kl.hi, c.at_kl.verdict()]
                    for c in study.comparisons()
                ],
            )
        else:
            keys = list(PREFERENCE)
            table = wandb.Table(
                columns=["family", "seeds", *(k.removeprefix("eval/") for k in keys)],
                data=[
                    [fam.name, len(members), *(study.over_seeds(fam, _final(k)).mean for k in keys)]
                    for fam, members in study.families.items()
                ],
            )
        images = {f"report/{Path(f).stem}": wandb.Image(str(out / f)) for f in files if f.endswith(".png")}
        run.log({"report/paired" if study.gold else "report/preference": table, **images})
        artifact = wandb.Artifact(name=wandb.util.make_artifact_name_safe(name), type="sweep-report")
        for file in files:
            artifact.add_file(str(out / file))
        run.log_artifact(artifact)
    finally:
        run.finish()
    return artifact


# --- entry points ---------------------------------------------------------------------------------
def load_runs(targets: Sequence[str]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The evaluated runs under ``targets`` and the skipped dirs with why. Where any run has generation evaluations
    the report is on gold reward and the runs without them are skipped; else every run is reported on its held-out
    preference metrics."""
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    for d in find_run_dirs(targets):
        run = load_run(d)
        (runs.append(run) if isinstance(run, Run) else skipped.append((d, run)))
    if not runs:
        why = "; ".join(f"{p}: {w}" for p, w in skipped) or "no run dirs found"
        raise DataError(f"no evaluated run under {', '.join(targets)} ({why})")
    if any(r.has_gold for r in runs):
        skipped += [(r.path, NO_GENERATION) for r in runs if not r.has_gold]
        skipped.sort(key=lambda s: (len(s[0].parts), str(s[0])))
        runs = [r for r in runs if r.has_gold]
    check_one_setting(runs, targets)
    return runs, skipped


def check_one_setting(runs: Sequence[Run], targets: Sequence[str]) -> None:
    """Families pool runs by method, β and rule; runs of different models or datasets must not pool silently."""
    settings = Counter(f"model={r.model} dataset={r.dataset}" for r in runs)
    if len(settings) > 1:
        mix = ", ".join(f"{name} ({n} runs)" for name, n in settings.most_common())
        raise DataError(
            f"the runs under {', '.join(targets)} mix settings: {mix}; report each setting's runs separately "
            "(pass their dirs), as families would pool them"
        )


def build_report(
    targets: Sequence[str], out: Path | None = None, wandb_project: str | None = None
) -> tuple[Path, Study, list[tuple[Path, str]]]:
    """Read the runs under ``targets``; write report.md, report.json and the PNGs into ``out`` (default: the
    first target); log them to wandb when ``wandb_project`` is given."""
    runs, skipped = load_runs(targets)
    if out is None:
        first = Path(targets[0])
        out = first if first.is_dir() else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    study = Study.of(runs)
    written: list[str] = []
    if study.gold:
        plot_bands(study, out / "bands.png")
        written.append("bands.png")
        written += [
            f for f, peak in (("heatmap.png", False), ("heatmap_peak.png", True)) if plot_heatmap(study, out / f, peak)
        ]
        plot_runs(study, out / "gold_vs_kl.png")
        written.append("gold_vs_kl.png")
        text, numbers = markdown(study, skipped, out, written), summary_json(study)
    else:
        text, numbers = preference_markdown(study, skipped, out), preference_json(study)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.json").write_text(json.dumps(numbers, indent=1, default=str), encoding="utf-8")
    if wandb_project:
        log_to_wandb(out, study, wandb_project, ["report.md", "report.json", *written])
    return out / "report.md", study, skipped


def compare(frozen_dir: Path, tr_dir: Path, out: Path) -> str:
    """Two runs side by side (a frozen and a moving reference): gold at matched KLs, peak gold, KL at the peak;
    writes ``compare.png`` and ``compare.md`` into ``out`` and returns the table."""
    runs = []
    for d in (frozen_dir, tr_dir):
        run = load_run(Path(d))
        if isinstance(run, Run) and not run.has_gold:
            run = NO_GENERATION
        if not isinstance(run, Run):
            raise DataError(f"{d}: {run}")
        runs.append(run)
    frozen, tr = runs
    top = min(reach(frozen), reach(tr))
    levels = [x for x in (1.0, *KL_LEVELS, 15.0, 20.0) if x <= top] + [frozen.peak_kl]
    rows = [("", f"frozen ({frozen.family.name})", f"Trust-Region ({tr.family.name})")]
    for x in sorted(set(levels)):
        label = f"gold at KL {x:.2f} (frozen's peak)" if x == frozen.peak_kl else f"gold at KL {x:g}"
        rows.append((label, _fmt(gold_at_kl(frozen, x)), _fmt(gold_at_kl(tr, x))))
    rows += [
        ("peak gold", _fmt(frozen.peak_gold), _fmt(tr.peak_gold)),
        ("KL at the peak", _fmt(frozen.peak_kl, 2), _fmt(tr.peak_kl, 2)),
        (
            "final gold (KL)",
            f"{_fmt(frozen.gold[-1])} ({_fmt(frozen.kl[-1], 1)})",
            f"{_fmt(tr.gold[-1])} ({_fmt(tr.kl[-1], 1)})",
        ),
    ]
    table = "\n".join(
        [f"| {a} | {b} | {c} |" for a, b, c in rows[:1]]
        + ["|---|---|---|"]
        + [f"| {a} | {b} | {c} |" for a, b, c in rows[1:]]
    )
    note = (
        f"One seed ({frozen.seed}): an anecdote, not a finding; `make sweep-toy` gives intervals over seeds. "
        f"SFT gold {_fmt(frozen.sft_gold)}; one evaluation's standard error about {_fmt(frozen.gold_sem[frozen.best])}."
    )
    out.mkdir(parents=True, exist_ok=True)
    _plot_pair(frozen, tr, out / "compare.png")
    (out / "compare.md").write_text(table + "\n\n" + note + "\n", encoding="utf-8")
    return table + "\n\n" + note


def _plot_pair(frozen: Run, tr: Run, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), dpi=100)
    ax = fig.add_subplot()
    for run, color, label in (
        (frozen, FROZEN_COLOR, "frozen reference"),
        (tr, PALETTE[0], f"Trust-Region, {tr.family.rule}"),
    ):
        kl, gold = run.path_from_sft()
        ax.plot(kl, gold, "o-", ms=3, color=color, label=label)
        ax.plot([run.peak_kl], [run.peak_gold], "*", ms=12, color=color)
    ax.set_title(f"{frozen.family.method.upper()} β={frozen.family.beta:g}, seed {frozen.seed}: gold vs KL to SFT")
    ax.set_xlabel("KL(policy ‖ SFT)")
    ax.set_ylabel("gold reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


@exit_on_error
def run(args: argparse.Namespace) -> None:
    if args.compare:
        if len(args.targets) != 2:
            raise DataError(f"--compare takes two run dirs (frozen, then Trust-Region), got {len(args.targets)}")
        print(compare(Path(args.targets[0]), Path(args.targets[1]), args.out or Path(args.targets[1]).parent))
        return
    path, study, skipped = build_report(args.targets, args.out, None if args.no_wandb else args.wandb_project)
    for p, why in skipped:
        print(f"skipped {p}: {why}")
    print(f"{len(study.runs)} runs in {len(study.families)} families -> {path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trustregion-report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "targets", nargs="+", help="a sweep dir or globs of run dirs; with --compare: FROZEN_RUN TR_RUN"
    )
    parser.add_argument("--out", type=Path, default=None, help="where the report goes (default: the sweep dir)")
    parser.add_argument("--compare", action="store_true", help="two runs side by side: a frozen and a moving reference")
    parser.add_argument(
        "--wandb-project",
        default="trustregion",
        help="log the report as a wandb artifact here (WANDB_MODE=offline by default; disabled: no wandb)",
    )
    parser.add_argument("--no-wandb", action="store_true", help="do not log to wandb")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
