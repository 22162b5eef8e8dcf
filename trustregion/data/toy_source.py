"""The toy task as a preference data source (``dataset=toy``).

Pairs come from the process (``pair_source: process``: no model needed) or from the SFT model's own
samples (``pair_source: sft``, as in most RLHF pipelines: two samples of the policy being aligned,
so its off-support slips appear in the pairs too); ``auto`` (the default) takes the SFT model's
samples whenever ``pair_model`` (``model.path`` by default) is set. Both are labelled by
Bradley-Terry on the gold reward. It matters: with process pairs, frozen DPO peaked early (KL about
1.5) and low, then lost the support fast; with SFT pairs the rise lasted to KL 6-8 before the fall.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from datasets import Dataset
from omegaconf import DictConfig

from trustregion.config import DatasetConfig
from trustregion.data import PreferenceData, Source
from trustregion.data.rows import RowReport
from trustregion.data.toy import ToyTask, symbol_names, task_from_config
from trustregion.errors import ConfigError
from trustregion.schema import POSITIVE, at_least, check, setting


class PairSource(str, Enum):
    auto = "auto"  # sft when dataset.pair_model (by default model.path) is set, else process
    process = "process"  # two samples of the Markov process per prompt
    sft = "sft"  # two samples of the model at dataset.pair_model per prompt


@dataclass
class ToyDatasetConfig(DatasetConfig):
    """A seeded Markov-chain language with a programmatic gold reward (see ``trustregion.data.toy``)."""

    name: str = "toy"
    num_pairs: int = setting(1024, "training pairs", at_least(1))
    vocab: int = setting(24, "the language's tokens", at_least(2))
    successors: int = setting(4, "allowed successors of each token", at_least(1))
    prompt_len: int = setting(3, "prompt tokens", at_least(1))
    response_len: int = setting(8, "response tokens", at_least(1))
    label_temperature: float = setting(0.25, "Bradley-Terry labels: P(a > b) = sigmoid((r(a) - r(b)) / T)", POSITIVE)
    sft_samples: int = setting(4096, "the SFT corpus: the process's own samples", at_least(1))
    pair_source: PairSource = setting(
        PairSource.auto, "process (samples of the Markov process), sft (of the model at pair_model), auto"
    )
    pair_model: Optional[str] = setting(None, "the model dir that pair_source=sft samples from (conf: model.path)")
    pair_max_new_tokens: int = setting(16, "tokens sampled per response when pair_source=sft", at_least(1))
    pair_seed: int = setting(
        0,
        "which training pairs are drawn (conf: trainer.seed, so seeds vary the data too); the task (dataset.seed) and "
        "the held-out prompts stay fixed, so every seed is judged on the same prompts",
    )

    @classmethod
    def check_together(cls, d: DictConfig, root: DictConfig) -> None:
        try:
            symbol_names(d.vocab)
        except ValueError as e:
            raise ConfigError(f"dataset.vocab={d.vocab} is invalid: {e}; lower dataset.vocab") from e
        check(
            d.successors <= d.vocab, "dataset.successors", d.successors, f"an integer in [1, dataset.vocab={d.vocab}]"
        )
        check(d.eval_samples >= 1, "dataset.eval_samples", d.eval_samples, "an integer >= 1")
        if d.pair_source == PairSource.sft and not d.pair_model:
            raise ConfigError(
                "dataset.pair_model is null but dataset.pair_source=sft: set model.path (or dataset.pair_model) "
                "to the SFT run's policy dir, or use dataset.pair_source=process"
            )


def model_pairs(task: ToyTask, cfg, n: int, seed: int) -> list[dict]:
    """``n`` pairs of two distinct samples of the model at ``cfg.pair_model`` per prompt, gold-labelled."""
    import torch

    from trustregion.models.loading import load_for_sampling
    from trustregion.models.sampling import SamplingOptions, encode_prompts, sample_texts

    path = str(cfg.pair_model)
    model, tokenizer = load_for_sampling(path, key="dataset.pair_model")
    gen = torch.Generator().manual_seed(task.seed * 1_000_003 + seed)
    rows: list[dict] = []
    for attempt in range(8):
        prompts = task.prompts(n - len(rows) + 8, seed=seed * 100 + attempt)
        ids = encode_prompts(prompts, tokenizer, cfg.max_prompt_length)
        doubled = [ids[i // 2] for i in range(2 * len(ids))]  # two samples per prompt
        texts = sample_texts(model, tokenizer, doubled, SamplingOptions(cfg.pair_max_new_tokens), generator=gen)
        rows += task.label_rows(prompts, texts[0::2], texts[1::2], seed, cfg.label_temperature)
        if len(rows) >= n:
            return rows[:n]
    raise ConfigError(
        f"the model at dataset.pair_model={path} gave only {len(rows)} distinct pairs of {n}: "
        f"it is (nearly) deterministic; use dataset.pair_source=process"
    )


def pair_source(cfg) -> PairSource:
    """The source ``auto`` stands for: the SFT model's samples when there is one to load, else the process."""
    source = PairSource(cfg.pair_source)
    if source == PairSource.auto:
        return PairSource.sft if cfg.pair_model else PairSource.process
    return source


def load(cfg) -> PreferenceData:
    task = task_from_config(cfg)
    n = cfg.num_pairs if cfg.max_samples is None else min(cfg.num_pairs, cfg.max_samples)
    train_seed = 1 + 10 * cfg.pair_seed  # pair_seed 0 keeps the pairs of earlier releases
    if pair_source(cfg) == PairSource.sft:
        train = model_pairs(task, cfg, n, seed=train_seed)
        held_out = model_pairs(task, cfg, cfg.eval_samples, seed=2)
    else:
        train = task.preference_rows(n, seed=train_seed, label_temperature=cfg.label_temperature)
        held_out = task.preference_rows(cfg.eval_samples, seed=2, label_temperature=cfg.label_temperature)
    sft = task.sft_rows(cfg.sft_samples, seed=3)
    return PreferenceData(
        train=Dataset.from_list(train),
        eval=Dataset.from_list(held_out),
        report=RowReport(kept=len(train), eval_kept=len(held_out)),
        task=task,
        sft=Dataset.from_list(sft),
    )


SOURCES = (Source("toy", load, ToyDatasetConfig),)
