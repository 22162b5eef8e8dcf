"""The toy task as a preference data source (``dataset=toy``)."""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset
from hydra.core.config_store import ConfigStore

from trustregion.config import DatasetConfig
from trustregion.data import PreferenceData, register
from trustregion.data.rows import RowReport
from trustregion.data.toy import task_from_config


@dataclass
class ToyDatasetConfig(DatasetConfig):
    """A seeded Markov-chain language with a programmatic gold reward (see ``trustregion.data.toy``)."""

    name: str = "toy"
    num_pairs: int = 1024
    vocab: int = 24
    successors: int = 4
    prompt_len: int = 3
    response_len: int = 8
    label_temperature: float = 0.25  # Bradley-Terry labels: P(a > b) = sigmoid((r(a) - r(b)) / T)
    sft_samples: int = 4096  # the SFT corpus: the process's own samples


ConfigStore.instance().store(group="dataset", name="base_toy", node=ToyDatasetConfig)


@register("toy")
def load(cfg) -> PreferenceData:
    task = task_from_config(cfg)
    n = cfg.num_pairs if cfg.max_samples is None else min(cfg.num_pairs, cfg.max_samples)
    train = task.preference_rows(n, seed=1, label_temperature=cfg.label_temperature)
    held_out = task.preference_rows(cfg.eval_samples, seed=2, label_temperature=cfg.label_temperature)
    sft = task.sft_rows(cfg.sft_samples, seed=3)
    return PreferenceData(
        train=Dataset.from_list(train),
        eval=Dataset.from_list(held_out),
        report=RowReport(kept=len(train)),
        task=task,
        sft=Dataset.from_list(sft),
    )
