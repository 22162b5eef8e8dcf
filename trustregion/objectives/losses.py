"""Preference losses as pure functions of sequence log-probs.

Every loss takes 1-D tensors of per-example log-probs of the policy and of the reference on the
chosen (y_w) and rejected (y_l) responses, and returns ``(losses, chosen_rewards, rejected_rewards)``
per example, where a reward is the implicit one, ``beta * (log pi_theta - log pi_ref)``, detached.
Whether log-probs are summed or averaged over tokens is the caller's choice (see ``method.average_logps``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LossOutput = tuple[Tensor, Tensor, Tensor]
# The batch mean behind KTO's reference point: ``Tensor.mean`` on one process; across processes, the
# mean over every rank's micro-batch (differentiable), so that N ranks train the objective of one.
BatchMean = Callable[[Tensor], Tensor]


def _mean(t: Tensor) -> Tensor:
    return t.mean()


def _rewards(beta: float, policy: Tensor, reference: Tensor) -> Tensor:
    return (beta * (policy - reference)).detach()


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
) -> LossOutput:
    """DPO: -log sigmoid(beta * [(pi_w - ref_w) - (pi_l - ref_l)]), via logsigmoid so any margin is finite."""
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    losses = -F.logsigmoid(beta * h)
    return (
        losses,
        _rewards(beta, policy_chosen_logps, reference_chosen_logps),
        _rewards(beta, policy_rejected_logps, reference_rejected_logps),
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
) -> LossOutput:
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2 with h the difference of log-ratios.

    The IPO paper and the TR paper's authors' library use summed log-probs; TRL averages them per
    token. Pass averaged log-probs (``method.average_logps=true``) for the latter.
    """
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return (
        losses,
        _rewards(beta, policy_chosen_logps, reference_chosen_logps),
        _rewards(beta, policy_rejected_logps, reference_rejected_logps),
    )


def kto_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    reference_point: str = "mismatched",
    policy_mismatched_logps: Tensor | None = None,
    reference_mismatched_logps: Tensor | None = None,
    batch_mean: BatchMean = _mean,
) -> LossOutput:
    """KTO on pairs: the chosen response is a desirable example, the rejected one undesirable.

    ``reference_point="mismatched"`` (canonical KTO, Ethayarajh et al. 2024):
    z = max(0, batch mean of log pi/pi_ref on mismatched prompt-response pairs), detached; the
    mismatched log-probs must be given. ``reference_point="paired"`` (the TR paper's authors'
    library, TRL's former ``kto_pair``): the chosen half is measured against the clamped batch-mean
    log-ratio of the rejected half and vice versa, not detached.
    Per example: lambda_D * (1 - sigmoid(beta (r_w - z_w))) + lambda_U * (1 - sigmoid(beta (z_l - r_l))).
    ``batch_mean`` takes the batch means (pass a mean over all ranks' micro-batches when distributed).
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    if reference_point == "mismatched":
        if policy_mismatched_logps is None or reference_mismatched_logps is None:
            raise ValueError("kto_loss with reference_point='mismatched' needs the mismatched log-probs")
        z = batch_mean((policy_mismatched_logps - reference_mismatched_logps).detach()).clamp(min=0)
        z_chosen = z_rejected = z
    elif reference_point == "paired":
        z_chosen = batch_mean(rejected_logratios).clamp(min=0)
        z_rejected = batch_mean(chosen_logratios).clamp(min=0)
    else:
        raise ValueError(f"kto_loss: reference_point must be 'mismatched' or 'paired', got {reference_point!r}")
    desirable = 1.0 - torch.sigmoid(beta * (chosen_logratios - z_chosen))
    undesirable = 1.0 - torch.sigmoid(beta * (z_rejected - rejected_logratios))
    losses = desirable_weight * desirable + undesirable_weight * undesirable
    return (
        losses,
        _rewards(beta, policy_chosen_logps, reference_chosen_logps),
        _rewards(beta, policy_rejected_logps, reference_rejected_logps),
    )


def kto_unpaired_loss(
    policy_logps: Tensor,
    reference_logps: Tensor,
    desirable: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    policy_mismatched_logps: Tensor | None = None,
    reference_mismatched_logps: Tensor | None = None,
    batch_mean: BatchMean = _mean,
) -> tuple[Tensor, Tensor]:
    """KTO on unpaired data (prompt, completion, boolean label): returns (losses, rewards) per example.

    The reference point is the detached, clamped batch mean of log pi/pi_ref on mismatched pairs
    when given, else on the batch itself.
    """
    logratios = policy_logps - reference_logps
    if policy_mismatched_logps is not None and reference_mismatched_logps is not None:
        z = batch_mean((policy_mismatched_logps - reference_mismatched_logps).detach()).clamp(min=0)
    else:
        z = batch_mean(logratios.detach()).clamp(min=0)
    good = desirable_weight * (1.0 - torch.sigmoid(beta * (logratios - z)))
    bad = undesirable_weight * (1.0 - torch.sigmoid(beta * (z - logratios)))
    return torch.where(desirable, good, bad), _rewards(beta, policy_logps, reference_logps)
