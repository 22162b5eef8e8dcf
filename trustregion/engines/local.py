"""One process on one device: the policy (and reference) trained with torch's AdamW."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trustregion.engines.base import OptimSettings, make_optimizer, resolve_device


class LocalEngine:
    """Policy + reference on one device, trained with torch's AdamW."""

    rank = 0
    world_size = 1
    is_main = True

    partitioned = False
    gather_for_update = False

    def __init__(self, policy: nn.Module, reference: nn.Module | None, settings: OptimSettings) -> None:
        self.device = resolve_device(settings.device)
        self.policy = policy.to(self.device)
        self.reference = reference.to(self.device) if reference is not None else None
        self.policy.train()
        self.optimizer, self.scheduler = make_optimizer(self.policy, settings)
        self.max_grad_norm = settings.max_grad_norm

    def prepare_frozen(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def policy_numel(self, trainable: bool = False) -> int:
        return sum(p.numel() for p in self.policy.parameters() if p.requires_grad or not trainable)

    def policy_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.policy.parameters())

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
