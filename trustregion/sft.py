"""Supervised fine-tuning, the stage before alignment: maximise log p(response | prompt) on the SFT corpus.

The SFT corpus is the data source's own (the toy task's process samples) or prompt + chosen of its
pairs. The same recipe as alignment (``trustregion.training.stages.SFTStage``): checkpoints, ``trainer.resume``,
ZeRO-2/3, ``metrics.jsonl``. The result, ``<run dir>/policy``, starts alignment with ``model.path=``.

    python -m trustregion.sft                     # then: python -m trustregion.train model.path=...
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from trustregion.cli import app as cli
from trustregion.cli.preflight import preflight
from trustregion.training.recipe import Recipe
from trustregion.training.stages import SFTStage


def run_sft(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train ``cfg.model`` on the SFT corpus of ``cfg.dataset``; save it to ``run_dir/policy``."""
    return Recipe(cfg, run_dir, SFTStage()).run()  # its last line says where the policy went


@hydra.main(config_path="../conf", config_name="sft", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    try:
        cli.exit_on_error(cli.run_locked)(run_sft, cfg)
    finally:
        cli.shutdown_distributed()


def main() -> None:
    cli.register()
    sys.argv = [sys.argv[0], *cli.prepare_launch(sys.argv[1:])]
    preflight(sys.argv[1:], "sft")
    _main()


if __name__ == "__main__":
    main()
