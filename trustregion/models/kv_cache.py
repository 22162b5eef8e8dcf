"""The KV cache's name across transformers versions: 5.24 renamed ``past_key_values`` to ``cache`` (the old name
still works there, with a FutureWarning, and goes in 5.40), so a forward is called by the name it declares."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from packaging.version import Version
from torch import nn

# What a causal LM's forward takes its cache by, through wrappers that pass keywords on (PEFT, DeepSpeed, our views).
CACHE_KWARG = "cache" if Version(version("transformers")) >= Version("5.24") else "past_key_values"


def cache_kwarg(module: nn.Module) -> str | None:
    """The keyword ``module.forward`` (a decoder body, no wrapper) takes its cache by, or None if it takes none."""
    params = inspect.signature(module.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def returned_cache(out) -> object:
    """The cache a forward with ``use_cache=True`` returned, under either name."""
    return out["cache"] if "cache" in out else out["past_key_values"]
