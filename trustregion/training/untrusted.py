"""Reading files that may come from elsewhere (a checkpoint downloaded or sent) without running anything in them.

A ``torch.save`` file is a zip holding a pickle, and a pickle may name any Python callable to run at load time (an
object's ``__reduce__``: ``os.system``). The project's own files are read with ``torch.load(weights_only=True)``,
which refuses such names; DeepSpeed reads its own files with ``weights_only=False``, so before any of a checkpoint's
files is read, ``foreign_objects`` lists what each pickle would import, and anything beyond tensors, plain data and
the few classes DeepSpeed stores is refused.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

import numpy as np
import torch

# What DeepSpeed's own checkpoint files hold besides tensors and plain data (plain classes and an enum).
DEEPSPEED_CLASSES = frozenset(
    {
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.utils.tensor_fragment.fragment_address",
        "torch._tensor._rebuild_from_type_v2",
    }
)


def numpy_rng_globals() -> list:
    """The numpy objects a numpy RNG state pickles to (checkpoints written before it was stored as a tensor)."""
    reconstruct = np.ndarray(0).__reduce__()[0]
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _allowed() -> frozenset[str]:
    from torch._weights_only_unpickler import _get_allowed_globals

    numpy = {f"{g.__module__}.{g.__name__}" for g in numpy_rng_globals()} | {"numpy.dtype", "numpy.ndarray"}
    return frozenset(_get_allowed_globals()) | DEEPSPEED_CLASSES | numpy


def _pickle_globals(data: bytes) -> list[str]:
    """Every global a pickle imports, as ``module.name``; a form that hides the name counts as foreign."""
    found = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            module, name = str(arg).split(" ", 1)
            found.append(f"{module}.{name}")
        elif op.name == "STACK_GLOBAL" or op.name.startswith("EXT"):  # torch.save never writes these (protocol 2)
            found.append(f"<a {op.name} import>")
    return found


def foreign_objects(path: Path) -> list[str]:
    """What loading the ``torch.save`` file ``path`` would import beyond tensors, plain data and DeepSpeed's state
    classes (empty when nothing); a file that is not a torch zip archive is foreign as a whole."""
    allowed = _allowed()
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    except (OSError, zipfile.BadZipFile) as e:
        return [f"<not a torch zip archive: {e}>"]
    found: list[str] = []
    for data in pickles:
        try:
            names = _pickle_globals(data)
        except Exception as e:  # noqa: BLE001 - a cut or crafted pickle: nothing of it is trusted
            names = [f"<an unreadable pickle: {e}>"]
        found += [n for n in names if n not in allowed and n not in found]
    return found


def first_foreign(directory: Path) -> tuple[str, list[str]] | None:
    """The first ``.pt`` file under ``directory`` (a checkpoint) that would import foreign objects, and what they
    are; None when every file holds only tensors and plain data."""
    for path in sorted(directory.rglob("*.pt")):
        names = foreign_objects(path)
        if names:
            return str(path.relative_to(directory)), names
    return None


def load_tensors(path: Path, map_location: str | torch.device | None = None):
    """``torch.load`` of one of the project's own files: tensors and plain data only (``weights_only``); numpy RNG
    states of checkpoints from before they were stored as tensors are allowed too."""
    with torch.serialization.safe_globals(numpy_rng_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)
