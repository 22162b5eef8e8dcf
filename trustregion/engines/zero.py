"""Policy and reference as DeepSpeed engines: the ``Engine`` interface under ZeRO stages 1-3.

Under ZeRO-3 the reference is partitioned exactly like the policy (an inference engine), so shard i of one lines up
with shard i of the other and the reference update can run shard by shard (``trustregion.reference.zero3``).
Checkpoints and resizing are in ``trustregion.engines.zero_checkpoint``; DeepSpeed's private attributes in
``trustregion.engines.zero_internals``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from trustregion.engines import zero_checkpoint
from trustregion.engines.base import OptimSettings, make_optimizer
from trustregion.engines.launch import all_ranks_gather, all_ranks_mean
from trustregion.engines.zero_internals import consolidated_state_dict, numel, shard
from trustregion.errors import ConfigError


@dataclass(frozen=True)
class ZeroSettings:
    """DeepSpeed's own settings (``deepspeed.*``), with the precision the model asks for."""

    stage: int
    offload_optimizer: bool = False
    offload_params: bool = False
    param_persistence_threshold: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16: DeepSpeed's bf16/fp16 sections (fp32 masters in the optimizer)
    reference_update: str = "sharded"  # sharded | gathered (ZeRO-3 only)

    def check(self) -> None:
        """One-line errors for settings that conflict."""
        if self.stage not in (1, 2, 3):
            raise ConfigError(
                f"deepspeed.stage={self.stage} is invalid: set deepspeed.stage to 1, 2 or 3 (or deepspeed=none)"
            )
        if self.offload_params and self.stage != 3:
            raise ConfigError(
                f"deepspeed.offload_params=true needs ZeRO stage 3 (deepspeed.stage={self.stage}); set deepspeed=zero3"
            )


def deepspeed_config(z: ZeroSettings, o: OptimSettings, world_size: int, train: bool) -> dict:
    """The DeepSpeed config dict for the policy (``train``) or the reference (no optimizer)."""
    zero: dict = {"stage": int(z.stage)}
    if z.stage == 3:
        zero["stage3_param_persistence_threshold"] = int(z.param_persistence_threshold)
        if z.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if z.offload_optimizer and train:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if not train and z.stage < 3:
        zero = {"stage": 0}
    config = {
        "train_micro_batch_size_per_gpu": int(o.batch_size),
        "gradient_accumulation_steps": int(o.grad_accum),
        "train_batch_size": int(o.batch_size) * int(o.grad_accum) * world_size,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if o.max_grad_norm is not None:
        config["gradient_clipping"] = float(o.max_grad_norm)
    if z.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif z.precision == "fp16":
        config["fp16"] = {"enabled": True}
    return config


class DeepSpeedEngine:
    """Policy and reference as DeepSpeed engines (``trustregion.engines.base.Engine`` under ZeRO stages 1-3)."""

    def __init__(
        self, policy: nn.Module, reference: nn.Module | None, optim: OptimSettings, zero: ZeroSettings
    ) -> None:
        import deepspeed

        zero.check()
        self.optim, self.zero = optim, zero
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.stage = int(zero.stage)
        self.partitioned = self.stage == 3
        self.gather_for_update = self.partitioned and zero.reference_update == "gathered"
        cuda = torch.cuda.is_available() and optim.device != "cpu"
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        optimizer, scheduler = make_optimizer(policy, optim)
        self.grad_accum = int(optim.grad_accum)
        self._micro = 0
        self.policy, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=policy,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(zero, optim, self.world_size, train=True),
        )
        self.reference = self.prepare_frozen(reference) if reference is not None else None

    def prepare_frozen(self, model: nn.Module):
        """A frozen model partitioned like the policy under ZeRO-3 (an inference engine), else replicated."""
        import deepspeed

        model.requires_grad_(False)
        # A view with no weights of its own (the LoRA reference, on the policy's base) has nothing to partition.
        if self.stage == 3 and any(True for _ in model.parameters()):
            config = deepspeed_config(self.zero, self.optim, self.world_size, train=False)
            engine = deepspeed.initialize(model=model, config=config)[0]
            engine.eval()
            return engine
        return model.to(self.device).eval()

    def weights_finite(self) -> bool:
        local = [shard(p) if self.partitioned else p.detach() for p in self.unwrap("policy").parameters()]
        bad = (~torch.isfinite(torch.stack(torch._foreach_norm(local)))).sum().float().to(self.device)
        return float(self.reduce_sum(bad)) == 0.0

    def autocast(self) -> AbstractContextManager:
        return nullcontext()  # DeepSpeed's bf16/fp16 sections cast the models themselves

    def policy_numel(self, trainable: bool = False) -> int:
        return sum(numel(p) for p in self.unwrap("policy").parameters() if p.requires_grad or not trainable)

    def policy_bytes(self) -> int:
        return sum(numel(p) * p.element_size() for p in self.unwrap("policy").parameters())

    # --- optimisation -----------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        # The loop already divides by grad_accum; DeepSpeed steps itself at the accumulation boundary.
        self.policy.backward(loss, scale_wrt_gas=False)
        self._micro += 1
        if self._micro % self.grad_accum:
            self.policy.step()

    def step(self) -> torch.Tensor:
        self.policy.step()
        norm = self.policy.get_global_grad_norm()
        return torch.as_tensor(float(norm) if norm is not None else float("nan"))

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        return all_ranks_mean(t)

    def batch_gather(self, t: torch.Tensor) -> torch.Tensor:
        return all_ranks_gather(t)

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_path(self, path: Path | None) -> Path:
        box = [str(path) if path is not None else None]
        dist.broadcast_object_list(box, src=0)
        return Path(box[0])

    def unwrap(self, which: str):
        import deepspeed

        model = self.policy if which == "policy" else self.reference
        return model.module if isinstance(model, deepspeed.DeepSpeedEngine) else model

    # --- checkpoints (``trustregion.engines.zero_checkpoint``) -----------------------------------------
    def save(self, directory: Path, optimizer: bool = True) -> None:
        zero_checkpoint.save(self, directory, optimizer)

    def load(self, directory: Path) -> None:
        zero_checkpoint.load(self, directory)

    def reshard(self, per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return zero_checkpoint.reshard_like_reference(self, per_rank)

    def export(self, which: str, directory: Path) -> None:
        """save_pretrained of the whole model from rank 0 (consolidated from the shards under ZeRO-3)."""
        engine = self.policy if which == "policy" else self.reference
        module = self.unwrap(which)
        if self.stage == 3:
            state = consolidated_state_dict(engine)
            if self.is_main:
                module.save_pretrained(directory, state_dict=state)
        elif self.is_main:
            module.save_pretrained(directory)
        dist.barrier()
