"""Supervised fine-tuning, the stage before alignment: maximise log p(response | prompt) on the SFT corpus.

The SFT corpus is the data source's own (the toy task's process samples) or prompt + chosen of its
pairs. The same recipe as alignment (``trustregion.training.stages.SFTStage``): checkpoints, ``trainer.resume``,
ZeRO-2/3, ``metrics.jsonl``. The result, ``<run dir>/policy``, starts alignment with ``model.path=``.

    python -m trustregion.sft                     # then: python -m trustregion.train model.path=...
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from trustregion.cli import app as cli
from trustregion.training.recipe import Recipe
from trustregion.training.stages import SFTStage


def run_sft(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train ``cfg.model`` on the SFT corpus of ``cfg.dataset``; save it to ``run_dir/policy``."""
    return Recipe(cfg, run_dir, SFTStage()).run()  # its last line says where the policy went


main = cli.entry_point("trustregion-sft", "sft", run_sft)

if __name__ == "__main__":
    main()
