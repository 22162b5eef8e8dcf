"""Preference data: loaders by ``dataset.name``, each giving prompt/chosen/rejected text rows.

A source is a ``Source(name, load, schema)``: ``load(DatasetConfig) -> PreferenceData``; each module in
``SOURCE_MODULES`` lists its own in ``SOURCES``. Add a module there (and ``conf/dataset/<name>.yaml``) to add one.
Chat sources also keep ``prompt_messages`` (the conversation before the answer) in each row; the
tokenizer renders them with its chat template at tokenization, so loaders never need the tokenizer.
Unpaired sources (``kind="unpaired"``) give prompt/completion/label rows instead of pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from datasets import Dataset

from trustregion.data.rows import RowReport
from trustregion.errors import ConfigError
from trustregion.schema import check_settings


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


def load_preferences(cfg) -> PreferenceData:
    """Load ``cfg`` (a dataset config) with the loader its ``name`` selects, its settings checked first."""
    known = sources()
    if cfg.name not in known:
        raise ConfigError(f"dataset.name={cfg.name} is unknown: set dataset to one of {', '.join(sorted(known))}")
    check_settings(cfg, "dataset")
    return known[cfg.name].load(cfg)
