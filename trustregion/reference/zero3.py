"""Applying the reference update under ZeRO-3, where both models are partitioned the same way.

``sharded_applier``: shard i of the reference lines up element for element with shard i of the policy, so each rank
mixes its own shards in place: no gather, no communication. ``GatheredApplier`` gathers whole parameters on rank 0
instead (``deepspeed.reference_update=gathered``), for comparison.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from trustregion.engines.zero_internals import is_persistent, shard
from trustregion.errors import ConfigError
from trustregion.reference.dense import DenseApplier


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def sharded_applier(policy: nn.Module, reference: nn.Module, world_size: int) -> DenseApplier:
    """A ``DenseApplier`` over each rank's shards, the whole copies of persistent parameters, and the buffers."""
    pol, ref, persistent = [], [], []
    for p, r in zip(policy.parameters(), reference.parameters()):
        pol.append(shard(p))
        ref.append(shard(r))
        if is_persistent(r) != is_persistent(p):
            raise ConfigError(
                "policy and reference disagree on ZeRO-3 persistent parameters; set deepspeed.param_persistence_threshold=0"
            )
        if is_persistent(r):
            persistent.append((p, r))
    buffers = [b for b in policy.buffers() if b.is_floating_point()]
    pol += buffers
    ref += [b for b in reference.buffers() if b.is_floating_point()]

    def whole_copies() -> list[tuple[torch.Tensor, torch.Tensor]]:
        # Persistent parameters stay whole on every rank once gathered, and the forward reads that copy, not the shard;
        # their storage is replaced on gathering, so look it up each time. On one rank the whole copy is a view of the
        # shard, which the update has already mixed.
        return [(p.data, r.data) for p, r in persistent if not _shares_storage(r.data, shard(r))]

    late = whole_copies if persistent else None
    return DenseApplier(pol, ref, late, replicated=(len(buffers), world_size))


class GatheredApplier:
    """The update through ``GatheredParameters``: whole parameters of both models, mixed on rank 0 (an ``Applier``)."""

    def __init__(self, policy: nn.Module, reference: nn.Module) -> None:
        self.policy, self.reference = policy, reference

    @torch.no_grad()
    def apply(self, alpha: float) -> None:
        import deepspeed

        pol, ref = list(self.policy.parameters()), list(self.reference.parameters())
        with deepspeed.zero.GatheredParameters(pol, modifier_rank=None):
            with deepspeed.zero.GatheredParameters(ref, modifier_rank=0):
                if dist.get_rank() == 0:
                    torch._foreach_lerp_([r.data for r in ref], [p.data for p in pol], alpha)

    def distance(self) -> tuple[torch.Tensor, torch.Tensor]:
        diff, norm = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for p, r in zip(self.policy.parameters(), self.reference.parameters()):
            diff += torch.linalg.vector_norm(shard(r).float() - shard(p).float()).double().cpu() ** 2
            norm += torch.linalg.vector_norm(shard(p).float()).double().cpu() ** 2
        world = dist.get_world_size()  # buffers are whole on every rank: each counted once over the ranks
        for p, r in zip(self.policy.buffers(), self.reference.buffers()):
            if p.is_floating_point():
                diff += torch.linalg.vector_norm(r.float() - p.float()).double().cpu() ** 2 / world
                norm += torch.linalg.vector_norm(p.float()).double().cpu() ** 2 / world
        return diff, norm

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
