"""``method=dpo`` and its presets (``method=hinge``, ``method=bco_pair``, ``method=mpo``, ...): TRL 1.16's DPO loss
catalogue with TRL's option names and defaults, against a frozen or moving reference.

The losses themselves are pure functions (``trustregion.objectives.pair_losses``); this module turns a batch into
their inputs: LD-DPO's weighted log-probs (policy, reference and the cached SFT ones alike), WPO's pair weights from
the policy's per-token distributions, BCO's running reward mean δ (the same on every rank; saved in checkpoints), the
SFT and RPO terms' chosen log-probs. Batch-level terms go through the engine's collectives, so N ranks train what one
process trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from trustregion.config import MethodConfig
from trustregion.data.tokenize import padding_fraction
from trustregion.models.loading import sequence_logps
from trustregion.models.logps import LogpsFn
from trustregion.objectives.objective import Objective, StepOutput, _text
from trustregion.objectives.pair_losses import (
    LOSS_TYPES,
    SCORE_LOSSES,
    SORTING_LOSSES,
    LossOptions,
    RunningMean,
    combined_loss,
    ld_weighted_sums,
    pair_terms,
    rpo_nll,
    wpo_weights,
)
from trustregion.schema import HALF_OPEN, NON_NEGATIVE, POSITIVE, Range, check, each, one_of, or_null, setting

Tensor = torch.Tensor


class FDivergence(str, Enum):
    reverse_kl = "reverse_kl"
    forward_kl = "forward_kl"
    js_divergence = "js_divergence"
    alpha_divergence = "alpha_divergence"


UNIT = Range(lambda v: isinstance(v, (int, float)) and 0 <= v <= 1, "a number in [0, 1]")
OPEN_UNIT = Range(lambda v: isinstance(v, (int, float)) and 0 < v < 1, "a number in (0, 1)")


@dataclass
class DPOConfig(MethodConfig):
    """TRL 1.16's ``DPOConfig`` loss settings, same names and defaults."""

    name: str = "dpo"
    loss_type: list[str] = setting(
        meaning=f"the losses, summed with loss_weights (MPO): {', '.join(LOSS_TYPES)}",
        check=each(one_of(*LOSS_TYPES)),
        factory=lambda: ["sigmoid"],
    )
    loss_weights: Optional[list[float]] = setting(
        None, "one weight per loss_type; null: 1 each", or_null(each(NON_NEGATIVE))
    )
    label_smoothing: float = setting(
        0.0,
        "sigmoid: cDPO's label-flip probability; robust: the flip probability, < 0.5; exo_pair: ε > 0 (1e-3 in the "
        "paper); aot, aot_unpaired: their smoothing",
        HALF_OPEN,
    )
    ld_alpha: Optional[float] = setting(
        None, "LD-DPO: the weight of response tokens past the pair's shorter response; null: 1 (plain log-probs)",
        or_null(UNIT),
    )  # fmt: skip
    f_divergence_type: FDivergence = setting(
        FDivergence.reverse_kl,
        "f-DPO's divergence: reverse_kl, forward_kl, js_divergence or alpha_divergence (losses on the score margin only)",
    )
    f_alpha_divergence_coef: float = setting(
        0.5, "α of the α-divergence, as in the f-DPO paper ((1 − u^−α)/α; TRL's coefficient is 1 − this)", OPEN_UNIT
    )
    use_weighting: bool = setting(False, "WPO: weight each pair by its responses' length-normalised probabilities")
    rpo_alpha: Optional[float] = setting(
        None, "RPO: add this times the chosen responses' NLL per sequence token; null: none", or_null(NON_NEGATIVE)
    )
    discopop_tau: float = setting(0.05, "DiscoPOP's temperature τ", POSITIVE)

    @classmethod
    def check_together(cls, m: DictConfig, root: DictConfig) -> None:
        types = list(m.loss_type)
        check(len(types) > 0, "method.loss_type", types, f"a list of one or more of {', '.join(LOSS_TYPES)}")
        weights = m.loss_weights
        check(
            weights is None or len(weights) == len(types),
            "method.loss_weights",
            weights,
            f"null or {len(types)} numbers, one per method.loss_type",
        )
        divergence = str(m.f_divergence_type.value if isinstance(m.f_divergence_type, Enum) else m.f_divergence_type)
        unsupported = [t for t in types if t not in SCORE_LOSSES]
        check(
            divergence == "reverse_kl" or not unsupported,
            "method.f_divergence_type",
            divergence,
            f"reverse_kl with {', '.join(unsupported)} (only {', '.join(sorted(SCORE_LOSSES))} are on the score "
            "margin, where f-DPO's log Z(x) cancels)",
        )
        sorting = [t for t in types if t in SORTING_LOSSES]
        check(
            not (m.use_weighting and sorting),
            "method.use_weighting",
            "true",
            f"false with {', '.join(sorting)} (it sorts the pairs, so a pair's weight would land on another pair)",
        )
        check(
            "robust" not in types or m.label_smoothing < 0.5,
            "method.label_smoothing",
            m.label_smoothing,
            "a number in [0, 0.5) for robust (the probability that a label is flipped)",
        )
        check(
            "exo_pair" not in types or m.label_smoothing > 0,
            "method.label_smoothing",
            m.label_smoothing,
            "a number in (0, 1) for exo_pair (its ε; the EXO paper uses 1e-3)",
        )
        check(
            "sigmoid_norm" not in types or not m.average_logps,
            "method.average_logps",
            "true",
            "false with sigmoid_norm (it divides by the response length itself)",
        )


@dataclass
class PolicyLogps:
    """The policy's side of a batch: sequence log-probs as the losses use them [chunks, pairs], response token counts,
    the chosen responses' unweighted log-prob sums, and WPO's pair weights (or None)."""

    sequences: Tensor
    counts: Tensor
    chosen_sums: Tensor
    pair_weights: Tensor | None


class LDLogps:
    """A log-prob function whose sequence log-probs are LD-DPO's (``ld_weighted_sums``) for batches of pairs: what
    the reference and the cached SFT log-probs are scored with."""

    def __init__(self, base: LogpsFn, ld_alpha: float) -> None:
        self.base, self.ld_alpha = base, ld_alpha

    def __call__(self, model, batch: dict, average: bool, **_: Any) -> tuple[Tensor, Tensor]:
        sums, counts, tokens = self.base(model, batch, False, tokens=True)
        pairs = counts.shape[0] // 2
        weighted = ld_weighted_sums(tokens.logps, tokens.row, tokens.rank, counts, pairs, self.ld_alpha)
        return (weighted / counts.clamp(min=1) if average else weighted), counts


class DPO(Objective):
    """TRL 1.16's DPO loss catalogue: one or several ``loss_type`` s with weights, and its options."""

    name = "dpo"
    config_class = DPOConfig

    def __init__(self, method_cfg: Any, logps: LogpsFn = sequence_logps) -> None:
        super().__init__(method_cfg, logps)
        m = method_cfg
        self.types = [str(t) for t in m.loss_type]
        self.weights = [float(w) for w in (m.loss_weights or [1.0] * len(self.types))]
        self.base_logps = logps
        self.ld_alpha = None if m.ld_alpha is None else float(m.ld_alpha)
        if self.ld_alpha is not None:
            self.logps = LDLogps(logps, self.ld_alpha)  # the reference's and the SFT model's log-probs
        self.divergence = str(FDivergence(m.f_divergence_type).value)
        self.bco = RunningMean() if "bco_pair" in self.types else None

    @classmethod
    def describe(cls, method_cfg: Any) -> str:
        """``hinge β=0.1``: the loss list is left out where the preset's name says it."""
        label = super().describe(method_cfg)
        own = [str(method_cfg.name)] if str(method_cfg.name) != "dpo" else ["sigmoid"]
        if list(method_cfg.loss_type) == own:
            label = label.replace(f" loss_type={_text(method_cfg.loss_type)}", "")
        return label

    def policy_logps(self, model, batch: dict) -> PolicyLogps:
        """Sequence log-probs (LD-weighted, averaged as configured), counts, chosen sums, WPO's weights."""
        m, pairs = self.cfg, batch["input_ids"].shape[0] // len(self.chunks)
        if self.ld_alpha is None and not m.use_weighting:
            sequences, counts = self.base_logps(model, batch, self.average)
            sums = sequences * counts if self.average else sequences
            return PolicyLogps(sequences, counts, sums[:pairs], None)
        sums, counts, tokens = self.base_logps(model, batch, False, tokens=True, sum_sq=bool(m.use_weighting))
        sequences = sums
        if self.ld_alpha is not None:
            sequences = ld_weighted_sums(tokens.logps, tokens.row, tokens.rank, counts, pairs, self.ld_alpha)
        if self.average:
            sequences = sequences / counts.clamp(min=1)
        weights = None
        if m.use_weighting:
            weights = wpo_weights(tokens.logps, tokens.log_sum_sq, tokens.row, counts, pairs)
        return PolicyLogps(sequences, counts, sums[:pairs], weights)

    def __call__(self, engine, batch: dict, cached: Tensor, grad: bool = True) -> StepOutput:
        m, k = self.cfg, len(self.chunks)
        with torch.set_grad_enabled(grad):
            policy = self.policy_logps(engine.policy, batch)
        b = cached.shape[0]
        if self.reference_from_cache:
            ref = cached.t().reshape(-1).to(policy.sequences.device)
        else:
            with torch.no_grad():
                ref, _ = self.logps(engine.reference, batch, self.average)
        pol, ref = policy.sequences.view(k, b), ref.view(k, b)
        counts = policy.counts.view(k, b)
        terms = pair_terms(pol, ref, counts, policy.chosen_sums, self.divergence, float(m.f_alpha_divergence_coef))
        options = LossOptions(
            beta=float(m.beta),
            label_smoothing=float(m.label_smoothing),
            discopop_tau=float(m.discopop_tau),
            bco_delta=self.bco_delta(engine, terms.chosen_logratios, terms.rejected_logratios, grad),
            gather=engine.batch_gather,
            batch_mean=engine.batch_mean,
        )
        loss = combined_loss(terms, options, self.types, self.weights, policy.pair_weights)
        if m.rpo_alpha is not None:
            lengths = batch["attention_mask"][:b].sum(1)
            loss = loss + float(m.rpo_alpha) * rpo_nll(policy.chosen_sums, lengths, engine.batch_mean)
        with torch.no_grad():
            beta = float(m.beta)
            cr, rr = beta * terms.chosen_logratios.detach(), beta * terms.rejected_logratios.detach()
            metrics = self.pair_metrics(pol, ref, cached.t().to(pol.device), counts, cr, rr)
            metrics["loss"] = loss.detach()
            metrics["data/padding_fraction"] = padding_fraction(batch)
            if self.bco is not None:
                metrics["bco/delta"] = options.bco_delta
            if policy.pair_weights is not None:
                metrics["wpo/weight"] = policy.pair_weights.mean()
        return StepOutput(loss, metrics, counts.sum())

    def bco_delta(self, engine, chosen_logratios: Tensor, rejected_logratios: Tensor, training: bool) -> Tensor | float:
        """BCO's δ: on a training batch, folds in the batch's mean reward over every rank's pairs, then returns the
        running mean; held-out batches read it unchanged. 0 without ``bco_pair``."""
        if self.bco is None:
            return 0.0
        if training:
            rewards = float(self.cfg.beta) * torch.cat([chosen_logratios, rejected_logratios]).detach()
            return self.bco.update(engine.batch_mean(rewards))
        return self.bco.mean.to(chosen_logratios.device)

    def state_dict(self) -> dict[str, Any]:
        return {"bco": self.bco.state_dict()} if self.bco is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.bco is not None and "bco" in state:
            self.bco.load_state_dict(state["bco"])

    def logps_settings(self) -> dict[str, Any]:
        """What changes the cached SFT log-probs beyond the model and rows: LD-DPO's weighting."""
        return {"ld_alpha": self.ld_alpha} if self.ld_alpha is not None else {}
