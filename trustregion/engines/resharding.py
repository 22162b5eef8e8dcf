"""Moving a ZeRO checkpoint to another world size: the policy and its optimizer through DeepSpeed's universal
checkpoint, and ZeRO-3 partitions re-cut for what this project shards itself (the reference, its fp32 masters).

ZeRO-3 cuts each flattened parameter into ``world`` equal parts of ceil(numel / world) elements, zero-padded at
the end; rank r holds part r. Re-sharding concatenates the saved parts, trims the padding and cuts again.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from pathlib import Path

import torch


def partition(full: torch.Tensor, world_size: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s ZeRO-3 partition of the flattened tensor ``full``."""
    size = -(-full.numel() // world_size)
    part = full.new_zeros(size)
    chunk = full.reshape(-1)[rank * size : (rank + 1) * size]
    part[: chunk.numel()] = chunk
    return part


def consolidate(parts: list[torch.Tensor], numel: int) -> torch.Tensor:
    """The flattened tensor of ``numel`` elements whose ZeRO-3 partitions (one per saved rank) are ``parts``."""
    return torch.cat([p.reshape(-1) for p in parts])[:numel]


def reshard(per_rank: list[list[torch.Tensor]], numels: list[int], world_size: int, rank: int) -> list[torch.Tensor]:
    """This rank's tensors from every saved rank's list: one ZeRO-3 partition per entry of ``numels``, then
    tensors that every rank holds whole (taken from saved rank 0)."""
    shards = [
        partition(consolidate([saved[i] for saved in per_rank], n), world_size, rank) for i, n in enumerate(numels)
    ]
    return shards + list(per_rank[0][len(numels) :])


def saved_world_size(deepspeed_tag_dir: Path) -> int:
    """How many data-parallel ranks wrote a DeepSpeed checkpoint tag (one optimizer-state file each)."""
    return len(list(deepspeed_tag_dir.glob("*optim_states.pt")))


def to_universal(deepspeed_tag_dir: Path, output: Path) -> None:
    """DeepSpeed's conversion of one tag's ZeRO shards into per-parameter fp32 weights and Adam moments (a
    universal checkpoint, loadable at any world size); in this process, its progress output silenced."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(deepspeed_tag_dir),
        output_folder=str(output),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # a plain model: no tensor-parallel patterns to declare
    )
    shutil.rmtree(output, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ds_to_universal.main(args)
