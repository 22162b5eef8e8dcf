"""The report's entry point, configured with Hydra like the others (``conf/report.yaml``, schema ``ReportConfig``).

    python -m trustregion.report runs=[outputs/sweep_toy/<date>/<time>]      # sweep dirs, run dirs or globs
    python -m trustregion.report compare=[RUN_FROZEN,RUN_TR] out=DIR          # two runs side by side

It writes into ``out`` alone: no Hydra run dir, no ``.hydra/``, no log file (``conf/report.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig

from trustregion.cli.app import entry_point
from trustregion.errors import ConfigError
from trustregion.schema import setting


@dataclass
class ReportConfig:
    """A sweep report over ``runs``, or (``compare``) a frozen and a Trust-Region run side by side."""

    runs: Any = setting(meaning="sweep dirs, run dirs or globs: a list, or one", factory=list)
    compare: Any = setting(None, "[FROZEN_RUN, TR_RUN]: the two-run comparison instead of a sweep report")
    out: Optional[str] = setting(None, "where to write; null: the first of runs, or with compare the TR run's parent")
    wandb_project: Optional[str] = setting(
        "trustregion", "the sweep report as a wandb artifact (WANDB_MODE); null: none"
    )


def register_report() -> None:
    """Store the report's schema (called from the entry point, not at import)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_report", node=ReportConfig)


def _paths(value: Any) -> list[str]:
    """A list of paths from a list or from one path (None: none)."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple, ListConfig)) else [str(value)]


def run(cfg: DictConfig, _run_dir: Path | None = None) -> None:
    """The sweep report, or the two-run comparison; prints where it went (the comparison: its table)."""
    runs, pair = _paths(cfg.runs), _paths(cfg.compare)
    out = None if cfg.out is None else Path(cfg.out)
    if runs and pair:
        raise ConfigError("runs and compare were both given: runs=[...] for a sweep report, or compare=[FROZEN,TR]")
    if pair:
        if len(pair) != 2:
            raise ConfigError(f"compare takes two run dirs, frozen then Trust-Region: compare=[A,B], got {len(pair)}")
        from trustregion.report.compare import compare

        print(compare(Path(pair[0]), Path(pair[1]), out or Path(pair[1]).parent))
        return
    if not runs:
        raise ConfigError("nothing to report: set runs=[<sweep dir or glob>,...], or compare=[FROZEN_RUN,TR_RUN]")
    from trustregion.report.sweep import build_report

    path, study, skipped = build_report(runs, out, cfg.wandb_project)
    for p, why in skipped:
        print(f"skipped {p}: {why}")
    print(f"{len(study.runs)} runs in {len(study.families)} families -> {path}")


main = entry_point("trustregion-report", "report", run, register_report, records=False)

if __name__ == "__main__":
    main()
