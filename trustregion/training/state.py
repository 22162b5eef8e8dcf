"""What changes as the loop runs, and the step's metrics as an update rule reads them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trustregion.engines.base import Engine
from trustregion.errors import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """The loop's state (a checkpoint restores it, with the batch stream and the reference update)."""

    step: int = 0
    sft_train: torch.Tensor | None = None  # cached SFT log-probs, [rows, chunks]
    sft_eval: torch.Tensor | None = None
    tokens: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))  # response tokens
    seq_tokens: torch.Tensor = field(
        default_factory=lambda: torch.zeros((), dtype=torch.long)
    )  # every token, for FLOPs
    last: dict[str, Any] = field(default_factory=dict)  # the last logged metrics
    evaluation: dict[str, Any] = field(default_factory=dict)  # the latest evaluation's metrics, alike on every rank
    resumed: bool = False
    preempted: int = 0  # the signal (SIGTERM, SIGUSR1) that asked the run to checkpoint and stop; 0: none
    finished: bool = False  # the final evaluation is logged and checkpointed (a resume only exports again)
    eval_pending: bool = False  # stopped at an evaluation point before its evaluation was logged: it runs on resume
    in_setup: bool = True  # a stop signal now ends the run at once: nothing is trained, nothing to checkpoint


class StepMetrics:
    """What an update rule reads after one optimizer step (``trustregion.reference.rules.StepStats``): the objective's
    metrics of the step's micro-batches, the weight distance, the latest evaluation; nothing is reduced or synced
    unless the rule asks."""

    def __init__(
        self,
        step: int,
        micro_batches: list[dict[str, torch.Tensor]],
        engine: Engine,
        total_steps: int = 0,
        evaluated: dict[str, Any] | None = None,
        weight_distance: Callable[[], float] | None = None,
    ) -> None:
        self.step, self.micro_batches, self.engine, self.total_steps = step, micro_batches, engine, total_steps
        self.evaluated = evaluated or {}
        self.weight_distance = weight_distance

    def distance(self) -> float:
        if self.weight_distance is None:
            raise ConfigError("the reference-update rule asked for the weight distance, but this run has no reference")
        return self.weight_distance()

    def evaluation(self, key: str) -> float | None:
        value = self.evaluated.get(key)
        return None if value is None else float(value)

    def mean(self, key: str) -> float:
        if key not in self.micro_batches[0]:
            raise ConfigError(
                f"the reference-update rule asked for the step metric {key!r}, which this objective does not log; "
                f"it logs {', '.join(sorted(self.micro_batches[0]))}"
            )
        local = torch.stack([m[key].detach().float() for m in self.micro_batches]).mean()
        return float(self.engine.reduce_mean(local))
