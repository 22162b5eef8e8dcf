"""One process on one device: the policy (and reference) trained with torch's AdamW.

Under mixed precision the trainable weights are fp32 masters (upcast where loaded in 16 bits) with fp32 AdamW
state, every forward runs under ``torch.autocast`` in bf16 or fp16, and fp16 scales the loss (``GradScaler``)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn

from trustregion.engines.base import OptimSettings, make_optimizer, resolve_device
from trustregion.models.lora import load_policy_state, policy_state


class LocalEngine:
    """Policy + reference on one device, trained with torch's AdamW."""

    rank = 0
    world_size = 1
    is_main = True

    partitioned = False
    gather_for_update = False

    def __init__(self, policy: nn.Module, reference: nn.Module | None, settings: OptimSettings) -> None:
        self.device = resolve_device(settings.device)
        self.compute_dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(settings.precision)
        if self.compute_dtype is not None:
            with torch.no_grad():
                for p in policy.parameters():
                    if p.requires_grad and p.dtype != torch.float32:
                        p.data = p.data.float()  # the fp32 master: the optimizer steps this, not a 16-bit copy
        self.policy = policy.to(self.device)
        self.reference = reference.to(self.device) if reference is not None else None
        self.policy.train()
        self.optimizer, self.scheduler = make_optimizer(self.policy, settings)
        self.max_grad_norm = settings.max_grad_norm
        self.scaler = torch.amp.GradScaler(self.device.type) if settings.precision == "fp16-mixed" else None

    def prepare_frozen(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def policy_numel(self, trainable: bool = False) -> int:
        return sum(p.numel() for p in self.policy.parameters() if p.requires_grad or not trainable)

    def policy_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.policy.parameters())

    def weights_finite(self) -> bool:
        norms = torch._foreach_norm([p.detach() for p in self.policy.parameters()])
        return bool(torch.isfinite(torch.stack(norms)).all())

    def autocast(self) -> AbstractContextManager:
        if self.compute_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> torch.Tensor:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip and report the true gradient
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradient overflowed
            self.scaler.update()
            # A skipped step changed nothing: it reports 0, not the overflow (the divergence guard would stop on it).
            norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))
        else:
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

    def batch_gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def barrier(self) -> None:
        pass

    def broadcast_path(self, path: Path | None) -> Path:
        assert path is not None
        return path

    def save(self, directory: Path, optimizer: bool = True) -> None:
        state = {"policy": policy_state(self.policy)}  # under LoRA the adapters alone: the base is reloaded
        if optimizer:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        torch.save(state, directory / "state.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "state.pt", map_location=self.device, weights_only=True)  # runs nothing
        load_policy_state(self.policy, state["policy"])
        if self.reference is not None:
            self.reference.load_state_dict(state["reference"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def reshard(self, per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return list(per_rank[0])

    def export(self, which: str, directory: Path) -> None:
        self.unwrap(which).save_pretrained(directory)

    def unwrap(self, which: str) -> nn.Module:
        return self.policy if which == "policy" else self.reference
