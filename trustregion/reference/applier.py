"""The contract every way of applying a reference update meets: mix now, measure, save."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Applier(Protocol):
    """Applies θ_ref ← α·θ + (1 − α)·θ_ref to one kind of reference (dense, ZeRO-3 shards, a LoRA delta)."""

    def apply(self, alpha: float) -> None:
        """Mix once, now, in place; device ops only (no host sync)."""

    def distance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(‖θ_ref − θ‖², ‖θ‖²) over this rank's part, as float64 CPU scalars; summed over ranks by the caller,
        so every element counts once in the sum."""

    def metrics(self) -> dict[str, float]:
        """Extra log fields of this way of applying (e.g. ``ref/factors_error``); at log steps only."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold beyond the reference's weights (fp32 masters of a 16-bit reference)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
