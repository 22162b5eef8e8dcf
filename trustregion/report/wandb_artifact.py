"""The report as a wandb artifact (offline unless asked), with its main table and figures logged beside it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustregion.report.rendering import FIGURES
from trustregion.report.runs import PREFERENCE
from trustregion.report.sections import final
from trustregion.report.study import Study


def _table(study: Study) -> tuple[list[str], list[list[Any]]]:
    """The paired comparisons (gold), else each family's held-out preference metrics: columns and rows."""
    if study.gold:
        columns = ["family", "seeds", "matched_kl", "delta_gold", "lo", "hi", "verdict"]
        rows = [
            [c.family.name, c.at_kl.n, c.kl, c.at_kl.mean, c.at_kl.lo, c.at_kl.hi, c.at_kl.verdict()]
            for c in study.comparisons()
        ]
        return columns, rows
    keys = list(PREFERENCE)
    rows = [
        [fam.name, len(members), *(study.over_seeds(fam, final(k)).mean for k in keys)]
        for fam, members in study.families.items()
    ]
    return ["family", "seeds", *(k.removeprefix("eval/") for k in keys)], rows


def log_to_wandb(out: Path, study: Study, project: str, files: Sequence[str] | None = None) -> Any:
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
        columns, rows = _table(study)
        table = wandb.Table(columns=columns, data=rows)
        images = {f"report/{Path(f).stem}": wandb.Image(str(out / f)) for f in files if f.endswith(".png")}
        run.log({"report/paired" if study.gold else "report/preference": table, **images})
        artifact = wandb.Artifact(name=wandb.util.make_artifact_name_safe(name), type="sweep-report")
        for file in files:
            artifact.add_file(str(out / file))
        run.log_artifact(artifact)
    finally:
        run.finish()
    return artifact
