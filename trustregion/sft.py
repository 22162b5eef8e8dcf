"""Supervised fine-tuning, the stage before alignment: maximise log p(response | prompt) on the SFT corpus.

The SFT corpus is the data source's own (the toy task's process samples) or prompt + chosen of its
pairs. The same recipe as alignment (``trustregion.training.stages.SFTStage``): checkpoints, ``trainer.resume``,
ZeRO-2/3, ``metrics.jsonl``. The result, ``<run dir>/policy``, starts alignment with ``model.path=``.

    python -m trustregion.sft                     # then: python -m trustregion.train model.path=...
"""

from __future__ import annotations

from trustregion.training.preemption import handle_from_start

handle_from_start(__name__)  # a stop signal from here on ends the command with one line, before the heavy imports

from pathlib import Path  # noqa: E402

from omegaconf import DictConfig  # noqa: E402

from trustregion.cli import app as cli  # noqa: E402
from trustregion.training.recipe import Recipe  # noqa: E402
from trustregion.training.stages import SFTStage  # noqa: E402


def run_sft(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train ``cfg.model`` on the SFT corpus of ``cfg.dataset``; save it to ``run_dir/policy``."""
    return Recipe(cfg, run_dir, SFTStage()).run()  # its last line says where the policy went


main = cli.entry_point("trustregion-sft", "sft", run_sft, resumable=True)

if __name__ == "__main__":
    main()
