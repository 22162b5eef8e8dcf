"""The report's figures: gold vs KL per family (mean and band over seeds), every run's path, the paired differences
over (α, τ) as heat maps, and two runs side by side."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

from trustregion.report.families import Family
from trustregion.report.runs import Run, gold_at_kl, reach
from trustregion.report.statistics import FEW_SEEDS, t_interval
from trustregion.report.study import Comparison, Study

FROZEN_COLOR = "#222222"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


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


KL_AXIS = "KL(policy ‖ SFT) per response (nats, sampled)"
GOLD_AXIS = "gold reward (mean per response)"


def _gold_vs_kl_axes(ax, method: str, beta: float) -> None:
    ax.set_title(f"{method.upper()}, β={beta:g}")
    ax.set_xlabel(KL_AXIS)
    ax.set_ylabel(GOLD_AXIS)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _fit_to_curves(ax, lows: list[float], highs: list[float]) -> None:
    """The y range of the curves themselves (with a margin): a wide band is clipped, not allowed to flatten them."""
    lo, hi = min(lows), max(highs)
    pad = 0.08 * (hi - lo) or 0.1
    ax.set_ylim(lo - pad, hi + pad)


def plot_bands(study: Study, path: Path) -> None:
    """Gold vs KL per family: the mean over seeds on KLs every seed reached, with its 95 % band from ``FEW_SEEDS``
    seeds on, and each seed's own path (thin) below that, where a t-band would be wider than the curves."""
    panels = _panels(study)
    fig, axes = _figure(len(panels))
    for ax, (method, beta) in zip(axes, panels):
        fams = [f for f in study.families if (f.method, f.beta) == (method, beta)]
        colors, lows, highs = _colors(fams), [], []
        for fam in fams:
            members = study.families[fam]
            top = min(reach(r) for r in members)
            grid = np.linspace(0.0, top, 40)
            ivs = [t_interval([gold_at_kl(r, x) for r in members]) for x in grid]
            mean = np.array([iv.mean for iv in ivs])
            width = 2.2 if fam.frozen else 1.4
            label = f"{fam.legend} (n={len(members)})"
            ax.plot(grid, mean, fam.style, color=colors[fam], lw=width, label=label)
            lows.append(float(np.nanmin(mean)))
            highs.append(float(np.nanmax(mean)))
            if len(members) >= FEW_SEEDS:
                ax.fill_between(grid, [iv.lo for iv in ivs], [iv.hi for iv in ivs], color=colors[fam], alpha=0.12)
            else:
                for r in members:
                    kl, gold = r.path_from_sft()
                    ax.plot(kl, gold, fam.style, color=colors[fam], lw=0.7, alpha=0.45)
                    lows.append(min(gold))
                    highs.append(max(gold))
        _gold_vs_kl_axes(ax, method, beta)
        _fit_to_curves(ax, lows, highs)
    note = f"mean over seeds; shaded: 95 % t-band (n ≥ {FEW_SEEDS}); thin lines: each seed's run (n < {FEW_SEEDS})"
    fig.text(0.01, 0.005, note, fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)


def _heatmap_panels(study: Study) -> list[list[Comparison]]:
    """The fixed (α, τ) rules' comparisons, one list per panel (families of the same settings but the rule), where
    the grid has at least two values of τ: a single column is a table's job (report.md), not a map's."""
    panels: dict[str, list[Comparison]] = {}
    for c in study.comparisons():
        if c.family.fixed:  # the (alpha, tau) grid; other rules are off it
            panels.setdefault(c.family.grid, []).append(c)
    grids = [mine for mine in panels.values() if len({c.family.tau for c in mine}) >= 2]
    return sorted(
        grids,
        key=lambda mine: (mine[0].family.method, mine[0].family.beta, mine[0].family.lora, mine[0].family.split),
    )


def _panel_title(family: Family) -> str:
    """Method, β, the tuning and the settings that split its label (the panel's other families share them)."""
    extra = " ".join(p for p in (family.lora, family.split) if p)
    return f"{family.method.upper()} β={family.beta:g}{' ' + extra if extra else ''}"


def plot_heatmap(study: Study, path: Path, peak: bool = False) -> bool:
    """Paired TR − frozen (mean over seeds) over α (rows) and τ (columns), one panel per method and β (and any other
    setting but the rule): gold at the matched KL, or (``peak``) peak gold. Writes nothing and returns False without
    a fixed rule to pair."""
    panels = _heatmap_panels(study)
    if not panels:
        return False
    pick = (lambda c: c.peak) if peak else (lambda c: c.at_kl)
    fig, axes = _figure(len(panels), height=4.0)
    comps = [c for mine in panels for c in mine]
    span = max([abs(pick(c).mean) for c in comps if math.isfinite(pick(c).mean)] or [1.0]) or 1.0
    for ax, mine in zip(axes, panels):
        alphas = sorted({c.family.alpha for c in mine})
        taus = sorted({c.family.tau for c in mine})
        values = np.full((len(alphas), len(taus)), np.nan)
        for c in mine:
            i, j = alphas.index(c.family.alpha), taus.index(c.family.tau)
            values[i, j] = pick(c).mean
            mark = "*" if pick(c).verdict() in ("better", "worse") else ""
            dark = abs(pick(c).mean) > 0.6 * span  # white on the saturated cells, black on the pale ones
            text = f"{pick(c).mean:+.2f}".replace("-", "−") + mark
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        cmap = matplotlib.colormaps["RdBu"].copy()
        cmap.set_bad("#dddddd")  # a cell of the grid that was not run: grey, not white (which reads as 0)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-span, vmax=span, aspect="auto")
        ax.set_xticks(range(len(taus)), [str(t) for t in taus])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("τ (steps between updates)")
        ax.set_ylabel("α")
        what = "Δ peak gold" if peak else f"Δ gold at KL {mine[0].kl:.1f}"
        ax.set_title(f"{_panel_title(mine[0].family)}: {what}")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.text(0.01, 0.005, "TR − frozen, paired by seed; *: the 95 % interval excludes 0", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
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
                    label=fam.legend if i == 0 else None,
                )
        _gold_vs_kl_axes(ax, method, beta)
    fig.tight_layout()
    fig.savefig(path)


def plot_pair(frozen: Run, tr: Run, path: Path) -> None:
    """Two runs' gold vs KL paths, their peaks starred: a frozen and a moving reference."""
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
    ax.set_title(f"{frozen.family.name} vs {tr.family.rule}, seed {frozen.seed}", fontsize=9)
    ax.set_xlabel(KL_AXIS)
    ax.set_ylabel(GOLD_AXIS)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
