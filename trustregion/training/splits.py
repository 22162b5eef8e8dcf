"""The rows a run trains and evaluates on, as its objective tokenized them, with what truncation cut of each split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from trustregion.data import PreferenceData
from trustregion.data.tokenize import TruncationStats
from trustregion.objectives.objective import Objective


@dataclass
class Splits:
    """The tokenized training rows and held-out rows (None: the objective evaluates none), and their collator."""

    train: Any  # a datasets.Dataset of token ids, one row per pair (or example)
    eval: Any | None
    collator: Any  # rows -> a padded batch
    truncation: TruncationStats
    eval_truncation: TruncationStats | None

    @classmethod
    def tokenize(cls, objective: Objective, data: PreferenceData, tokenizer: Any, dataset_cfg: DictConfig) -> Splits:
        """The splits ``objective`` trains and evaluates on, tokenized with ``tokenizer`` under ``dataset.*``."""
        train, truncation = objective.tokenize(objective.rows(data, "train"), tokenizer, dataset_cfg)
        held = objective.rows(data, "eval")
        evaluated, eval_truncation = (None, None) if held is None else objective.tokenize(held, tokenizer, dataset_cfg)
        return cls(train, evaluated, objective.collator(tokenizer.pad_token_id), truncation, eval_truncation)
