"""Two runs side by side, a frozen and a moving reference (``make train``): gold at matched KLs, peak gold and the KL
there (compare.md and compare.png); without a gold reward, as the sweep report does, the held-out preference metrics
of each run's final evaluation (compare.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trustregion.errors import DataError
from trustregion.report.plots import plot_pair
from trustregion.report.rendering import Column, Table, fmt
from trustregion.report.runs import NO_GENERATION, PREFERENCE, Run, gold_at_kl, load_run, reach
from trustregion.report.sections import KL_LEVELS


@dataclass(frozen=True)
class Reading:
    """A row of the comparison: its label and how to read it off a run."""

    label: str
    read: Callable[[Run], str]


def _readings(frozen: Run, tr: Run) -> list[Reading]:
    """Gold at the KLs both runs reached and at the frozen run's peak, then peak gold, its KL and the final gold."""
    top = min(reach(frozen), reach(tr))
    levels = [x for x in (1.0, *KL_LEVELS, 15.0, 20.0) if x <= top] + [frozen.peak_kl]
    rows = [
        Reading(
            f"gold at KL {x:.2f} (frozen's peak)" if x == frozen.peak_kl else f"gold at KL {x:g}",
            lambda r, x=x: fmt(gold_at_kl(r, x)),
        )
        for x in sorted(set(levels))
    ]
    return rows + [
        Reading("peak gold", lambda r: fmt(r.peak_gold)),
        Reading("KL at the peak", lambda r: fmt(r.peak_kl, 2)),
        Reading("final gold (KL)", lambda r: f"{fmt(r.gold[-1])} ({fmt(r.kl[-1], 1)})"),
    ]


def _run(path: Path) -> Run:
    run = load_run(Path(path))
    if not isinstance(run, Run):
        raise DataError(f"{path}: {run}")
    return run


def _preference_readings(frozen: Run, tr: Run) -> list[Reading]:
    """The held-out preference metrics both runs logged at their final evaluation."""
    keys = [k for k in PREFERENCE if k in frozen.preference and k in tr.preference]
    return [Reading(PREFERENCE[k], lambda r, k=k: fmt(r.preference[k])) for k in keys]


def compare(frozen_dir: Path, tr_dir: Path, out: Path) -> str:
    """Two runs side by side (a frozen and a moving reference): gold at matched KLs, peak gold, KL at the peak
    (``compare.png`` and ``compare.md`` in ``out``); the final held-out preference metrics where a run has no gold
    (``compare.md``). Returns the table."""
    frozen, tr = _run(frozen_dir), _run(tr_dir)
    if not (frozen.has_gold and tr.has_gold):
        return _compare_preferences(frozen, tr, out)
    table = Table(
        [
            Column("", lambda row: row.label),
            Column(f"frozen ({frozen.family.name})", lambda row: row.read(frozen)),
            Column(f"Trust-Region ({tr.family.name})", lambda row: row.read(tr)),
        ],
        _readings(frozen, tr),
    )
    note = (
        f"One seed ({frozen.seed}): an anecdote, not a finding; `make sweep-toy` gives intervals over seeds. "
        f"SFT gold {fmt(frozen.sft_gold)}; one evaluation's standard error about {fmt(frozen.gold_sem[frozen.best])}."
    )
    text = "\n".join(table.markdown()) + "\n\n" + note
    out.mkdir(parents=True, exist_ok=True)
    plot_pair(frozen, tr, out / "compare.png")
    (out / "compare.md").write_text(text + "\n", encoding="utf-8")
    return text


def _compare_preferences(frozen: Run, tr: Run, out: Path) -> str:
    """The two runs' final held-out preference metrics side by side, in ``compare.md`` (no figure: one value each)."""
    rows = _preference_readings(frozen, tr)
    if not rows:
        raise DataError(f"{tr.path}: {NO_GENERATION}, and no held-out preference evaluation to compare either")
    table = Table(
        [
            Column("", lambda row: row.label),
            Column(f"frozen ({frozen.family.name}, step {frozen.preference_step})", lambda row: row.read(frozen)),
            Column(f"Trust-Region ({tr.family.name}, step {tr.preference_step})", lambda row: row.read(tr)),
        ],
        rows,
    )
    why = NO_GENERATION if not frozen.has_gold else f"{tr.path}: {NO_GENERATION}"
    note = (
        f"No gold reward ({why}): the held-out preference metrics of each run's final evaluation, as the sweep "
        f"report gives them. One seed ({frozen.seed}): an anecdote, not a finding."
    )
    text = "\n".join(table.markdown()) + "\n\n" + note
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text + "\n", encoding="utf-8")
    return text
