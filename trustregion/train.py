"""Trust-Region preference training: DPO, IPO or KTO against a frozen, soft- or hard-updated reference.

The entry point; the recipe is ``trustregion.training.recipe.Recipe`` (setup steps, the loop, hooks).

    python -m trustregion.train method=ipo ref_update=hard ref_update.tau=64
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from trustregion.cli import app as cli
from trustregion.training.recipe import Recipe
from trustregion.training.stages import PreferenceStage


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Run one experiment into ``run_dir``; returns the last logged metrics."""
    return Recipe(cfg, run_dir, PreferenceStage()).run()


main = cli.entry_point("trustregion-train", "config", train)

if __name__ == "__main__":
    main()
