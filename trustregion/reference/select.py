"""The one place that picks how a reference update is applied, from the engine and the reference model."""

from __future__ import annotations

from trustregion.engines.base import Engine
from trustregion.reference.adapter import AdapterApplier, AdapterReference
from trustregion.reference.applier import Applier
from trustregion.reference.dense import DenseApplier
from trustregion.reference.zero3 import GatheredApplier, sharded_applier


def make_applier(engine: Engine) -> Applier:
    """LoRA: the adapter delta (exact or factors; shard by shard under ZeRO-3). Otherwise whole tensors with fp32
    masters for 16-bit references; under ZeRO-3 each rank's own shards, or whole parameters gathered to rank 0
    where ``deepspeed.reference_update=gathered``."""
    policy, reference = engine.unwrap("policy"), engine.unwrap("reference")
    if isinstance(reference, AdapterReference):
        return AdapterApplier(reference, sharded=engine.partitioned)
    if not engine.partitioned:
        return DenseApplier.for_models(policy, reference)
    if engine.gather_for_update:
        return GatheredApplier(policy, reference)
    return sharded_applier(policy, reference, engine.world_size)
