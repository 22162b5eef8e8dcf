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


def register(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        LOADERS[name] = fn
        return fn
    return deco


def load_preferences(cfg) -> PreferenceData:
    """Load ``cfg`` (a dataset config) with the loader its ``name`` selects."""
    from trustregion.data import files, toy_source  # noqa: F401  (registers loaders)

    if cfg.name not in LOADERS:
        raise ConfigError(f"dataset.name={cfg.name} is unknown: set dataset to one of {', '.join(sorted(LOADERS))}")
    return LOADERS[cfg.name](cfg)
