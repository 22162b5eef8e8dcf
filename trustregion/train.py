"""Trust-Region preference training: DPO, IPO or KTO against a frozen, soft- or hard-updated reference.

The entry point; the recipe is ``trustregion.training.recipe.Recipe`` (setup steps, the loop, hooks).

    python -m trustregion.train method=ipo ref_update=hard ref_update.tau=64
"""

from __future__ import annotations

from trustregion.training.preemption import handle_from_start

handle_from_start(__name__)  # a stop signal from here on ends the command with one line, before the heavy imports

from pathlib import Path  # noqa: E402

from omegaconf import DictConfig  # noqa: E402

from trustregion.cli import app as cli  # noqa: E402
from trustregion.training.recipe import Recipe  # noqa: E402
from trustregion.training.stages import PreferenceStage  # noqa: E402


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Run one experiment into ``run_dir``; returns the last logged metrics."""
    return Recipe(cfg, run_dir, PreferenceStage()).run()


main = cli.entry_point("trustregion-train", "config", train, resumable=True)

if __name__ == "__main__":
    main()
