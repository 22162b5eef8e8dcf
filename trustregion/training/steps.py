"""How many optimizer steps a run takes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trustregion.errors import ConfigError


def total_optimizer_steps(
    trainer: Mapping[str, Any], num_rows: int, world_size: int, rows: str = "training pairs"
) -> int:
    """Optimizer steps of a run: ``max_steps``, else ``epochs`` passes over ``num_rows`` split across ranks."""
    per_epoch = num_rows // (int(trainer["batch_size"]) * world_size)
    if per_epoch == 0:
        raise ConfigError(
            f"trainer.batch_size={trainer['batch_size']} (x {world_size} processes) exceeds the {num_rows} {rows}; "
            f"lower trainer.batch_size or use more data"
        )
    if trainer.get("max_steps") is not None:
        return int(trainer["max_steps"])
    return max(1, int(float(trainer.get("epochs", 1)) * per_epoch) // int(trainer.get("grad_accum", 1)))
