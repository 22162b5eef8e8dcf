"""Sweep report: a table of runs and families, and gold reward vs KL-to-SFT plots with fitted curves.

    python -m trustregion.report outputs/multirun/2026-11-23/17-40-00     # or a glob of run dirs

Reads each run's ``config.yaml`` and ``metrics.jsonl`` (partial runs too), writes ``report.md``,
``gold_vs_kl.png`` (one curve per run) and ``fits.png`` into the sweep dir (or ``--out``). Families
(method x reference-update rule, pooled over beta and seeds) are compared at matched KL with the
scaling form of Gao et al. (2022), used for direct alignment by Rafailov et al. (2024):
gold(d) - gold_SFT = d * (a - b * log d), d = sqrt(KL(pi || pi_SFT)), fitted by least squares; its
peak is at d* = exp(a/b - 1), where the gain is b * d*.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from trustregion.errors import ConfigError, DataError

COLORS = {"frozen": "#222222", "soft": "#1f77b4", "hard": "#d62728"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


@dataclass
class Run:
    """One alignment run: its settings and its evaluation points."""

    path: Path
    method: str
    rule: str  # none | soft | hard | ... (ref_update.name)
    alpha: float | None
    tau: int | None
    beta: float
    seed: int
    steps: list[int] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)
    in_domain: list[float] = field(default_factory=list)
    sft_gold: float | None = None
    finished: bool = False

    @property
    def family(self) -> str:
        """Method and update rule: ``dpo frozen``, ``dpo soft a=0.1 t=1``, ``ipo hard t=64``."""
        if self.tau is None:
            return f"{self.method} frozen"
        if self.alpha == 1.0:
            return f"{self.method} hard t={self.tau}"
        return f"{self.method} soft a={self.alpha:g} t={self.tau}"

    @property
    def frozen(self) -> bool:
        return self.tau is None

    @property
    def best(self) -> int:
        return int(np.argmax(self.gold))


@dataclass
class Fit:
    """Least-squares fit of gain(d) = d * (a - b log d) to a family's pooled points."""

    a: float
    b: float
    rmse: float
    points: int
    d_max: float  # largest observed d

    @property
    def d_star(self) -> float:
        """The fitted curve's maximiser exp(a/b - 1); inf when it has none (b <= 0: still rising)."""
        if self.b <= 0:
            return math.inf
        exponent = self.a / self.b - 1.0
        return math.exp(exponent) if exponent < 700 else math.inf

    @property
    def extrapolated(self) -> bool:
        """The maximiser lies beyond the largest KL this family reached: it was still rising there."""
        return self.d_star > self.d_max

    @property
    def d_peak(self) -> float:
        """Where the fitted gold is highest within the family's observed range."""
        return min(self.d_star, self.d_max)

    @property
    def gain_peak(self) -> float:
        return float(self.predict(np.array([self.d_peak]))[0])

    @property
    def kl_back_to_sft(self) -> float:
        """The KL where the fitted gold falls back to the SFT model's (d = exp(a/b)); inf when it never does."""
        if self.b <= 0 or self.a <= 0 or self.a / self.b > 350:
            return math.inf
        return math.exp(2 * self.a / self.b)

    def predict(self, d: np.ndarray) -> np.ndarray:
        d = np.asarray(d, dtype=float)
        logd = np.log(np.where(d > 0, d, 1.0))
        return d * (self.a - self.b * logd)


def fit_gold_vs_kl(kl: Sequence[float], gain: Sequence[float]) -> Fit:
    """Fit gain = d (a - b log d), d = sqrt(max(KL, 0)): linear least squares in (a, b)."""
    d = np.sqrt(np.clip(np.asarray(kl, dtype=float), 0.0, None))
    y = np.asarray(gain, dtype=float)
    if len(d) < 2 or np.count_nonzero(d > 0) < 2:
        raise DataError(f"a fit needs at least 2 points with KL > 0, got {np.count_nonzero(d > 0)}")
    logd = np.log(np.where(d > 0, d, 1.0))
    x = np.stack([d, -d * logd], axis=1)
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    rmse = float(np.sqrt(np.mean((x @ np.array([a, b]) - y) ** 2)))
    return Fit(float(a), float(b), rmse, len(d), float(d.max()))


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
        run = Run(path, str(m["name"]), str(r.get("name", "none")), r.get("alpha"), r.get("tau"), float(m["beta"]),
                  int(cfg.get("trainer", {}).get("seed", 0)))
    except (KeyError, TypeError) as e:
        return f"config.yaml lacks {e}"
    total = _total_steps(cfg, rows)
    for row in rows:
        kl, gold = _num(row.get("eval/kl_sft")), _num(row.get("eval/gold_reward"))
        if math.isfinite(kl) and math.isfinite(gold):
            run.steps.append(int(row["step"]))
            run.kl.append(kl)
            run.gold.append(gold)
            run.in_domain.append(_num(row.get("eval/in_domain_rate")))
        if run.sft_gold is None and math.isfinite(_num(row.get("eval/sft_gold_reward"))):
            run.sft_gold = float(row["eval/sft_gold_reward"])
    if not run.steps:
        return "no generation evaluations in metrics.jsonl (eval.generate=false, or not evaluated yet)"
    run.finished = total is not None and run.steps[-1] >= total
    return run


def _total_steps(cfg: dict, rows: list[dict]) -> int | None:
    from trustregion.cli import total_optimizer_steps
    from trustregion.errors import ConfigError

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
            raise DataError(f"{target}: no such file or directory; pass a sweep dir (outputs/multirun/<date>/<time>) or a glob")
        for m in matches:
            if not m.is_dir():
                continue
            for name in ("config.yaml", "metrics.jsonl"):
                for hit in m.rglob(name):
                    if ".hydra" not in hit.parts and "checkpoints" not in hit.parts and "wandb" not in hit.parts:
                        dirs.add(hit.parent)
    return sorted(dirs, key=lambda p: (len(p.parts), str(p)))


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}f}"


def baseline(runs: list[Run]) -> float:
    """The SFT model's gold reward: the mean of the runs' own measurements (all start from one SFT model)."""
    values = [r.sft_gold for r in runs if r.sft_gold is not None]
    return float(np.mean(values)) if values else 0.0


def family_fits(runs: list[Run], sft_gold: float) -> dict[str, Fit | str]:
    """A fit per family over all its runs' points (gain over SFT vs KL), or why there is none."""
    out: dict[str, Fit | str] = {}
    for fam in sorted({r.family for r in runs}):
        kl = [k for r in runs if r.family == fam for k in r.kl]
        gain = [g - sft_gold for r in runs if r.family == fam for g in r.gold]
        try:
            out[fam] = fit_gold_vs_kl(kl, gain)
        except DataError as e:
            out[fam] = str(e)
    return out


KL_LEVELS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)


def gold_at_kl(run: Run, level: float, sft_gold: float) -> float | None:
    """Gold where the run first reaches KL ``level``, interpolated linearly along its path from SFT (KL 0); None if never."""
    kl, gold = [0.0] + run.kl, [sft_gold] + run.gold
    for i in range(1, len(kl)):
        if kl[i] >= level:
            lo, hi = kl[i - 1], kl[i]
            w = 1.0 if hi <= lo else (level - lo) / (hi - lo)
            w = min(1.0, max(0.0, w))
            return gold[i - 1] + w * (gold[i] - gold[i - 1])
    return None


def matched_kl_table(runs: list[Run], families: Sequence[str], sft_gold: float) -> list[str]:
    """Markdown rows: each family's gold at fixed KLs (mean over its runs that got there), without a fitted form."""
    top = max(k for r in runs for k in r.kl)
    levels = [x for x in KL_LEVELS if x <= top] or [top]
    lines = ["| family | " + " | ".join(f"KL {x:g}" for x in levels) + " |", "|---|" + "---|" * len(levels)]
    for fam in families:
        cells = []
        for level in levels:
            values = [v for r in runs if r.family == fam if (v := gold_at_kl(r, level, sft_gold)) is not None]
            cells.append(_fmt(float(np.mean(values))) if values else "-")
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return lines


def markdown(runs: list[Run], fits: dict[str, Fit | str], sft_gold: float, skipped: list[tuple[Path, str]],
             root: Path) -> str:
    """report.md: the family comparison, then one row per run, then the skipped dirs."""
    lines = ["# Sweep report", "", f"{len(runs)} runs from `{root}`; SFT gold reward {_fmt(sft_gold)} "
             "(measured by each run on the same prompts, averaged).", ""]
    lines += ["## Families at matched KL", "",
              "Fit of gold - gold_SFT = d (a - b log d), d = sqrt(KL to SFT), over every evaluation of every run "
              "of the family (all beta, all seeds). Peak gold = gold_SFT + fitted peak gain; "
              "`*` = the fit still rises at the largest KL the family reached (peak and KL given there). "
              "Matched KL: each family's fitted gold at the KL where its method's frozen baseline peaks; "
              "KL back at SFT gold: where the fit falls to the SFT model's gold (exp(2a/b)).", "",
              "| family | runs | points | fitted peak gold | KL at peak | gold at frozen's peak KL | "
              "KL back at SFT gold | fit RMSE | best observed gold | KL at best |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for fam, fit in fits.items():
        members = [r for r in runs if r.family == fam]
        best = max(members, key=lambda r: r.gold[r.best])
        n = len(members)
        observed = f"{_fmt(best.gold[best.best])} | {_fmt(best.kl[best.best], 2)}"
        if not isinstance(fit, Fit):
            lines.append(f"| {fam} | {n} | - | no fit ({fit}) | - | - | - | - | {observed} |")
            continue
        star = "*" if fit.extrapolated else ""
        frozen = fits.get(f"{members[0].method} frozen")
        matched = "-"
        if isinstance(frozen, Fit):
            d = frozen.d_peak
            matched = _fmt(sft_gold + float(fit.predict(np.array([d]))[0])) + (" (extrap.)" if d > fit.d_max else "")
        back = fit.kl_back_to_sft
        back_text = "never" if math.isinf(back) else _fmt(back, 1) + (" (extrap.)" if back > fit.d_max ** 2 else "")
        lines.append(f"| {fam} | {n} | {fit.points} | {_fmt(sft_gold + fit.gain_peak)}{star} | {_fmt(fit.d_peak ** 2, 2)}{star} | "
                     f"{matched} | {back_text} | {_fmt(fit.rmse)} | {observed} |")
    lines += ["", "## Gold at matched KL, read off the curves", "",
              "Each run's gold where its path from SFT first reaches the KL, interpolated between evaluations "
              "(mean over the family's runs; `-`: no run got that far). No functional form assumed.", ""]
    lines += matched_kl_table(runs, list(fits), sft_gold)
    lines += ["", "## Runs", "",
              "| run | method | ref_update | alpha | tau | beta | seed | evals | final gold | best gold (step) | "
              "KL at best | final KL | final in-domain | done |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r.method, not r.frozen, r.family, r.beta, r.seed)):
        b = r.best
        alpha = "-" if r.tau is None else f"{r.alpha:g}"
        tau = "-" if r.tau is None else str(r.tau)
        lines.append(f"| {_rel(r.path, root)} | {r.method} | {r.rule} | {alpha} | {tau} | {r.beta:g} | {r.seed} | "
                     f"{len(r.steps)} | {_fmt(r.gold[-1])} | {_fmt(r.gold[b])} ({r.steps[b]}) | {_fmt(r.kl[b], 2)} | "
                     f"{_fmt(r.kl[-1], 2)} | {_fmt(r.in_domain[-1], 2)} | {'yes' if r.finished else 'partial'} |")
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- `{_rel(p, root)}`: {why}" for p, why in skipped]
    lines += ["", "Plots: `gold_vs_kl.png` (one curve per run), `fits.png` (pooled points and fitted curves).", ""]
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve())) or "."
    except ValueError:
        return str(path)


def _colors(families: list[str]) -> dict[str, str]:
    out, i = {}, 0
    for fam in families:
        if fam.endswith("frozen"):
            out[fam] = COLORS["frozen"]
        else:
            out[fam] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def plot_runs(runs: list[Run], sft_gold: float, path: Path) -> None:
    """One panel per method; a line per run (gold vs KL over its evaluations), coloured by update rule."""
    from matplotlib.figure import Figure

    methods = sorted({r.method for r in runs})
    fig = Figure(figsize=(5 * len(methods), 4), dpi=100)
    for i, method in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        mine = [r for r in runs if r.method == method]
        colors = _colors(sorted({r.family for r in mine}, key=lambda f: (not f.endswith("frozen"), f)))
        seen = set()
        for r in mine:
            label = None if r.family in seen else r.family.removeprefix(method + " ")
            seen.add(r.family)
            ax.plot([0.0] + r.kl, [sft_gold] + r.gold, "o-", ms=2.5, lw=1.2 if not r.frozen else 2.0,
                    color=colors[r.family], alpha=0.8, label=label)
        _gold_vs_kl_axes(ax, method.upper())
    fig.tight_layout()
    fig.savefig(path)


def _gold_vs_kl_axes(ax, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("KL(policy || SFT)")
    ax.set_ylabel("gold reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_fits(runs: list[Run], fits: dict[str, Fit | str], sft_gold: float, path: Path) -> None:
    """One panel per method: each family's pooled points and its fitted curve, gold vs KL to SFT."""
    from matplotlib.figure import Figure

    methods = sorted({r.method for r in runs})
    fig = Figure(figsize=(5 * len(methods), 4), dpi=100)
    for i, method in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        fams = sorted({r.family for r in runs if r.method == method}, key=lambda f: (not f.endswith("frozen"), f))
        colors = _colors(fams)
        for fam in fams:
            kl = [k for r in runs if r.family == fam for k in r.kl]
            gold = [g for r in runs if r.family == fam for g in r.gold]
            ax.scatter(kl, gold, s=8, color=colors[fam], alpha=0.5)
            fit = fits.get(fam)
            label = fam.removeprefix(method + " ")
            if isinstance(fit, Fit):
                d = np.linspace(0.0, max(fit.d_max, 1e-6), 200)
                ax.plot(d ** 2, sft_gold + fit.predict(d), color=colors[fam], lw=2,
                        label=f"{label} (peak {sft_gold + fit.gain_peak:.2f} @ KL {fit.d_peak ** 2:.1f})")
            else:
                ax.plot([], [], color=colors[fam], label=f"{label} (no fit)")
        ax.axhline(sft_gold, color="grey", lw=0.8, ls="--")
        _gold_vs_kl_axes(ax, f"{method.upper()}: fitted d (a - b log d)")
    fig.tight_layout()
    fig.savefig(path)


def build_report(targets: Sequence[str], out: Path | None = None) -> tuple[Path, list[Run], list[tuple[Path, str]]]:
    """Read the runs under ``targets``; write report.md and the PNGs into ``out`` (default: the first target)."""
    dirs = find_run_dirs(targets)
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    for d in dirs:
        run = load_run(d)
        (runs.append(run) if isinstance(run, Run) else skipped.append((d, run)))
    if out is None:
        first = Path(targets[0])
        out = first if first.is_dir() else Path(".")
    root = out
    if not runs:
        why = "; ".join(f"{_rel(p, root)}: {w}" for p, w in skipped) or "no run dirs found"
        raise DataError(f"no run with generation evaluations under {', '.join(targets)} ({why})")
    out.mkdir(parents=True, exist_ok=True)
    sft_gold = baseline(runs)
    fits = family_fits(runs, sft_gold)
    (out / "report.md").write_text(markdown(runs, fits, sft_gold, skipped, root), encoding="utf-8")
    plot_runs(runs, sft_gold, out / "gold_vs_kl.png")
    plot_fits(runs, fits, sft_gold, out / "fits.png")
    return out / "report.md", runs, skipped


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trustregion-report", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="+", help="a sweep dir (outputs/multirun/<date>/<time>) or globs of run dirs")
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go (default: the sweep dir)")
    args = parser.parse_args(argv)
    try:
        path, runs, skipped = build_report(args.targets, args.out)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for p, why in skipped:
        print(f"skipped {p}: {why}", file=sys.stderr)
    print(f"{len(runs)} runs -> {path}")


if __name__ == "__main__":
    main()
