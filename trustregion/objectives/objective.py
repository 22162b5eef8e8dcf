"""Training objectives, one class per method: the chunks each needs, its loss, and the metrics it logs.

An objective turns a collated batch into a ``StepOutput`` (loss and metric tensors, no host sync). It
also says how its data is tokenized and collated, so the recipe never asks which method it runs.
``method._target_`` names the class (``trustregion.objectives.methods``); unpaired data selects its ``unpaired``
class. Adding a method: a subclass of ``Objective`` anywhere on the Python path (with its config dataclass, a
``MethodConfig`` subclass, if it has options of its own) and a YAML that names it (docs/guides/extending.md, "A loss").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
from omegaconf import OmegaConf

from trustregion.config import MethodConfig
from trustregion.data.batches import BatchStream, to_device
from trustregion.data.tokenize import (
    PairCollator,
    TruncationStats,
    UnpairedCollator,
    padding_fraction,
    tokenize_options,
    tokenize_pairs,
    tokenize_sft,
    tokenize_unpaired,
)
from trustregion.errors import StopRequested
from trustregion.metrics import MetricBuffer
from trustregion.models.loading import sequence_logps
from trustregion.models.logps import LogpsFn
from trustregion.objectives.losses import ipo_loss, kto_loss, kto_unpaired_loss
from trustregion.schema import POSITIVE, setting

Tensor = torch.Tensor


@dataclass
class StepOutput:
    loss: Tensor
    metrics: dict[str, Tensor]
    tokens: Tensor  # response tokens in the batch (for throughput)


class KTOReferencePoint(str, Enum):
    mismatched = "mismatched"  # canonical KTO: detached batch mean on mismatched pairs
    paired = "paired"  # the TR paper's authors' library: each half against the other half


@dataclass
class KTOConfig(MethodConfig):
    name: str = "kto"
    desirable_weight: float = setting(1.0, "λ_D: the weight of a desirable (chosen) example's loss", POSITIVE)
    undesirable_weight: float = setting(1.0, "λ_U: the weight of an undesirable (rejected) example's loss", POSITIVE)
    reference_point: KTOReferencePoint = setting(
        KTOReferencePoint.mismatched,
        "z: mismatched (canonical KTO, detached batch mean on mismatched pairs) or paired (the TR paper's authors' "
        "library: each half against the other half)",
    )


EVAL_METRICS = (
    "loss",
    "rewards/margins",
    "rewards/accuracies",
    "rewards_sft/margins",
    "rewards_sft/accuracies",
    "logratio/policy_ref",
    "logps/chosen",
    "logps/rejected",
)


class Objective:
    """Base of every method: which rows and chunks it trains on, and one step's loss with its metrics."""

    name: ClassVar[str]
    config_class: ClassVar[type] = MethodConfig
    chunks: tuple[str, ...] = ("chosen", "rejected")
    uses_reference: ClassVar[bool] = True
    unpaired: ClassVar[type[Objective] | None] = None  # the class for unpaired (prompt, completion, label) data

    def __init__(self, method_cfg: Any, logps: LogpsFn = sequence_logps) -> None:
        self.cfg = method_cfg
        self.logps = logps  # (model, batch, average) -> (sequence log-probs, response token counts)
        self.average = bool(method_cfg.average_logps) if method_cfg is not None else False
        # A frozen reference on one process: its log-probs are the cached SFT ones (set by the recipe).
        self.reference_from_cache = False

    @classmethod
    def describe(cls, method_cfg: Any) -> str:
        """A readable label: the method, its β, and each option set away from the schema's default (``ipo β=0.1
        average_logps=true``)."""
        defaults = OmegaConf.structured(cls.config_class)
        options = [
            f"{k}={_text(method_cfg[k])}"
            for k in method_cfg
            if k not in ("_target_", "name", "beta") and k in defaults and method_cfg[k] != defaults[k]
        ]
        return " ".join([str(method_cfg.name), f"β={method_cfg.beta:g}", *options])

    def state_dict(self) -> dict[str, Any]:
        """What the objective carries from step to step (a running statistic), saved in checkpoints; none here."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def logps_settings(self) -> dict[str, Any]:
        """What, besides the model and the rows, changes the log-probs ``self.logps`` gives (the SFT cache's key)."""
        return {}

    def tokenize(self, split, tokenizer, dataset_cfg) -> tuple[Any, TruncationStats]:
        mismatched = "mismatched" in self.chunks
        d = dataset_cfg
        return tokenize_pairs(split, tokenizer, d.max_length, d.max_prompt_length, mismatched, **tokenize_options(d))

    def rows(self, data, split: str):
        """The text rows of ``split`` (``train`` or ``eval``) this objective tokenizes."""
        return data.train if split == "train" else data.eval

    def collator(self, pad_token_id: int) -> PairCollator:
        return PairCollator(pad_token_id, self.chunks)

    def forward(self, engine, batch: dict, cached: Tensor, grad: bool):
        """Policy, reference and SFT log-probs as [chunks, batch] tensors, plus response token counts.

        One concatenated forward per model; the reference runs without gradients, or not at all when
        its log-probs are the cached SFT ones.
        """
        with torch.set_grad_enabled(grad):
            logps, counts = self.logps(engine.policy, batch, self.average)
        k = len(self.chunks)
        b = logps.shape[0] // k
        if not self.uses_reference:  # a reference-free loss: log π_ref = 0, no SFT log-probs scored
            return logps.view(k, b), torch.zeros(k, b, device=logps.device), None, counts.view(k, b)
        if self.reference_from_cache:
            ref = cached.t().reshape(-1).to(logps.device)
        else:
            with torch.no_grad():
                ref, _ = self.logps(engine.reference, batch, self.average)
        return logps.view(k, b), ref.view(k, b), cached.t().to(logps.device), counts.view(k, b)

    def __call__(self, engine, batch: dict, cached: Tensor, grad: bool = True) -> StepOutput:
        pol, ref, sft, counts = self.forward(engine, batch, cached, grad)
        losses, cr, rr = self.loss(engine, pol, ref)
        loss = losses.mean()
        with torch.no_grad():
            metrics = self.pair_metrics(pol, ref, sft, counts, cr, rr)
            metrics["loss"] = loss.detach()
            metrics["data/padding_fraction"] = padding_fraction(batch)
        return StepOutput(loss, metrics, counts.sum())

    def loss(self, engine, pol: Tensor, ref: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def pair_metrics(self, pol, ref, sft, counts, cr, rr) -> dict[str, Tensor]:
        beta = self.cfg.beta
        pair_counts = counts[:2]
        log_ratio = pol[:2] - ref[:2]
        per_token = log_ratio.mean() if self.average else log_ratio.sum() / pair_counts.sum().clamp(min=1)
        return {
            "rewards/chosen": cr.mean(),
            "rewards/rejected": rr.mean(),
            "rewards/margins": (cr - rr).mean(),
            "rewards/accuracies": (cr > rr).float().mean(),
            "rewards/grad_term": (beta * torch.sigmoid(rr - cr)).mean(),
            "logps/chosen": pol[0].detach().mean(),
            "logps/rejected": pol[1].detach().mean(),
            "ref/logps/chosen": ref[0].mean(),
            "ref/logps/rejected": ref[1].mean(),
            "logratio/policy_ref": per_token.detach(),
            "lengths/chosen": pair_counts[0].float().mean(),
            "lengths/rejected": pair_counts[1].float().mean(),
            **self.sft_metrics(pol, sft),
        }

    def sft_metrics(self, pol: Tensor, sft: Tensor | None) -> dict[str, Tensor]:
        """Rewards against the SFT model (none for a reference-free loss, which scores no SFT log-probs)."""
        if sft is None:
            return {}
        beta = self.cfg.beta
        sc, sr = beta * (pol[0] - sft[0]), beta * (pol[1] - sft[1])
        return {
            "rewards_sft/chosen": sc.mean(),
            "rewards_sft/rejected": sr.mean(),
            "rewards_sft/margins": (sc - sr).mean(),
            "rewards_sft/accuracies": (sc > sr).float().mean(),
        }


class IPO(Objective):
    name = "ipo"

    def loss(self, engine, pol, ref):
        return ipo_loss(pol[0], pol[1], ref[0], ref[1], self.cfg.beta)


class KTO(Objective):
    """KTO on pairs; ``reference_point=mismatched`` adds a mismatched chunk, z is averaged over every rank."""

    name = "kto"
    config_class = KTOConfig

    def __init__(self, method_cfg: Any, logps: LogpsFn = sequence_logps) -> None:
        super().__init__(method_cfg, logps)
        self.reference_point = str(method_cfg.reference_point.value)
        if self.reference_point == "mismatched":
            self.chunks = ("chosen", "rejected", "mismatched")

    def loss(self, engine, pol, ref):
        m, mismatched = self.cfg, self.reference_point == "mismatched"
        return kto_loss(
            pol[0],
            pol[1],
            ref[0],
            ref[1],
            m.beta,
            desirable_weight=m.desirable_weight,
            undesirable_weight=m.undesirable_weight,
            reference_point=self.reference_point,
            policy_mismatched_logps=pol[2] if mismatched else None,
            reference_mismatched_logps=ref[2] if mismatched else None,
            batch_mean=engine.batch_mean,
        )


class KTOUnpaired(KTO):
    """KTO on unpaired (prompt, completion, label) rows; chunk 0 is the completion, chunk 1 the mismatched one."""

    name = "kto_unpaired"
    chunks = ("completion", "mismatched")

    def __init__(self, method_cfg: Any, logps: LogpsFn = sequence_logps) -> None:
        Objective.__init__(self, method_cfg, logps)

    def tokenize(self, split, tokenizer, dataset_cfg):
        d = dataset_cfg
        return tokenize_unpaired(split, tokenizer, d.max_length, d.max_prompt_length, **tokenize_options(d))

    def collator(self, pad_token_id: int) -> PairCollator:
        return UnpairedCollator(pad_token_id)

    def __call__(self, engine, batch: dict, cached: Tensor, grad: bool = True) -> StepOutput:
        m = self.cfg
        pol, ref, sft, counts = self.forward(engine, batch, cached, grad)
        good = batch["desirable"]
        losses, rewards = kto_unpaired_loss(
            pol[0],
            ref[0],
            good,
            m.beta,
            m.desirable_weight,
            m.undesirable_weight,
            pol[1],
            ref[1],
            batch_mean=engine.batch_mean,
        )
        loss = losses.mean()
        with torch.no_grad():
            n_good, n_bad = good.sum().clamp(min=1), (~good).sum().clamp(min=1)
            sft_rewards = m.beta * (pol[0] - sft[0])
            log_ratio = pol[0] - ref[0]
            kl = log_ratio.mean() if self.average else log_ratio.sum() / counts[0].sum().clamp(min=1)
            metrics = {
                "loss": loss.detach(),
                "rewards/chosen": (rewards * good).sum() / n_good,
                "rewards/rejected": (rewards * ~good).sum() / n_bad,
                "rewards_sft/chosen": (sft_rewards * good).sum() / n_good,
                "rewards_sft/rejected": (sft_rewards * ~good).sum() / n_bad,
                "logps/completion": pol[0].detach().mean(),
                "ref/logps/completion": ref[0].mean(),
                "logratio/policy_ref": kl.detach(),
                "data/padding_fraction": padding_fraction(batch),
            }
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
            metrics["rewards_sft/margins"] = metrics["rewards_sft/chosen"] - metrics["rewards_sft/rejected"]
        return StepOutput(loss, metrics, counts[0].sum())


KTO.unpaired = KTOUnpaired


class SFT(Objective):
    """Supervised fine-tuning: mean token negative log-likelihood of the response; no reference."""

    name = "sft"
    chunks = ("chosen",)
    uses_reference = False

    def tokenize(self, split, tokenizer, dataset_cfg):
        d = dataset_cfg
        return tokenize_sft(split, tokenizer, d.max_length, d.max_prompt_length, **tokenize_options(d))

    def rows(self, data, split: str):
        return data.sft_view() if split == "train" else None  # no held-out evaluation

    def __call__(self, engine, batch: dict, cached: Tensor | None, grad: bool = True) -> StepOutput:
        with torch.set_grad_enabled(grad):
            logps, counts = self.logps(engine.policy, batch, False)
        loss = -logps.sum() / counts.sum()
        return StepOutput(loss, {"sft/loss": loss.detach()}, counts.sum())


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value.value if isinstance(value, Enum) else value)


@torch.no_grad()
def reference_logps(
    engine,
    model,
    rows,
    collator: PairCollator,
    batch_size: int,
    average: bool,
    logps_fn: LogpsFn = sequence_logps,
) -> Tensor:
    """Log-probs of every row's chunks under ``model`` (the SFT model, before training): a [rows, chunks] tensor.

    Each rank computes its share; every rank runs the same number of forwards (ZeRO-3 gathers parameters
    collectively).
    """
    n, k = len(rows), len(collator.chunks)
    out = torch.zeros(n, k, dtype=torch.float32)
    per_rank = -(-n // engine.world_size)
    mine = list(range(engine.rank * per_rank, min(n, (engine.rank + 1) * per_rank)))
    steps = -(-per_rank // batch_size)
    for s in range(steps):
        idx = mine[s * batch_size : (s + 1) * batch_size] or [0]
        batch = to_device(collator([rows[i] for i in idx]), engine.device)
        logps, _ = logps_fn(model, batch, average)
        if mine[s * batch_size : (s + 1) * batch_size]:
            out[torch.tensor(idx)] = logps.view(k, -1).t().float().cpu()
    return engine.reduce_sum(out.to(engine.device)).cpu()


@torch.no_grad()
def evaluate_objective(
    engine,
    objective: Objective,
    rows,
    collator,
    cached: Tensor,
    batch_size: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, float]:
    """Loss, margins and accuracies on held-out rows, against the current reference and against SFT.
    ``should_stop`` is asked between batches (on every rank alike); True raises ``StopRequested``."""
    if len(rows) < engine.world_size:
        return {}
    batch_size = max(1, min(batch_size, len(rows) // engine.world_size))
    stream = BatchStream(len(rows), batch_size, engine.world_size, engine.rank, shuffle=False)
    buffer = MetricBuffer()
    for _ in range(stream.batches_per_epoch):
        if should_stop():
            raise StopRequested("held-out evaluation")
        idx = stream.next()
        batch = to_device(collator([rows[i] for i in idx]), engine.device)
        buffer.add(objective(engine, batch, cached[idx] if cached is not None else None, grad=False).metrics)
    return {f"eval/{k}": v for k, v in buffer.drain(engine).items() if k in EVAL_METRICS}
