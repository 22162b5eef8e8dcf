"""TRL 1.16's catalogue of reference-based preference losses (``DPOConfig.loss_type``), as pure functions.

Each loss maps the per-pair ``PairTerms`` (log-ratios log π/π_ref of the chosen and rejected responses, their
f-divergence scores, lengths, and the log-probs AOT sorts) and the ``LossOptions`` to one loss per pair. The
objective (``trustregion.objectives.catalogue``) combines them with weights (MPO) and adds WPO's weights and RPO's
NLL term. Written from the papers each loss names, checked against TRL's code in tests/test_trl_parity.py; where the
two differ the paper is followed and docs/concepts/losses.md says so (cDPO's label smoothing, BCO's reward shift δ, the
α-divergence's coefficient, IPO's length normalisation).

Batch-level quantities go through ``LossOptions.gather`` (AOT's sorts: every rank's pairs) and ``batch_mean`` (the
SFT term's token mean), so N ranks compute the loss of one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# The losses built on the difference of the two scores: the only ones an f-divergence other than reverse KL
# generalises (f-DPO's β log Z(x) cancels in that difference alone).
SCORE_LOSSES = frozenset({"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"})
# Losses whose pairs are sorted across the batch: per-pair weights (WPO) would no longer belong to their pair.
SORTING_LOSSES = frozenset({"aot", "aot_unpaired"})


def _identity(t: Tensor) -> Tensor:
    return t


def _mean(t: Tensor) -> Tensor:
    return t.mean()


@dataclass(frozen=True)
class LossOptions:
    """The settings the losses read; ``gather`` and ``batch_mean`` make batch-level terms mean the same on N ranks."""

    beta: float = 0.1
    label_smoothing: float = 0.0  # cDPO and robust: the label-flip probability; EXO: ε; AOT: its smoothing
    discopop_tau: float = 0.05
    bco_delta: Tensor | float = 0.0  # BCO's reward shift δ (the running mean of the rewards)
    gather: Callable[[Tensor], Tensor] = _identity  # every rank's per-pair values, concatenated (differentiable)
    batch_mean: Callable[[Tensor], Tensor] = _mean  # the mean over every rank's elements (differentiable)


@dataclass(frozen=True)
class PairTerms:
    """One batch of pairs as the losses see it (1-D tensors over pairs)."""

    chosen_logratios: Tensor  # log π(y_w|x) − log π_ref(y_w|x) (summed, LD-weighted or averaged as configured)
    rejected_logratios: Tensor
    chosen_scores: Tensor  # f'(π/π_ref) of the f-divergence (the log-ratio itself for reverse KL)
    rejected_scores: Tensor
    chosen_lengths: Tensor  # response tokens
    rejected_lengths: Tensor
    chosen_logps: Tensor  # log π(y_w|x): AOT sorts π's and π_ref's own margins
    rejected_logps: Tensor
    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor
    chosen_token_logps_sum: Tensor  # Σ_t log π of the chosen tokens, unweighted sums: the SFT term's

    @property
    def score_margin(self) -> Tensor:
        return self.chosen_scores - self.rejected_scores


def f_divergence_scores(logratios: Tensor, kind: str, alpha: float = 0.5) -> Tensor:
    """f'(u) at u = π/π_ref = exp(logratios) (f-DPO, Wang et al. 2023, Table 1): reverse KL log u; forward KL
    1 − 1/u; Jensen–Shannon log(2u / (1 + u)); α-divergence (1 − u^(−α)) / α, reverse KL as α → 0.

    TRL 1.16 computes (u^(α−1) − 1)/(α − 1) for the last, the paper's form at 1 − α (equal at its default 0.5);
    we follow the paper. Its exponent is clamped at 80 as TRL's is, so a large log-ratio stays finite."""
    if kind == "reverse_kl":
        return logratios
    if kind == "forward_kl":
        return 1 - torch.exp(-logratios)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if kind == "alpha_divergence":
        if alpha < 1e-6:
            return logratios
        return (1 - torch.exp(torch.clamp(-alpha * logratios.float(), max=80.0)).to(logratios.dtype)) / alpha
    raise ValueError(f"f_divergence_type must be one of {', '.join(F_DIVERGENCES)}, got {kind!r}")


def _smoothed_sigmoid(z: Tensor, eps: float) -> Tensor:
    """−(1 − ε) log σ(z) − ε log σ(−z): the logistic loss with labels flipped with probability ε."""
    loss = -F.logsigmoid(z)
    return loss if eps == 0 else (1 - eps) * loss - eps * F.logsigmoid(-z)


def sigmoid(t: PairTerms, o: LossOptions) -> Tensor:
    """DPO (Rafailov et al. 2023); with ``label_smoothing`` ε > 0, conservative DPO (cDPO, Mitchell 2023). TRL 1.16
    ignores ε here; we follow cDPO's note."""
    return _smoothed_sigmoid(o.beta * t.score_margin, o.label_smoothing)


def hinge(t: PairTerms, o: LossOptions) -> Tensor:
    """SLiC's hinge on the DPO margin (Zhao et al. 2023; Liu et al. 2024, RSO): max(0, 1 − β h)."""
    return torch.relu(1 - o.beta * t.score_margin)


def ipo(t: PairTerms, o: LossOptions) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17): (h − 1/(2β))² on the sequences' log-ratios as given. TRL divides each score by
    its response length; ``average_logps=true`` gives that (for reverse KL exactly)."""
    return (t.score_margin - 1 / (2 * o.beta)) ** 2


def exo_pair(t: PairTerms, o: LossOptions) -> Tensor:
    """EXO on pairs (Ji et al. 2024, eq. 16): KL(softmax(β r) ‖ [1 − ε, ε]) over {chosen, rejected}; ε > 0."""
    z = o.beta * t.score_margin
    eps = torch.tensor(o.label_smoothing, dtype=z.dtype, device=z.device)
    win, lose = F.logsigmoid(z), F.logsigmoid(-z)
    return win.exp() * (win - torch.log1p(-eps)) + lose.exp() * (lose - torch.log(eps))


def nca_pair(t: PairTerms, o: LossOptions) -> Tensor:
    """NCA (Chen et al. 2024): −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l), r = β log π/π_ref."""
    rw, rl = o.beta * t.chosen_logratios, o.beta * t.rejected_logratios
    return -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl)


def robust(t: PairTerms, o: LossOptions) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024): the unbiased loss under labels flipped with probability ε < ½."""
    z, eps = o.beta * t.score_margin, o.label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def bco_pair(t: PairTerms, o: LossOptions) -> Tensor:
    """BCO on pairs (Jung et al. 2024): −log σ(r_w − δ) − log σ(−(r_l − δ)) with δ the running mean of the rewards
    (``LossOptions.bco_delta``); TRL 1.16 drops δ (δ = 0)."""
    rw, rl = o.beta * t.chosen_logratios, o.beta * t.rejected_logratios
    return -F.logsigmoid(rw - o.bco_delta) - F.logsigmoid(-(rl - o.bco_delta))


def sppo_hard(t: PairTerms, o: LossOptions) -> Tensor:
    """SPPO with hard labels (Wu et al. 2024, eq. 4.7 with P = 1 for the winner, 0 for the loser)."""
    half = 0.5 / o.beta
    return (t.chosen_logratios - half) ** 2 + (t.rejected_logratios + half) ** 2


def aot(t: PairTerms, o: LossOptions) -> Tensor:
    """AOT on pairs (Melnyk et al. 2024): the policy's sorted margins log π(y_w) − log π(y_l) against the
    reference's sorted margins, over every rank's pairs; one loss per pair of the whole batch."""
    policy = torch.sort(o.gather(t.chosen_logps - t.rejected_logps), dim=0).values
    reference = torch.sort(o.gather(t.ref_chosen_logps - t.ref_rejected_logps), dim=0).values
    return _smoothed_sigmoid(o.beta * (policy - reference), o.label_smoothing)


def aot_unpaired(t: PairTerms, o: LossOptions) -> Tensor:
    """AOT unpaired (Melnyk et al. 2024): the sorted chosen log-ratios against the sorted rejected ones."""
    chosen = torch.sort(o.gather(t.chosen_logratios), dim=0).values
    rejected = torch.sort(o.gather(t.rejected_logratios), dim=0).values
    return _smoothed_sigmoid(o.beta * (chosen - rejected), o.label_smoothing)


def apo_zero(t: PairTerms, o: LossOptions) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7): raise the chosen likelihood, lower the rejected."""
    return 1 - torch.sigmoid(o.beta * t.chosen_logratios) + torch.sigmoid(o.beta * t.rejected_logratios)


def apo_down(t: PairTerms, o: LossOptions) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024, eq. 8): lower both, the rejected more."""
    rw, rl = o.beta * t.chosen_logratios, o.beta * t.rejected_logratios
    return torch.sigmoid(rw) + 1 - torch.sigmoid(rw - rl)


def discopop(t: PairTerms, o: LossOptions) -> Tensor:
    """DiscoPOP's log-ratio modulated loss (Chris Lu et al. 2024, eq. 5): logistic and exponential losses mixed by
    σ(β h / τ)."""
    z = o.beta * t.score_margin
    mix = torch.sigmoid(z / o.discopop_tau)
    return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix


def sft(t: PairTerms, o: LossOptions) -> Tensor:
    """The NLL of the chosen responses, averaged over every chosen token of the batch (every rank's), as TRL's
    ``sft`` (MPO's generation loss); the same value for each pair."""
    nll = -o.batch_mean(t.chosen_token_logps_sum) / o.batch_mean(t.chosen_lengths.to(t.chosen_logratios.dtype))
    return nll.expand(t.chosen_logratios.shape[0])


def sigmoid_norm(t: PairTerms, o: LossOptions) -> Tensor:
    """DPO on each score divided by its response length (TRL's length-normalised sigmoid)."""
    chosen = t.chosen_scores / t.chosen_lengths.clamp(min=1)
    rejected = t.rejected_scores / t.rejected_lengths.clamp(min=1)
    return -F.logsigmoid(o.beta * (chosen - rejected))


LOSSES: dict[str, Callable[[PairTerms, LossOptions], Tensor]] = {
    "sigmoid": sigmoid, "hinge": hinge, "ipo": ipo, "exo_pair": exo_pair, "nca_pair": nca_pair, "robust": robust,
    "bco_pair": bco_pair, "sppo_hard": sppo_hard, "aot": aot, "aot_unpaired": aot_unpaired, "apo_zero": apo_zero,
    "apo_down": apo_down, "discopop": discopop, "sft": sft, "sigmoid_norm": sigmoid_norm,
}  # fmt: skip


def pair_terms(
    policy: Tensor, reference: Tensor, counts: Tensor, chosen_token_logps_sum: Tensor, f_type: str, f_alpha: float
) -> PairTerms:
    """``PairTerms`` from [2, pairs] log-probs of the policy and the reference (row 0 chosen, row 1 rejected), their
    response token counts, and the chosen responses' unweighted log-prob sums (the SFT term's)."""
    logratios = policy[:2] - reference[:2]
    scores = f_divergence_scores(logratios, f_type, f_alpha)
    return PairTerms(
        chosen_logratios=logratios[0],
        rejected_logratios=logratios[1],
        chosen_scores=scores[0],
        rejected_scores=scores[1],
        chosen_lengths=counts[0],
        rejected_lengths=counts[1],
        chosen_logps=policy[0],
        rejected_logps=policy[1],
        ref_chosen_logps=reference[0],
        ref_rejected_logps=reference[1],
        chosen_token_logps_sum=chosen_token_logps_sum,
    )


def combined_loss(
    terms: PairTerms, o: LossOptions, loss_types: list[str], weights: list[float], pair_weights: Tensor | None = None
) -> Tensor:
    """Σ_k w_k · mean over pairs of loss_k (MPO when several); ``pair_weights`` (WPO's) multiply each pair's losses."""
    total = terms.chosen_logratios.new_zeros(())
    for name, weight in zip(loss_types, weights):
        per_pair = LOSSES[name](terms, o)
        if pair_weights is not None:
            per_pair = per_pair * pair_weights
        total = total + per_pair.mean() * weight
    return total


def ld_weighted_sums(
    token_logps: Tensor, row: Tensor, rank: Tensor, counts: Tensor, pairs: int, ld_alpha: float
) -> Tensor:
    """LD-DPO's log-probs (Liu et al. 2024): per row Σ_t w_t log p_t with w = 1 on the first ℓ response tokens, ℓ
    the shorter response of the row's pair, and ``ld_alpha`` on the rest. Tokens come packed: ``row`` each token's
    row (chosen rows 0..pairs−1, then rejected), ``rank`` its index in the row's response; ``counts`` per row."""
    shared = torch.minimum(counts[:pairs], counts[pairs : 2 * pairs])
    limit = torch.cat([shared, shared, counts[2 * pairs :]])  # rows past the pairs (none here) keep every token
    weight = torch.where(rank < limit[row], 1.0, ld_alpha).to(token_logps.dtype)
    return token_logps.new_zeros(counts.shape[0]).index_add(0, row, token_logps * weight)


@torch.no_grad()
def wpo_weights(token_logps: Tensor, log_sum_sq: Tensor, row: Tensor, counts: Tensor, pairs: int) -> Tensor:
    """WPO's pair weights (Zhou et al. 2024, eq. 2 with the aligned sampling probabilities): per response
    exp(mean_t [log p_t − log Σ_v p_v²]), the chosen one's times the rejected one's; detached."""
    per_row = token_logps.new_zeros(counts.shape[0]).index_add(0, row, token_logps.detach() - log_sum_sq)
    weights = torch.exp(per_row / counts.clamp(min=1))
    return weights[:pairs] * weights[pairs : 2 * pairs]


def rpo_nll(
    chosen_logps_sum: Tensor, chosen_sequence_lengths: Tensor, batch_mean: Callable[[Tensor], Tensor]
) -> Tensor:
    """RPO's NLL term (Pang et al. 2024, eq. 2): −log π(y_w|x) / |x + y_w| per pair (the whole sequence's length,
    prompt included, as the paper writes it), averaged over every rank's pairs. TRL's former ``rpo_alpha`` took the
    token mean over the batch instead."""
    return batch_mean(-chosen_logps_sum / chosen_sequence_lengths.clamp(min=1).to(chosen_logps_sum.dtype))


class RunningMean:
    """BCO's δ: the mean of every training batch's mean reward so far (each batch's over every rank's pairs, so
    every rank holds the same δ); a device tensor, never synced to the host."""

    def __init__(self) -> None:
        self.mean = torch.zeros(())
        self.count = torch.zeros(())

    def update(self, batch_mean: Tensor) -> Tensor:
        """Fold in one batch's mean (detached) and return the new running mean."""
        value = batch_mean.detach().float()
        self.mean, self.count = self.mean.to(value.device), self.count.to(value.device)
        self.count = self.count + 1
        self.mean = self.mean + (value - self.mean) / self.count
        return self.mean

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean.cpu(), "count": self.count.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.mean, self.count = state["mean"].clone(), state["count"].clone()
