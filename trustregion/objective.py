"""One training step's objective: forward the policy and the reference on a batch, the method's loss, and its metrics.

Also the SFT log-prob cache (computed once, before training) and the metric buffer that keeps the host
from syncing more than once per log step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from trustregion.config import MethodName
from trustregion.data.tokenize import PairCollator
from trustregion.losses import dpo_loss, ipo_loss, kto_loss, kto_unpaired_loss
from trustregion.models import sequence_logps


@torch.no_grad()
def cached_logps(engine, rows, collator: PairCollator, batch_size: int, average: bool) -> torch.Tensor:
    """Log-probs of every row's chunks under the reference as it is now: a [rows, chunks] tensor.

    Called before training, when the reference is still the SFT model. Each rank computes its
    share; every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively).
    """
    n, k = len(rows), len(collator.chunks)
    out = torch.zeros(n, k, dtype=torch.float32)
    per_rank = -(-n // engine.world_size)
    mine = list(range(engine.rank * per_rank, min(n, (engine.rank + 1) * per_rank)))
    steps = -(-per_rank // batch_size)
    for s in range(steps):
        idx = mine[s * batch_size : (s + 1) * batch_size] or [0]
        batch = to_device(collator([rows[i] for i in idx]), engine.device)
        logps, _ = sequence_logps(engine.reference, batch, average)
        if mine[s * batch_size : (s + 1) * batch_size]:
            out[torch.tensor(idx)] = logps.view(k, -1).t().float().cpu()
    return engine.reduce_sum(out.to(engine.device)).cpu()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def forward_both(engine, batch: dict, sft: torch.Tensor, reference_from_cache: bool, grad: bool,
                 average: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Policy, reference and SFT log-probs as [chunks, batch] tensors, plus response token counts.

    One concatenated forward per model; the reference runs without gradients, or not at all when its
    log-probs are the cached SFT ones (a frozen reference on one process).
    """
    with torch.set_grad_enabled(grad):
        logps, counts = sequence_logps(engine.policy, batch, average)
    if reference_from_cache:
        ref = sft.t().reshape(-1).to(logps.device)
    else:
        with torch.no_grad():
            ref, _ = sequence_logps(engine.reference, batch, average)
    k, b = sft.shape[1], sft.shape[0]
    return logps.view(k, b), ref.view(k, b), sft.t().to(logps.device), counts


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    tokens: torch.Tensor


def preference_step(engine, cfg: DictConfig, batch: dict, sft: torch.Tensor, reference_from_cache: bool,
                    grad: bool = True) -> StepOutput:
    """Forward policy and reference on one batch, and the method's loss with its metrics (all tensors)."""
    if "desirable" in batch:
        return unpaired_step(engine, cfg, batch, sft, reference_from_cache, grad)
    m = cfg.method
    average = bool(m.average_logps)
    pol, ref_c, sft_c, counts = forward_both(engine, batch, sft, reference_from_cache, grad, average)
    k, b = sft.shape[1], sft.shape[0]
    if m.name == MethodName.dpo:
        losses, cr, rr = dpo_loss(pol[0], pol[1], ref_c[0], ref_c[1], m.beta)
    elif m.name == MethodName.ipo:
        losses, cr, rr = ipo_loss(pol[0], pol[1], ref_c[0], ref_c[1], m.beta)
    else:
        mismatched = k == 3
        losses, cr, rr = kto_loss(
            pol[0], pol[1], ref_c[0], ref_c[1], m.beta,
            desirable_weight=m.desirable_weight, undesirable_weight=m.undesirable_weight,
            reference_point=str(m.reference_point.value),
            policy_mismatched_logps=pol[2] if mismatched else None,
            reference_mismatched_logps=ref_c[2] if mismatched else None,
        )
    loss = losses.mean()
    with torch.no_grad():
        sc, sr = m.beta * (pol[0] - sft_c[0]), m.beta * (pol[1] - sft_c[1])
        pair_counts = counts.view(k, b)[:2]
        log_ratio = (pol[:2] - ref_c[:2])
        kl = (log_ratio.mean() if average else log_ratio.sum() / pair_counts.sum().clamp(min=1))
        metrics = {
            "loss": loss.detach(),
            "rewards/chosen": cr.mean(),
            "rewards/rejected": rr.mean(),
            "rewards/margins": (cr - rr).mean(),
            "rewards/accuracies": (cr > rr).float().mean(),
            "rewards/grad_term": (m.beta * torch.sigmoid(rr - cr)).mean(),
            "logps/chosen": pol[0].detach().mean(),
            "logps/rejected": pol[1].detach().mean(),
            "ref/logps/chosen": ref_c[0].mean(),
            "ref/logps/rejected": ref_c[1].mean(),
            "rewards_sft/chosen": sc.mean(),
            "rewards_sft/rejected": sr.mean(),
            "rewards_sft/margins": (sc - sr).mean(),
            "rewards_sft/accuracies": (sc > sr).float().mean(),
            "kl/policy_ref": kl.detach(),
            "lengths/chosen": pair_counts[0].float().mean(),
            "lengths/rejected": pair_counts[1].float().mean(),
        }
    return StepOutput(loss, metrics, counts.sum())


def unpaired_step(engine, cfg: DictConfig, batch: dict, sft: torch.Tensor, reference_from_cache: bool,
                  grad: bool = True) -> StepOutput:
    """KTO on unpaired (prompt, completion, label) rows; chunk 0 is the completion, chunk 1 the mismatched one."""
    m = cfg.method
    average = bool(m.average_logps)
    pol, ref_c, sft_c, counts = forward_both(engine, batch, sft, reference_from_cache, grad, average)
    b = sft.shape[0]
    good = batch["desirable"]
    losses, rewards = kto_unpaired_loss(pol[0], ref_c[0], good, m.beta, m.desirable_weight, m.undesirable_weight,
                                        pol[1], ref_c[1])
    loss = losses.mean()
    with torch.no_grad():
        n_good, n_bad = good.sum().clamp(min=1), (~good).sum().clamp(min=1)
        sft_rewards = m.beta * (pol[0] - sft_c[0])
        n_tokens = counts.view(2, b)[0]
        log_ratio = pol[0] - ref_c[0]
        metrics = {
            "loss": loss.detach(),
            "rewards/chosen": (rewards * good).sum() / n_good,
            "rewards/rejected": (rewards * ~good).sum() / n_bad,
            "rewards_sft/chosen": (sft_rewards * good).sum() / n_good,
            "rewards_sft/rejected": (sft_rewards * ~good).sum() / n_bad,
            "logps/completion": pol[0].detach().mean(),
            "ref/logps/completion": ref_c[0].mean(),
            "kl/policy_ref": (log_ratio.mean() if average else log_ratio.sum() / n_tokens.sum().clamp(min=1)).detach(),
        }
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        metrics["rewards_sft/margins"] = metrics["rewards_sft/chosen"] - metrics["rewards_sft/rejected"]
    return StepOutput(loss, metrics, n_tokens.sum())


class MetricBuffer:
    """Weighted sums of metric tensors between log steps: the host syncs once per log, not once per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        for key, value in metrics.items():
            value = value.detach().float() * weight
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def drain(self, engine) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        means = torch.stack([self.sums[k] / self.weights[k] for k in keys])
        values = engine.reduce_mean(means).tolist()
        self.sums, self.weights = {}, {}
        return dict(zip(keys, values))
