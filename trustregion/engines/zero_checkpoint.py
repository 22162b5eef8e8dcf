"""A DeepSpeed engine's checkpoint: DeepSpeed's own for the policy and optimizer, each rank's reference shards, and
the resume at another world size (a universal checkpoint for the policy, the reference re-cut here). Under LoRA the
frozen base is left out (a resume loads it again from ``model.path``, as on one process); the frozen adapter that
holds a ``factors`` reference travels with the reference's tensors."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from trustregion.engines.resharding import reshard, saved_world_size, to_universal
from trustregion.engines.zero_internals import is_persistent, numel, shard, universal_checkpoint_loading
from trustregion.errors import ConfigError
from trustregion.models.lora import frozen_adapter_params, is_lora


def _reference_params(engine) -> list[torch.nn.Parameter]:
    """The parameters that hold the reference: a dense reference's own, then the policy's frozen adapter weights."""
    ref = engine.unwrap("reference")
    own = list(ref.parameters()) if ref is not None else []
    return own + frozen_adapter_params(engine.unwrap("policy"))


def reference_tensors(engine) -> list[torch.Tensor]:
    """What a checkpoint holds of the reference on this rank: its shards (and whole copies of persistent parameters)
    under ZeRO-3, its whole state dict under ZeRO-1/2; then the policy's frozen adapter weights."""
    params = _reference_params(engine)
    if engine.stage == 3:
        return [shard(p) for p in params] + [p.data for p in params if is_persistent(p)]
    ref = engine.unwrap("reference")
    own = list(ref.state_dict().values()) if ref is not None else []
    return own + [p.data for p in frozen_adapter_params(engine.unwrap("policy"))]


def save(engine, directory: Path, optimizer: bool = True) -> None:
    if not optimizer:  # validate() refuses trainer.final_optimizer_state=false under ZeRO
        raise ConfigError("a DeepSpeed checkpoint always holds the optimizer state (it has the fp32 weights)")
    lora = is_lora(engine.unwrap("policy"))
    engine.policy.save_checkpoint(str(directory / "deepspeed"), tag="policy", exclude_frozen_parameters=lora)
    tensors = [t.detach().cpu() for t in reference_tensors(engine)]
    torch.save(tensors, directory / f"reference_rank{engine.rank}.pt")
    dist.barrier()


def load(engine, directory: Path) -> None:
    """Restore a checkpoint written at this world size, or re-shard one written at another (``load_resized``)."""
    saved = saved_world_size(directory / "deepspeed" / "policy")
    if saved and saved != engine.world_size:
        return load_resized(engine, directory, saved)
    path, _ = engine.policy.load_checkpoint(
        str(directory / "deepspeed"),
        tag="policy",
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
        load_module_strict=not is_lora(engine.unwrap("policy")),  # LoRA: the frozen base is not in it
    )
    if path is None:
        raise ConfigError(f"trainer.resume={directory}: no DeepSpeed policy state in it; pick another checkpoint")
    shard_file = directory / f"reference_rank{engine.rank}.pt"
    if not shard_file.exists():
        raise ConfigError(
            f"trainer.resume={directory}: no reference shards for rank {engine.rank}; "
            "the checkpoint is incomplete, resume from an earlier one"
        )
    saved, expected = (
        torch.load(shard_file, map_location=engine.device, weights_only=True),
        len(reference_tensors(engine)),
    )
    if len(saved) != expected:
        raise ConfigError(
            f"trainer.resume={directory}: its reference holds {len(saved)} tensors per rank, this run's "
            f"{expected} (written by another version or other peft settings); start afresh"
        )
    restore_reference(engine, saved)


def load_resized(engine, directory: Path, saved: int) -> None:
    """The policy and optimizer through a universal checkpoint (converted by rank 0 beside the checkpoint, then
    removed); the reference re-cut from every saved rank's shards."""
    universal = directory.parent / f".universal-{directory.name}"
    failure = [None]
    if engine.is_main:
        try:
            to_universal(directory / "deepspeed" / "policy", universal / "policy")
        except Exception as e:  # noqa: BLE001 - reported on every rank as one line below
            failure = [(str(e).strip().splitlines() or [type(e).__name__])[0][:200]]
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise ConfigError(
            f"trainer.resume={directory}: cannot convert its {saved}-rank DeepSpeed state for {engine.world_size} "
            f"ranks ({failure[0]}); resume with {saved} ranks"
        )
    try:
        with universal_checkpoint_loading(engine.policy):
            path, _ = engine.policy.load_checkpoint(
                str(universal),
                tag="policy",
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
                load_module_strict=not is_lora(engine.unwrap("policy")),
            )
    finally:
        dist.barrier()
        if engine.is_main:
            shutil.rmtree(universal, ignore_errors=True)
    if path is None:
        raise ConfigError(f"trainer.resume={directory}: no DeepSpeed policy state in it; pick another checkpoint")
    if reference_tensors(engine):
        per_rank = [
            torch.load(directory / f"reference_rank{r}.pt", map_location=engine.device, weights_only=True)
            for r in range(saved)
        ]
        restore_reference(engine, reshard_like_reference(engine, per_rank))


@torch.no_grad()
def restore_reference(engine, saved: list[torch.Tensor]) -> None:
    # Whole copies of persistent parameters stay empty until the first forward gathers them from the shards.
    pairs = [(mine, s) for mine, s in zip(reference_tensors(engine), saved, strict=True) if mine.numel() > 0]
    if pairs:
        torch._foreach_copy_([mine for mine, _ in pairs], [s for _, s in pairs])


def reshard_like_reference(engine, per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """This rank's part of tensors laid out like the reference's (each parameter's ZeRO-3 partition, then whole
    tensors), from every saved rank's list: for a resume at another world size."""
    if engine.stage != 3:
        return list(per_rank[0])
    numels = [numel(p) for p in _reference_params(engine)]
    return reshard(per_rank, numels, engine.world_size, engine.rank)
