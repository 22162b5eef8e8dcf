"""The sweep report: read the runs under some dirs, group them into families, write report.md, report.json and the
figures, and log them to wandb when asked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from trustregion.report.plots import plot_bands, plot_heatmap, plot_runs
from trustregion.report.rendering import markdown
from trustregion.report.runs import load_runs
from trustregion.report.sections import gold_document, preference_document
from trustregion.report.study import Study


def _figures(study: Study, out: Path) -> list[str]:
    """Draw the gold report's figures into ``out``; the names of those written (no heat map without a pair)."""
    plot_bands(study, out / "bands.png")
    written = ["bands.png"]
    written += [
        f for f, peak in (("heatmap.png", False), ("heatmap_peak.png", True)) if plot_heatmap(study, out / f, peak)
    ]
    plot_runs(study, out / "gold_vs_kl.png")
    return [*written, "gold_vs_kl.png"]


def build_report(
    targets: Sequence[str], out: Path | None = None, wandb_project: str | None = None
) -> tuple[Path, Study, list[tuple[Path, str]]]:
    """Read the runs under ``targets``; write report.md, report.json and (with gold reward) the PNGs into ``out``
    (default: the first target); log them to wandb when ``wandb_project`` is given. Returns report.md's path, the
    study and the skipped dirs with why."""
    runs, skipped = load_runs(targets)
    if out is None:
        first = Path(targets[0])
        out = first if first.is_dir() else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    study = Study.of(runs)
    written = _figures(study, out) if study.gold else []
    document = gold_document(study, out) if study.gold else preference_document(study, out)
    (out / "report.md").write_text(markdown(document, skipped, out, written), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(document.numbers(), indent=1, default=str), encoding="utf-8")
    if wandb_project:
        from trustregion.report.wandb_artifact import log_to_wandb

        log_to_wandb(out, study, wandb_project, ["report.md", "report.json", *written])
    return out / "report.md", study, skipped
