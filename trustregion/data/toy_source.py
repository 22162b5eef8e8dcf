"""The toy task as a preference data source (``dataset=toy``).

Pairs come from the process (``pair_source: process``: no model needed) or from the SFT model's own
samples (``pair_source: sft``, as in most RLHF pipelines: two samples of the policy being aligned,
so its off-support slips appear in the pairs too); ``auto`` (the default) takes the SFT model's
samples whenever ``pair_model`` (``model.path`` by default) is set. Both are labelled by
Bradley-Terry on the gold reward. It matters: with process pairs, frozen DPO peaked early (KL about
1.5) and low, then lost the support fast; with SFT pairs the rise lasted to KL 6-8 before the fall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from datasets import Dataset

from trustregion.config import DatasetConfig
from trustregion.data import PreferenceData, Source
from trustregion.data.rows import RowReport
from trustregion.data.toy import ToyTask, symbol_names, task_from_config
from trustregion.errors import ConfigError


class PairSource(str, Enum):
    auto = "auto"  # sft when dataset.pair_model (by default model.path) is set, else process
    process = "process"  # two samples of the Markov process per prompt
    sft = "sft"  # two samples of the model at dataset.pair_model per prompt


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
    pair_source: PairSource = PairSource.auto
    pair_model: Optional[str] = None  # the model dir that pair_source=sft samples from (conf: model.path)
    pair_max_new_tokens: int = 16  # tokens sampled per response when pair_source=sft
    # Which training pairs are drawn (prompts, samples, labels); conf: trainer.seed, so seeds vary the data too.
    # The task itself (dataset.seed) and the held-out prompts stay fixed, so every seed is judged on the same prompts.
    pair_seed: int = 0


def check(cfg) -> None:
    """Range checks of the toy settings: one ConfigError naming the field and the fix."""

    def need(ok: bool, key: str, want: str) -> None:
        if not ok:
            raise ConfigError(f"dataset.{key}={cfg[key]} is invalid: set dataset.{key} to {want}")

    need(cfg.vocab >= 2, "vocab", "an integer >= 2")
    try:
        symbol_names(cfg.vocab)
    except ValueError as e:
        raise ConfigError(f"dataset.vocab={cfg.vocab} is invalid: {e}; lower dataset.vocab") from e
    need(1 <= cfg.successors <= cfg.vocab, "successors", f"an integer in [1, dataset.vocab={cfg.vocab}]")
    need(cfg.prompt_len >= 1, "prompt_len", "an integer >= 1")
    need(cfg.response_len >= 1, "response_len", "an integer >= 1")
    need(cfg.num_pairs >= 1, "num_pairs", "an integer >= 1")
    need(cfg.eval_samples >= 1, "eval_samples", "an integer >= 1")
    need(cfg.sft_samples >= 1, "sft_samples", "an integer >= 1")
    need(cfg.label_temperature > 0 and math.isfinite(cfg.label_temperature), "label_temperature", "a number > 0")
    need(cfg.pair_max_new_tokens >= 1, "pair_max_new_tokens", "an integer >= 1")
    if cfg.pair_source == PairSource.sft and not cfg.pair_model:
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
    check(cfg)
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
