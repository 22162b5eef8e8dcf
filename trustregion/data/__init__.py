"""Preference data: loaders by ``dataset.name``, each giving prompt/chosen/rejected text rows.

A loader is a function ``(DatasetConfig) -> PreferenceData``; register one in ``LOADERS`` to add a source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from datasets import Dataset

from trustregion.data.rows import RowReport
from trustregion.errors import ConfigError


@dataclass
class PreferenceData:
    train: Dataset  # columns prompt, chosen, rejected (text)
    eval: Dataset
    report: RowReport = field(default_factory=RowReport)
    task: Any = None  # a gold judge with score_text(prompt, response), where the source has one (toy)
    sft: Dataset | None = None  # columns prompt, response: the SFT corpus where it differs from prompt+chosen


LOADERS: dict[str, Callable[[Any], PreferenceData]] = {}
# Modules that define a data source: each registers its loader and its dataset schema on import.
SOURCE_MODULES = ("toy_source", "files")


def import_loaders() -> None:
    import importlib

    for name in SOURCE_MODULES:
        importlib.import_module(f"trustregion.data.{name}")


def register(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        LOADERS[name] = fn
        return fn
    return deco


def load_preferences(cfg) -> PreferenceData:
    """Load ``cfg`` (a dataset config) with the loader its ``name`` selects."""
    import_loaders()
    if cfg.name not in LOADERS:
        raise ConfigError(f"dataset.name={cfg.name} is unknown: set dataset to one of {', '.join(sorted(LOADERS))}")
    return LOADERS[cfg.name](cfg)
