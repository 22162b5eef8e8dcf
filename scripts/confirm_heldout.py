"""Held-out confirmation of a search: each candidate against a reference candidate and the frozen reference, paired
by seed, on seeds the search never saw (scripts/search_toy.sh runs it).

    python scripts/confirm_heldout.py <dir of candidates> --reference grid_best --out <dir>

Each subdirectory of the candidates dir is one candidate (its runs differ only in seed). Per candidate: peak gold and
the KL there, mean with a 95 % t-interval over seeds; peak-gold difference against the reference and against frozen,
paired by seed; gold at the frozen runs' mean peak KL against frozen. Writes heldout.md and heldout.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trustregion.report.runs import Run, find_run_dirs, gold_at_kl, load_run
from trustregion.report.statistics import Interval, t_interval


def candidates(root: Path) -> dict[str, dict[int, Run]]:
    """Every candidate's runs by seed."""
    out: dict[str, dict[int, Run]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        runs = [load_run(d) for d in find_run_dirs([str(sub)])]
        out[sub.name] = {r.seed: r for r in runs if isinstance(r, Run)}
    return out


def paired(a: dict[int, Run], b: dict[int, Run], reading) -> Interval:
    diffs = []
    for seed in sorted(set(a) & set(b)):
        x, y = reading(a[seed]), reading(b[seed])
        if x is not None and y is not None:
            diffs.append(x - y)
    return t_interval(diffs)


def rule_of(runs: dict[int, Run]) -> str:
    return next(iter(runs.values())).family.rule if runs else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--reference", default="grid_best", help="the candidate every other is compared with")
    parser.add_argument("--frozen", default="frozen")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    found = candidates(args.root)
    ref, frozen = found.get(args.reference, {}), found.get(args.frozen, {})
    matched = float(np.mean([r.peak_kl for r in frozen.values()])) if frozen else None
    rows, data = [], {}
    header = (
        f"| candidate | rule | seeds | peak gold | KL at peak | Δ peak vs {args.reference} | Δ peak vs frozen | "
        f"Δ gold at KL {matched if matched is None else round(matched, 2)} vs frozen |"
    )
    rows += [header, "|" + "---|" * 8]
    for name, runs in found.items():
        peak = t_interval([r.peak_gold for r in runs.values()])
        peak_kl = t_interval([r.peak_kl for r in runs.values()])
        vs_ref = paired(runs, ref, lambda r: r.peak_gold) if name != args.reference else None
        vs_frozen = paired(runs, frozen, lambda r: r.peak_gold) if name != args.frozen else None
        at_kl = (
            paired(runs, frozen, lambda r: gold_at_kl(r, matched))
            if matched is not None and name != args.frozen
            else None
        )

        def cell(iv: Interval | None) -> str:
            return "–" if iv is None else f"{iv.text()}: {iv.verdict()}"

        seeds = ",".join(str(s) for s in sorted(runs))
        rows.append(
            f"| {name} | {rule_of(runs)} | {seeds} | {peak.text()} | {peak_kl.text(2)} | {cell(vs_ref)} | "
            f"{cell(vs_frozen)} | {cell(at_kl)} |"
        )
        data[name] = {
            "rule": rule_of(runs),
            "seeds": sorted(runs),
            "peak_gold": {s: r.peak_gold for s, r in runs.items()},
            "peak_kl": {s: r.peak_kl for s, r in runs.items()},
            **{
                k: None if iv is None else {"mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n}
                for k, iv in (("vs_reference", vs_ref), ("vs_frozen", vs_frozen), ("at_kl_vs_frozen", at_kl))
            },
        }
    text = "\n".join(rows)
    print(text)
    if args.out is not None:
        (args.out / "heldout.md").write_text(text + "\n", encoding="utf-8")
        (args.out / "heldout.json").write_text(json.dumps({"matched_kl": matched, **data}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
