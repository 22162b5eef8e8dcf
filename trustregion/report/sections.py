"""What the two reports show, as data for the one renderer: the gold report (gold reward at matched KL, peak gold)
and, for sweeps without a gold reward, the preference-only report (held-out preference metrics at each run's final
evaluation). Each table is a list of ``Column``s; a column is declared once for report.md and report.json alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from trustregion.report.families import Family
from trustregion.report.rendering import Column, Document, Section, Table, fmt, rel
from trustregion.report.runs import PREFERENCE, Run, gold_at_kl
from trustregion.report.statistics import CONFIDENCE, FEW_SEEDS, POWER, Interval
from trustregion.report.study import Comparison, Study

R = TypeVar("R")
KL_LEVELS = (2.0, 5.0, 10.0)
PAIRED_PREFERENCE = ("eval/rewards_sft/accuracies", "eval/rewards_sft/margins")
FAMILY = Column("family", lambda f: f.name)
PAIRED_TITLE = "Trust-Region vs frozen, paired by seed"
NO_MOVING = "No Trust-Region family: every run has ref_update=none, so there is nothing to compare."


def final(key: str) -> Callable[[Run], float | None]:
    """A run's ``key`` at its final held-out evaluation (None where it has none)."""
    return lambda r: r.preference.get(key)


def _identity_fields(family: Family) -> dict:
    """What report.json says of a family beside its table's columns."""
    return {
        "key": family.key,
        "method": family.method,
        "beta": family.beta,
        "alpha": family.alpha,
        "tau": family.tau,
        "rule": family.rule,
    }


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


def _grouping_lines(study: Study, root: Path) -> list[str]:
    """A line naming the duplicate runs counted once, and one naming the labels split and the keys that split them."""
    lines = []
    if study.grouping.duplicates:
        pairs = [
            f"`{rel(kept.path, root)}` (not {', '.join(f'`{rel(r.path, root)}`' for r in dropped)})"
            for kept, dropped in study.grouping.duplicates
        ]
        lines += [
            "",
            "Duplicate runs (same family and seed), each counted once, the later finished: " + "; ".join(pairs),
        ]
    if study.grouping.splits:
        named = [f"`{label}` by {', '.join(f'`{k}`' for k in keys)}" for label, keys in study.grouping.splits]
        lines += ["", "Families that share a label, named apart by the settings that split them: " + "; ".join(named)]
    return lines


def _head(study: Study, root: Path) -> list[str]:
    seeds = sorted({r.seed for r in study.runs})
    counts = sorted({len(m) for m in study.families.values()})
    return [
        f"{len(study.runs)} runs in {len(study.families)} families from `{root}`; seeds {seeds} "
        f"({'/'.join(map(str, counts))} per family). {_setting(study)}",
        *_grouping_lines(study, root),
    ]


def _few(study: Study) -> str:
    few = min(len(m) for m in study.families.values()) < FEW_SEEDS
    return " **Some families have fewer than 3 seeds: read their verdicts as unknown.**" if few else ""


def _fields(study: Study, root: Path) -> dict:
    return {
        "no_baseline": study.no_baseline_line(),
        "duplicates": [
            {"kept": rel(kept.path, root), "dropped": [rel(r.path, root) for r in dropped]}
            for kept, dropped in study.grouping.duplicates
        ],
        "splits": {label: keys for label, keys in study.grouping.splits},
    }


def _paired_section(about: str, table: Table, study: Study) -> Section:
    why = study.no_baseline_line()
    return Section(PAIRED_TITLE, about, table, key="paired", empty=why or NO_MOVING, note=why)


def _runs_order(study: Study) -> list[Run]:
    return sorted(study.runs, key=lambda r: (r.family.sort_key(), r.seed))


def _done(r: Run) -> str:
    return "yes" if r.finished else "partial"


def detectable(header: str, read: Callable[[R], Interval], key: str) -> Column[R]:
    """The smallest paired effect the seeds of ``read``'s difference could detect (``Interval.detectable``)."""
    return Column(header, lambda row: read(row).detectable(), (key,))


# --- the gold report ------------------------------------------------------------------------------
def _gold_paired(study: Study) -> Table[Comparison]:
    return Table(
        [
            Column("family", lambda c: c.family.name),
            Column("seeds", lambda c: c.seeds, ("seeds",), show=lambda c, _: str(c.at_kl.n)),
            Column("matched KL", lambda c: c.kl, ("matched_kl",), digits=2),
            Column("Δ gold at matched KL", lambda c: c.at_kl, ("at_kl",)),
            Column("verdict", lambda c: c.at_kl.verdict(), ("at_kl_verdict",)),
            detectable("detectable Δ at KL", lambda c: c.at_kl, "at_kl_detectable"),
            Column("Δ peak gold", lambda c: c.peak, ("peak",)),
            Column("verdict", lambda c: c.peak.verdict(), ("peak_verdict",)),
            detectable("detectable Δ peak", lambda c: c.peak, "peak_detectable"),
        ],
        study.comparisons(),
        name=lambda c: c.family.name,
    )


def _best(study: Study) -> Table[dict]:
    def named(side: str) -> Callable[[dict, str], str]:
        return lambda b, name: f"{name}: {b[side + '_peak'].text()}"

    return Table(
        [
            Column("method", lambda b: b["method"], ("method",)),
            Column("best frozen (peak gold)", lambda b: b["frozen"].name, ("frozen",), show=named("frozen")),
            Column("best Trust-Region (peak gold)", lambda b: b["tr"].name, ("tr",), show=named("tr")),
            Column("Δ peak gold, paired", lambda b: b["diff"], ("diff",)),
            Column("verdict", lambda b: b["diff"].verdict(), ("verdict",)),
            detectable("detectable Δ", lambda b: b["diff"], "detectable"),
        ],
        study.best_per_method(),
    )


def _versus_fixed(study: Study) -> Table[dict]:
    def at_kl(v: dict, iv) -> str:
        return f"{iv.text()} (KL {'-' if v['kl'] is None else format(v['kl'], '.2f')})"

    return Table(
        [
            Column("rule", lambda v: v["family"].name),
            Column(
                "best fixed rule",
                lambda v: v["best_fixed"].name,
                ("best_fixed",),
                show=lambda v, _: v["best_fixed"].rule,
            ),
            Column("seeds", lambda v: v["peak"].n),
            Column("Δ gold at matched KL", lambda v: v["at_kl"], ("at_kl",), show=at_kl),
            Column("verdict", lambda v: v["at_kl"].verdict(), ("at_kl_verdict",)),
            Column("Δ peak gold", lambda v: v["peak"], ("peak",)),
            Column("verdict", lambda v: v["peak"].verdict(), ("peak_verdict",)),
            detectable("detectable Δ peak", lambda v: v["peak"], "peak_detectable"),
        ],
        study.versus_best_fixed(),
        name=lambda v: v["family"].name,
        about=lambda v: {"matched_kl": v["kl"]},
    )


def _gold_at(study: Study, level: float) -> Column[Family]:
    def show(fam: Family, iv) -> str:
        n_all = len(study.families[fam])
        return iv.text() + (f" ({iv.n}/{n_all} reached)" if 0 < iv.n < n_all else "")

    reading = lambda f: study.over_seeds(f, lambda r: gold_at_kl(r, level))
    return Column(f"gold at KL {level:g}", reading, ("gold_at_kl", f"{level:g}"), show=show)


def _gold_families(study: Study) -> Table[Family]:
    peak = lambda f: study.over_seeds(f, lambda r: r.peak_gold)
    return Table(
        [
            FAMILY,
            Column("seeds", lambda f: [r.seed for r in study.families[f]], ("seeds",), show=lambda f, s: str(len(s))),
            *(_gold_at(study, level) for level in KL_LEVELS),
            Column("peak gold", peak, ("peak_gold",)),
            Column("KL at peak", lambda f: study.over_seeds(f, lambda r: r.peak_kl), ("peak_kl",), digits=2),
            Column("eval SE", study.eval_noise, ("eval_se",)),
            Column("seed SD of peak", lambda f: peak(f).sd),
        ],
        list(study.families),
        name=lambda f: f.name,
        about=_identity_fields,
    )


def _gold_runs(study: Study, root: Path) -> Table[Run]:
    return Table(
        [
            Column("run", lambda r: rel(r.path, root)),
            Column("family", lambda r: r.family.name),
            Column("seed", lambda r: r.seed),
            Column("evals", lambda r: len(r.steps)),
            Column("final gold", lambda r: r.gold[-1]),
            Column("peak gold (step)", lambda r: f"{fmt(r.peak_gold)} ({r.steps[r.best]})"),
            Column("KL at peak", lambda r: r.peak_kl, digits=2),
            Column("final KL", lambda r: r.kl[-1], digits=2),
            Column("final in-domain", lambda r: r.in_domain[-1], digits=2),
            Column("done", _done),
        ],
        _runs_order(study),
    )


GOLD_READING = (
    "Gold at a KL is read off each run's evaluations ordered by KL (linear between them; KL 0 is the step-0 "
    "evaluation). Peak gold is the best evaluation of each run; as a maximum over noisy "
    "evaluations it is biased upward, alike for every family."
)
GOLD_PAIRED = (
    "TR − frozen on the same seed (same training pairs, same evaluation prompts and sampling seed), "
    "same settings but the update rule. Matched KL: where the frozen runs peak, on average. Verdict: "
    "*better*/*worse* when the paired interval excludes 0, *identical* when every seed gives exactly 0 (no update "
    "before that point), else *within noise*. "
)
DETECTABLE = (
    f"*Detectable Δ*: the smallest paired effect these seeds would call better or worse with {POWER:.0%} power at "
    f"{CONFIDENCE:.0%} confidence, from the spread of their paired differences: "
    f"(t_{{{0.5 + CONFIDENCE / 2:g}, n−1}} + t_{{{POWER:g}, n−1}}) · sd / √n. A true effect that large would "
    "have shown most of the time; a *within noise* verdict says nothing of smaller ones. More seeds shrink it (as "
    "1/√n, and the t quantiles with n)."
)
BEST = (
    "The family with the highest mean peak gold among the frozen ones and among the Trust-Region ones "
    "(any β, α, τ), paired by seed. Picking the best of many families on the same seeds favours the side "
    "with more candidates: treat a *better* here as a lead to confirm on new seeds."
)
VERSUS_FIXED = (
    "Each adaptive or scheduled rule against the soft/hard family with the highest mean peak gold at its "
    "settings but the rule, chosen on these same seeds (which favours the fixed side)."
)
GOLD_FAMILIES = (
    "Mean [95 % interval] over seeds. *eval SE*: the standard error of one gold estimate from its prompts × "
    "samples (at the peak evaluation, averaged over seeds): sampling noise. *seed SD*: the spread of peak gold "
    "across seeds: training noise. When seed SD ≫ eval SE, more seeds help more than more samples."
)


def gold_document(study: Study, root: Path) -> Document:
    """The report of a sweep with gold reward: paired verdicts at matched KL and in peak gold, the best per method,
    the rules beyond a fixed (α, τ) against the best fixed one, each family over seeds, and every run."""
    intervals = (
        f"Intervals: mean over seeds ± a two-sided {CONFIDENCE:.0%} t-interval (n − 1 degrees of freedom). "
        "None with one seed; † marks fewer than 3 seeds, where the interval is very wide." + _few(study)
    )
    why = study.no_baseline_line()
    return Document(
        [*_head(study, root), "", intervals, GOLD_READING],
        [
            _paired_section(GOLD_PAIRED + DETECTABLE, _gold_paired(study), study),
            Section("Best per method, β tuned too", BEST, _best(study), key="best", empty=why or NO_MOVING),
            Section(
                "Rules beyond a fixed (α, τ) vs the best fixed rule, paired by seed",
                VERSUS_FIXED,
                _versus_fixed(study),
                key="versus_best_fixed",
            ),
            Section("Families", GOLD_FAMILIES, _gold_families(study), key="families"),
            Section("Runs", "", _gold_runs(study, root)),
        ],
        {"gold": True, **_fields(study, root)},
    )


# --- the preference-only report -------------------------------------------------------------------
def _final_steps(members: list[Run]) -> str:
    steps = sorted({r.preference_step for r in members if r.preference_step is not None})
    return "-" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"


def _preference_paired(study: Study) -> Table[Family]:
    columns: list[Column[Family]] = [
        FAMILY,
        Column(
            "seeds",
            lambda f: study.paired(f, final(PAIRED_PREFERENCE[0]))[1],
            ("seeds",),
            show=lambda f, s: str(len(s)),
        ),
    ]
    for key in PAIRED_PREFERENCE:
        short, reading = key.removeprefix("eval/"), (lambda f, k=key: study.paired(f, final(k))[0])
        columns += [
            Column(f"Δ {PREFERENCE[key]}", reading, (short,)),
            Column("verdict", lambda f, read=reading: read(f).direction(), (short, "verdict")),
            Column("detectable Δ", lambda f, read=reading: read(f).detectable(), (short, "detectable")),
        ]
    return Table(columns, study.pairable(), name=lambda f: f.name)


def _preference_families(study: Study) -> Table[Family]:
    members = lambda f: study.families[f]
    return Table(
        [
            FAMILY,
            Column("seeds", lambda f: [r.seed for r in members(f)], ("seeds",), show=lambda f, s: str(len(s))),
            Column(
                "final eval step",
                lambda f: [r.preference_step for r in members(f)],
                ("final_step",),
                show=lambda f, _: _final_steps(members(f)),
            ),
            *(
                Column(name, lambda f, k=key: study.over_seeds(f, final(k)), ("preference", key.removeprefix("eval/")))
                for key, name in PREFERENCE.items()
            ),
        ],
        list(study.families),
        name=lambda f: f.name,
        about=_identity_fields,
    )


def _preference_runs(study: Study, root: Path) -> Table[Run]:
    return Table(
        [
            Column("run", lambda r: rel(r.path, root)),
            Column("family", lambda r: r.family.name),
            Column("seed", lambda r: r.seed),
            Column("final eval step", lambda r: r.preference_step),
            Column("accuracy vs SFT", final("eval/rewards_sft/accuracies")),
            Column("margin vs SFT", final("eval/rewards_sft/margins")),
            Column("loss", final("eval/loss")),
            Column("done", _done),
        ],
        _runs_order(study),
    )


HELD_OUT = (
    "*vs SFT*: implicit rewards β·log π/π_SFT, one yardstick for every update rule; *vs reference*: against each "
    "run's own reference, which a moving reference shifts, so compare families on the vs-SFT columns. "
    "A KL to SFT needs samples from the policy (generation evaluations); *log π/π_ref per token* is the "
    "held-out responses' log-ratio to the current reference."
)
PREFERENCE_PAIRED = (
    "TR − frozen on the same seed, same settings but the update rule, at each run's final evaluation. Verdict: "
    "*higher*/*lower* when the paired interval excludes 0, *identical* when every seed gives exactly 0, else "
    "*within noise*. "
)


def preference_document(study: Study, root: Path) -> Document:
    """The report of a sweep without gold reward: each family's held-out preference metrics at the final
    evaluation, mean and interval over seeds, and the moving-reference families paired with frozen by seed."""
    intervals = (
        "Held-out preference metrics: the objective on the held-out pairs at each run's final evaluation "
        "(`eval/*` in metrics.jsonl). "
        f"Intervals: mean over seeds ± a two-sided {CONFIDENCE:.0%} t-interval (n − 1 degrees of freedom); none "
        "with one seed; † marks fewer than 3 seeds." + _few(study)
    )
    return Document(
        [*_head(study, root), "", study.no_gold_reason(), "", intervals, HELD_OUT],
        [
            _paired_section(PREFERENCE_PAIRED + DETECTABLE, _preference_paired(study), study),
            Section(
                "Families",
                "Mean [95 % interval] over seeds at the final evaluation.",
                _preference_families(study),
                key="families",
            ),  # fmt: skip
            Section("Runs", "", _preference_runs(study, root)),
        ],
        {"gold": False, "no_gold": study.no_gold_reason(), **_fields(study, root)},
    )
