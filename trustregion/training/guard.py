"""Stopping a run that diverges, with one line, before a poisoned checkpoint is written.

Each step's loss and gradient norm stay on the device; at log and checkpoint points (one host sync) a step fails when
either is non-finite, or exceeds ``factor`` times its reference. The loss's reference is the run's own first loss,
from the second step on (a loss that falls toward 0 does not make later noise look like an explosion, and a run that
climbs step by step cannot carry a running median up with it); the gradient norm's is the running median over the
last ``window`` checked steps, once ``MIN_HISTORY`` are seen (early gradients legitimately swing). The loss is the
mean over ranks, so every rank decides alike. A gradient norm ``SPIKE`` times its running median, short of the stop,
is said once: a run may survive it, but one on SmolLM2 at lr 3e-4 went from that into garbled text in silence.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from trustregion.console import say
from trustregion.errors import TrainingError

MIN_HISTORY = 10  # steps seen before the ratio test starts
SPIKE = 10.0  # a gradient norm this many times its running median is said (once a run), though it does not stop it


class Diverged(TrainingError):
    """A step's loss or gradient norm was non-finite or exploded."""


class NonFinite(Diverged):
    """A step's loss or gradient norm was NaN or infinite (no setting lets the run go on from it)."""


class DivergenceGuard:
    def __init__(self, factor: float | None, window: int = 50) -> None:
        self.factor, self.window = factor, window
        self.history: dict[str, list[float]] = {"loss": [], "grad_norm": []}
        self.first: dict[str, float] = {}
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.spiked = False

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Record step ``step``'s mean loss and gradient norm (device tensors; no sync)."""
        self.pending.append((step, torch.stack([loss.detach().float().reshape(()), grad_norm.float().reshape(())])))

    def check(self, engine) -> None:
        """Raise ``Diverged`` naming the first bad step since the last check; a collective on every rank."""
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        values = torch.stack([v.to(engine.device) for _, v in self.pending])
        values[:, 0] = engine.reduce_mean(values[:, 0])
        self.pending = []
        for step, (loss, norm) in zip(steps, values.cpu().tolist()):
            for name, value in (("loss", loss), ("grad_norm", norm)):
                self._check_one(step, name, value)

    def _check_one(self, step: int, name: str, value: float) -> None:
        if not math.isfinite(value):
            raise NonFinite(f"non-finite {name} at step {step}")
        if name == "grad_norm" and value == 0.0:
            return  # no gradient, or a step the fp16 loss scaler skipped: nothing moved
        seen = self.history[name]
        first = self.first.setdefault(name, value)
        if name == "loss" and self.factor is not None and seen:
            self._compare(step, name, value, abs(first), "the run's first loss")
        elif name == "grad_norm" and len(seen) >= MIN_HISTORY:
            median = abs(statistics.median(seen))
            if self.factor is not None:
                self._compare(step, name, value, median, "its running median")
            if value > SPIKE * max(median, 1e-12) and not self.spiked:
                self.spiked = True
                say(
                    f"warning: grad_norm {value:.3g} at step {step} is {value / max(median, 1e-12):.3g}x its running "
                    f"median {median:.3g}: the run may be diverging (its samples turning to garble); a lower trainer.lr "
                    "steadies it"
                )
        seen.append(value)
        del seen[: -self.window]

    def _compare(self, step: int, name: str, value: float, reference: float, what: str) -> None:
        assert self.factor is not None
        if abs(value) > self.factor * max(reference, 1e-12):
            raise Diverged(
                f"{name} exploded at step {step}: {value:.3g} is {abs(value) / max(reference, 1e-12):.3g}x "
                f"{what} {reference:.3g} (trainer.divergence_factor={self.factor:g})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}, "first": dict(self.first)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.first = dict(state["first"])
