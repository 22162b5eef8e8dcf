"""Settings a run accepts but that cannot act as set, each said in one line at its start: silence here would be
a run that quietly does something other than what its config reads."""

from __future__ import annotations

from omegaconf import DictConfig

from trustregion.training.identity import ignored_settings


def notices(cfg: DictConfig, total_steps: int) -> list[str]:
    """One line per setting that changes nothing in this run, and per setting that cannot do what it says."""
    lines = [f"note: {setting}" for setting in ignored_settings(cfg)]
    t = cfg.trainer
    if t.warmup_steps >= total_steps:
        lines.append(
            f"warning: trainer.warmup_steps={t.warmup_steps} is not below the run's {total_steps} optimizer steps: the "
            f"learning rate never reaches trainer.lr={t.lr:g} (it ends at {total_steps}/{t.warmup_steps} of it); lower "
            "trainer.warmup_steps"
        )
    return lines
