"""Preference data: loaders by ``dataset.name``, each giving prompt/chosen/rejected text rows.

A source of the package is a ``Source(name, load, schema)``: ``load(DatasetConfig) -> PreferenceData``; each module
in ``SOURCE_MODULES`` lists its own in ``SOURCES``. A source written outside the package is a ``DataSource``
subclass that ``dataset._target_=<module>.<Class>`` names, with a YAML on Hydra's search path (docs/guides/extending.md,
"A data source"); its settings are checked against its own schema, like an update rule's.
Chat sources also keep ``prompt_messages`` (the conversation before the answer) in each row; the
tokenizer renders them with its chat template at tokenization, so loaders never need the tokenizer.
Unpaired sources (``kind="unpaired"``) give prompt/completion/label rows instead of pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from datasets import Dataset
from omegaconf import DictConfig, OmegaConf

from trustregion.config import DatasetConfig
from trustregion.data.rows import RowReport
from trustregion.errors import ConfigError
from trustregion.schema import check_settings, component_class, in_schema


class GoldJudge(Protocol):
    """A task's gold reward (``PreferenceData.task``): what generation-based evaluation scores samples with."""

    def score_text(self, prompt: str, response: str) -> tuple[float, bool]:
        """(gold reward, whether the response is in the task's domain: well-formed, not degenerate)."""

    def score_parts(self, prompt: str, response: str) -> dict[str, float]:
        """The gold's named parts, logged as ``eval/gold/<part>`` ({} for a gold without parts)."""


@dataclass
class PreferenceData:
    train: Dataset  # columns prompt, chosen, rejected (text)
    eval: Dataset
    report: RowReport = field(default_factory=RowReport)
    task: GoldJudge | None = None  # where the source has a gold reward (toy, sentiment)
    sft: Dataset | None = None  # columns prompt, response: the SFT corpus where it differs from prompt+chosen
    kind: str = "pairs"  # "pairs" (prompt/chosen/rejected) or "unpaired" (prompt/completion/label, for KTO)
    prompts: list[str] | None = None  # the held-out prompts generation evaluates where they differ from eval's

    def eval_prompts(self) -> list[str]:
        """The held-out prompts that generation-based evaluation samples from, in order."""
        return list(self.prompts) if self.prompts is not None else list(self.eval["prompt"])

    def sft_view(self) -> Dataset:
        """The SFT corpus as prompt/response rows: ``sft`` if the source has one, else prompt + chosen."""
        if self.sft is not None:
            return self.sft
        if self.kind == "unpaired":
            good = self.train.filter(lambda label: bool(label), input_columns="label")
            return good.remove_columns("label").rename_column("completion", "response")
        return self.train.remove_columns("rejected").rename_column("chosen", "response")

    def texts(self) -> Iterator[str]:
        """Every text of the train split and the SFT corpus (what the tiny tokenizer is trained on)."""
        columns = ("prompt", "completion") if self.kind == "unpaired" else ("prompt", "chosen", "rejected")
        for row in self.train.select_columns(list(columns)):
            yield from (row[c] for c in columns)
        if self.sft is not None:
            for row in self.sft.select_columns(["prompt", "response"]):
                yield row["prompt"]
                yield row["response"]


@dataclass(frozen=True)
class Source:
    """A data source: ``dataset.name``, its loader and its config schema (a DatasetConfig subclass)."""

    name: str
    load: Callable[[Any], PreferenceData]
    schema: type


# Modules that define data sources, each with a ``SOURCES`` tuple.
SOURCE_MODULES = ("toy_source", "files", "hh", "tldr", "ultrafeedback", "kto_unpaired", "sentiment_source")


def sources() -> dict[str, Source]:
    """Every data source by name (imports the source modules on first use)."""
    import importlib

    found: dict[str, Source] = {}
    for module in SOURCE_MODULES:
        for source in importlib.import_module(f"trustregion.data.{module}").SOURCES:
            found[source.name] = source
    return found


class DataSource:
    """A data source written as a class: ``config_class`` is its schema (a ``DatasetConfig`` subclass), ``load``
    gives its rows from ``self.cfg`` (its settings, schema defaults filled in and ranges checked)."""

    config_class: ClassVar[type] = DatasetConfig

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def load(self) -> PreferenceData:
        raise NotImplementedError


def _target(cfg: Any) -> str:
    return str(OmegaConf.select(cfg, "_target_", default="") or "") if OmegaConf.is_config(cfg) else ""


def source_class(target: str) -> type[DataSource]:
    """The ``DataSource`` subclass ``dataset._target_`` names; one line when it is not one."""
    return component_class(target, DataSource, "dataset")


def dataset_settings(cfg: Any) -> Any:
    """``dataset`` with its source class's schema defaults filled in, where ``_target_`` names one (one line for a key
    the schema lacks or a value of the wrong type); the package's sources as they are (their YAML is typed)."""
    target = _target(cfg)
    if not target:
        return cfg
    return in_schema(source_class(target), cfg, "dataset")


def load_preferences(cfg) -> PreferenceData:
    """Load ``cfg`` (a dataset config) with the class its ``_target_`` names, or the package's loader its ``name``
    selects, its settings checked first."""
    target = _target(cfg)
    if target:
        settings = dataset_settings(cfg)
        check_settings(settings, "dataset")
        return source_class(target)(settings).load()
    known = sources()
    if cfg.name not in known:
        raise ConfigError(
            f"dataset.name={cfg.name} is unknown: set dataset to one of {', '.join(sorted(known))}, or "
            "dataset._target_ to <module>.<Class> of a DataSource"
        )
    check_settings(cfg, "dataset")
    return known[cfg.name].load(cfg)
