"""The optimisation side of training on one process: AdamW, LR schedule, clipping, state for checkpoints.

``trustregion.distributed.DeepSpeedEngine`` offers the same methods under ZeRO, so the loop in
``train.py`` does not know which one it drives.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from trustregion.reference import ReferenceUpdater


def lr_lambda(schedule: str, warmup: int, total: int):
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Engine:
    """Policy + frozen reference on one device, trained with torch's AdamW."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, policy: nn.Module, reference: nn.Module | None, trainer_cfg, total_steps: int) -> None:
        self.device = resolve_device(trainer_cfg.device)
        self.policy = policy.to(self.device)
        self.reference = reference.to(self.device) if reference is not None else None
        self.policy.train()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=trainer_cfg.lr, betas=tuple(trainer_cfg.adam_betas),
            weight_decay=trainer_cfg.weight_decay, foreach=True,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(str(trainer_cfg.schedule.value), trainer_cfg.warmup_steps, total_steps)
        )
        self.max_grad_norm = trainer_cfg.max_grad_norm

    def updater(self, alpha: float, tau: int | None, mode: str = "sharded") -> ReferenceUpdater:
        return ReferenceUpdater.for_models(self.policy, self.reference, alpha, tau)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> torch.Tensor:
        """One optimizer step; returns the pre-clipping gradient norm as a tensor (no host sync)."""
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

    def barrier(self) -> None:
        pass

    # --- checkpoints --------------------------------------------------------------------------
    def save(self, directory: Path, extra: dict) -> None:
        torch.save(
            {
                "policy": self.policy.state_dict(),
                "reference": self.reference.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                **extra,
            },
            directory / "state.pt",
        )

    def load(self, directory: Path) -> dict:
        state = torch.load(directory / "state.pt", map_location=self.device, weights_only=False)
        self.policy.load_state_dict(state.pop("policy"))
        self.reference.load_state_dict(state.pop("reference"))
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.scheduler.load_state_dict(state.pop("scheduler"))
        return state

    def unwrap(self, which: str) -> nn.Module:
        return self.policy if which == "policy" else self.reference
