"""Every use of DeepSpeed's private attributes, in one place, each with the reason it is needed.

DeepSpeed documents no public API for these; ``tests/test_zero_internals.py`` pins each one on the
installed version, so an upgrade that renames one fails there, not deep inside a run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch


def is_zero3(param: torch.Tensor) -> bool:
    """Whether ``param`` is partitioned by ZeRO-3 (false unless deepspeed is already imported)."""
    if "deepspeed" not in sys.modules:
        return False
    from deepspeed.runtime.zero.partition_parameters import is_zero_param

    return is_zero_param(param)


def shard(param: torch.Tensor) -> torch.Tensor:
    """This rank's flat partition of a ZeRO-3 parameter. ``ds_tensor`` is the only handle on it: the reference update
    mixes shard i of the reference with shard i of the policy in place, with no gather."""
    return param.ds_tensor


def is_persistent(param: torch.Tensor) -> bool:
    """Whether ZeRO-3 keeps ``param`` whole on every rank (below ``stage3_param_persistence_threshold``): the forward
    then reads the whole copy, not the shard, so the update must mix that copy too (``ds_persist``)."""
    return bool(param.ds_persist)


def numel(param: torch.Tensor) -> int:
    """Elements of the whole parameter; under ZeRO-3 ``param.numel()`` is 0 outside a gather (``ds_numel``)."""
    return int(param.ds_numel) if is_zero3(param) else param.numel()


def consolidated_state_dict(engine) -> dict[str, torch.Tensor]:
    """The whole model's 16-bit weights gathered from the shards on rank 0, for ``save_pretrained``. DeepSpeed's own
    ``save_16bit_model`` writes a file we do not want; this is the function behind it."""
    return engine._zero3_consolidated_16bit_state_dict()


@contextlib.contextmanager
def universal_checkpoint_loading(engine) -> Iterator[None]:
    """Inside, ``load_checkpoint`` reads a universal checkpoint (another world size). DeepSpeed takes the switch from
    its config at initialize time only; the engine's parsed config (``_config``) is the one place to flip it after."""
    engine._config.load_universal_checkpoint = True
    try:
        yield
    finally:
        engine._config.load_universal_checkpoint = False
