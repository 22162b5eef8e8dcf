"""The optimisation side of training: one ``Engine`` interface, and its single-process implementation.

``LocalEngine`` trains on one device with torch's AdamW; ``trustregion.distributed.DeepSpeedEngine``
implements the same interface under ZeRO. The loop (``trustregion.recipe``) sees only ``Engine``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from trustregion.reference import ReferenceUpdater


@runtime_checkable
class Engine(Protocol):
    """Policy (trained), reference (frozen or moved by an updater), optimizer, collectives, checkpoints."""

    device: torch.device
    rank: int
    world_size: int
    is_main: bool
    policy: nn.Module
    reference: nn.Module | None

    def prepare_frozen(self, model: nn.Module) -> nn.Module:
        """Place a frozen model (the SFT model kept for evaluation) the way the reference is placed."""

    def updater(self, alpha: float, tau: int | None) -> ReferenceUpdater:
        """The (alpha, tau) reference update over this engine's policy and reference."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> torch.Tensor:
        """One optimizer step; returns the gradient norm as a tensor (no host sync)."""

    def lr(self) -> float: ...

    def reduce_mean(self, t: torch.Tensor) -> torch.Tensor: ...

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of a per-example tensor over every rank's micro-batch; gradients flow to every rank's part."""

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


def make_optimizer(policy: nn.Module, trainer_cfg, total_steps: int):
    """torch's AdamW over the trainable parameters, and its LR schedule."""
    t = trainer_cfg
    params = [p for p in policy.parameters() if p.requires_grad]
    impl = {"fused": True} if t.fused_optimizer else {"foreach": True}
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay, **impl)
    schedule = lr_lambda(str(t.schedule.value), t.warmup_steps, total_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LocalEngine:
    """Policy + reference on one device, trained with torch's AdamW."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, policy: nn.Module, reference: nn.Module | None, trainer_cfg, total_steps: int) -> None:
        self.device = resolve_device(trainer_cfg.device)
        self.policy = policy.to(self.device)
        self.reference = reference.to(self.device) if reference is not None else None
        self.policy.train()
        self.optimizer, self.scheduler = make_optimizer(self.policy, trainer_cfg, total_steps)
        self.max_grad_norm = trainer_cfg.max_grad_norm

    def prepare_frozen(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def updater(self, alpha: float, tau: int | None) -> ReferenceUpdater:
        return ReferenceUpdater.for_models(self.policy, self.reference, alpha, tau)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> torch.Tensor:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        return t.mean()

    def barrier(self) -> None:
        pass

    def broadcast_path(self, path: Path | None) -> Path:
        assert path is not None
        return path

    def save(self, directory: Path, optimizer: bool = True) -> None:
        state = {"policy": self.policy.state_dict()}
        if optimizer:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        torch.save(state, directory / "state.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "state.pt", map_location=self.device, weights_only=False)
        self.policy.load_state_dict(state["policy"])
        if self.reference is not None:
            self.reference.load_state_dict(state["reference"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def reshard(self, per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return list(per_rank[0])

    def export(self, which: str, directory: Path) -> None:
        self.unwrap(which).save_pretrained(directory)

    def unwrap(self, which: str) -> nn.Module:
        return self.policy if which == "policy" else self.reference
