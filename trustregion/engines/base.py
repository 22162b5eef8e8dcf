"""The optimisation side of training: the ``Engine`` interface, the optimizer settings every engine is built from,
and AdamW with its LR schedule.

``trustregion.engines.local.LocalEngine`` trains on one device; ``trustregion.engines.zero.DeepSpeedEngine`` under
ZeRO. The loop (``trustregion.training``) sees only ``Engine``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Engine(Protocol):
    """Policy (trained), reference (frozen, or moved by the loop's reference update), optimizer, collectives, checkpoints."""

    device: torch.device
    rank: int
    world_size: int
    is_main: bool
    policy: nn.Module
    reference: nn.Module | None
    partitioned: bool  # ZeRO-3: each rank holds a shard of every parameter (policy and reference alike)
    gather_for_update: bool  # mix the reference on whole parameters gathered to rank 0 (for comparison)

    def prepare_frozen(self, model: nn.Module) -> nn.Module:
        """Place a frozen model (the SFT model kept for evaluation) the way the reference is placed."""

    def policy_numel(self, trainable: bool = False) -> int:
        """Elements of the policy's (trainable) parameters, whole, wherever they are sharded."""

    def policy_bytes(self) -> int:
        """Bytes of the policy's weights, whole."""

    def weights_finite(self) -> bool:
        """Whether every weight of the policy is finite (all ranks agree): checked before a checkpoint is written."""

    def autocast(self) -> AbstractContextManager:
        """The context every forward runs in: 16-bit compute under mixed precision on one process, else nothing."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> torch.Tensor:
        """One optimizer step; returns the gradient norm as a tensor (no host sync)."""

    def lr(self) -> float: ...

    def reduce_mean(self, t: torch.Tensor) -> torch.Tensor: ...

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of a per-example tensor over every rank's micro-batch; gradients flow to every rank's part."""

    def batch_gather(self, t: torch.Tensor) -> torch.Tensor:
        """A per-example tensor of every rank's micro-batch, concatenated (a loss over the whole batch, e.g. a sort);
        gradients flow to every rank's part."""

    def barrier(self) -> None: ...

    def broadcast_path(self, path: Path | None) -> Path:
        """Rank 0's ``path`` on every rank."""

    def save(self, directory: Path, optimizer: bool = True) -> None:
        """Policy, reference and (unless ``optimizer`` is false) optimizer and scheduler state into ``directory``
        (every rank calls it)."""

    def load(self, directory: Path) -> None:
        """Restore what ``save`` wrote; under ZeRO, from a checkpoint of any world size (re-sharded)."""

    def reshard(self, per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """This rank's part of tensors laid out like the reference's, from every saved rank's list (another world size)."""

    def export(self, which: str, directory: Path) -> None:
        """``save_pretrained`` of ``policy`` or ``reference`` from rank 0 (consolidated when sharded)."""

    def unwrap(self, which: str) -> nn.Module: ...


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base LR at optimizer step ``s`` (0-based): linear warm-up, then constant/linear/cosine."""

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


@dataclass(frozen=True)
class OptimSettings:
    """What an engine optimises with: AdamW, its LR schedule, clipping, accumulation, and the device."""

    lr: float
    total_steps: int
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    fused: bool = False  # AdamW(fused=True) instead of foreach=True
    grad_accum: int = 1
    batch_size: int = 8  # rows per micro-batch per process
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16-mixed | fp16-mixed (fp32 masters and optimizer state either way)


def make_optimizer(policy: nn.Module, s: OptimSettings):
    """torch's AdamW over the trainable parameters, and its LR schedule."""
    params = [p for p in policy.parameters() if p.requires_grad]
    impl = {"fused": True} if s.fused else {"foreach": True}
    optimizer = torch.optim.AdamW(params, lr=s.lr, betas=tuple(s.adam_betas), weight_decay=s.weight_decay, **impl)
    schedule = lr_lambda(s.schedule, s.warmup_steps, s.total_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
