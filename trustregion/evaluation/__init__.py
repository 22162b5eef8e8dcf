"""Evaluation during training: held-out preference metrics here; generation-based metrics in ``generation``."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from trustregion.batches import BatchStream


@torch.no_grad()
def evaluate_preferences(engine, cfg: DictConfig, rows, collator, sft: torch.Tensor) -> dict[str, float]:
    """Loss, margins and accuracies on the held-out pairs, against the current reference and against SFT."""
    from trustregion.objective import MetricBuffer, preference_step, to_device

    if len(rows) < engine.world_size:
        return {}
    batch_size = max(1, min(cfg.trainer.batch_size, len(rows) // engine.world_size))
    stream = BatchStream(len(rows), batch_size, engine.world_size, engine.rank, shuffle=False)
    buffer = MetricBuffer()
    for _ in range(stream.batches_per_epoch):
        idx = stream.next()
        batch = to_device(collator([rows[i] for i in idx]), engine.device)
        out = preference_step(engine, cfg, batch, sft[idx], reference_from_cache=False, grad=False)
        buffer.add(out.metrics)
    keep = ("loss", "rewards/margins", "rewards/accuracies", "rewards_sft/margins", "rewards_sft/accuracies",
            "kl/policy_ref", "logps/chosen", "logps/rejected")
    return {f"eval/{k}": v for k, v in buffer.drain(engine).items() if k in keep}
