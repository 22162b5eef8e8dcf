"""Trust-Region preference training: DPO, IPO or KTO against a frozen, soft- or hard-updated reference.

The entry point; the recipe is ``trustregion.training.recipe.Recipe`` (setup steps, the loop, hooks).

    python -m trustregion.train method=ipo ref_update=hard ref_update.tau=64
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from trustregion.cli import app as cli
from trustregion.cli.preflight import preflight
from trustregion.training.recipe import Recipe
from trustregion.training.stages import PreferenceStage


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Run one experiment into ``run_dir``; returns the last logged metrics."""
    return Recipe(cfg, run_dir, PreferenceStage()).run()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    try:
        cli.exit_on_error(cli.run_locked)(train, cfg)
    finally:
        cli.shutdown_distributed()


def main() -> None:
    cli.register()
    sys.argv = [sys.argv[0], *cli.prepare_launch(sys.argv[1:])]
    preflight(sys.argv[1:], "config")
    _main()


if __name__ == "__main__":
    main()
