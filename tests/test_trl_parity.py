"""Every loss of TRL 1.16's DPO catalogue and each of its options, against TRL's own code: the loss and its gradient
with respect to every response token's log-prob, on the same per-token log-probs. TRL's ``DPOTrainer._compute_loss``
runs as it does in training, on a trainer built once with a tiny model; only the two models' outputs are stand-ins
that return the given per-token log-probs (TRL's fused head returns them the same way). Where TRL's code and the
loss's paper differ, the paper's formula is the test (the last tests here)."""

from __future__ import annotations

import math
import tempfile
import types

import pytest
import torch
import torch.nn.functional as F

from trustregion.objectives.pair_losses import (
    LossOptions,
    RunningMean,
    combined_loss,
    f_divergence_scores,
    ld_weighted_sums,
    pair_terms,
    rpo_nll,
    wpo_weights,
)

pytestmark = pytest.mark.unit  # no training run, no subprocess

PAIRS, WIDTH = 4, 9
LENGTHS = [3, 7, 5, 2, 6, 2, 5, 8]  # response tokens: chosen rows, then rejected rows
TOL = {"atol": 2e-6, "rtol": 1e-5}  # float32 throughout (TRL's α-divergence only takes 16/32-bit tensors)


class LogProbs(torch.nn.Module):
    """A model stand-in: returns fixed per-token log-probs (and WPO's log Σ p²) as TRL's fused LM head would."""

    def __init__(self, log_probs: torch.Tensor, log_sum_sq: torch.Tensor | None = None) -> None:
        super().__init__()
        self.log_probs, self.log_sum_sq = log_probs, log_sum_sq

    def forward(self, **_: object) -> types.SimpleNamespace:
        zeros = torch.zeros_like(self.log_probs.detach())
        sq = self.log_sum_sq if self.log_sum_sq is not None else zeros
        return types.SimpleNamespace(
            log_probs=self.log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), log_sum_sq_probs=sq
        )


@pytest.fixture(scope="module")
def trainer():
    from datasets import Dataset
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from trl import DPOConfig, DPOTrainer

    from tests.fixtures.tiny_models import pythia_tokenizer

    tokenizer = pythia_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    shape = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    rows = Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]})
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, report_to=[], bf16=False, gradient_checkpointing=False, use_cpu=True)
        built = DPOTrainer(
            model=GPTNeoXForCausalLM(shape),
            ref_model=GPTNeoXForCausalLM(shape),
            args=args,
            train_dataset=rows,
            processing_class=tokenizer,
        )
    built.model.train()
    return built


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-token log-probs of the policy and the reference on 4 pairs of uneven lengths, and WPO's log Σ p²."""
    g = torch.Generator().manual_seed(seed)
    completion = torch.zeros(2 * PAIRS, WIDTH, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        completion[i, 1 : 1 + n] = 1
    shifted = completion[:, 1:].float()
    policy = -(torch.rand(2 * PAIRS, WIDTH - 1, generator=g) * 2 + 0.05) * shifted
    reference = policy.detach() + 0.3 * torch.randn(policy.shape, generator=g) * shifted
    log_sum_sq = -(torch.rand(policy.shape, generator=g) * 1.5) * shifted
    return {"completion": completion, "policy": policy, "reference": reference, "log_sum_sq": log_sum_sq}


SETTINGS = {  # TRL's names and defaults
    "loss_type": ["sigmoid"],
    "loss_weights": None,
    "beta": 0.1,
    "label_smoothing": 0.0,
    "ld_alpha": None,
    "f_divergence_type": "reverse_kl",
    "f_alpha_divergence_coef": 0.5,
    "use_weighting": False,
    "discopop_tau": 0.05,
}


def trl_loss(trainer, data: dict, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's loss and its gradient with respect to the policy's per-token log-probs."""
    s = {**SETTINGS, **settings}
    trainer.loss_types, trainer.beta = list(s["loss_type"]), s["beta"]
    trainer.loss_weights = s["loss_weights"] or [1.0] * len(s["loss_type"])
    trainer.label_smoothing, trainer.ld_alpha, trainer.use_weighting = (
        s["label_smoothing"],
        s["ld_alpha"],
        s["use_weighting"],
    )
    trainer.f_divergence_type, trainer.f_alpha_divergence_coef = s["f_divergence_type"], s["f_alpha_divergence_coef"]
    trainer.args.discopop_tau = s["discopop_tau"]
    policy = data["policy"].clone().requires_grad_()
    trainer.ref_model = LogProbs(data["reference"])
    ids = torch.zeros_like(data["completion"])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": data["completion"]}
    loss = trainer._compute_loss(LogProbs(policy, data["log_sum_sq"]), inputs, False)
    loss.backward()
    return loss.detach(), policy.grad


def our_loss(
    data: dict, average: bool = False, bco_delta: float = 0.0, **settings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Our loss from the same per-token log-probs, the way the catalogue objective composes it (tokens packed as the
    log-prob functions give them: row, rank in the row's response)."""
    s = {**SETTINGS, **settings}
    mask = data["completion"][:, 1:].bool()
    row, pos = mask.nonzero(as_tuple=True)
    rank = (mask.cumsum(1) - 1)[row, pos]
    counts = mask.sum(1)
    policy = data["policy"].clone().requires_grad_()
    tokens, ref_tokens = policy[row, pos], data["reference"][row, pos]

    def sums(t: torch.Tensor) -> torch.Tensor:
        if s["ld_alpha"] is None:
            return t.new_zeros(2 * PAIRS).index_add(0, row, t)
        return ld_weighted_sums(t, row, rank, counts, PAIRS, s["ld_alpha"])

    raw_chosen = tokens.new_zeros(2 * PAIRS).index_add(0, row, tokens)[:PAIRS]
    pol, ref = sums(tokens), sums(ref_tokens)
    if average:
        pol, ref = pol / counts, ref / counts
    terms = pair_terms(
        pol.view(2, PAIRS), ref.view(2, PAIRS), counts.view(2, PAIRS), raw_chosen, s["f_divergence_type"],
        s["f_alpha_divergence_coef"],
    )  # fmt: skip
    weights = wpo_weights(tokens, data["log_sum_sq"][row, pos], row, counts, PAIRS) if s["use_weighting"] else None
    options = LossOptions(s["beta"], s["label_smoothing"], s["discopop_tau"], bco_delta)
    types_ = list(s["loss_type"])
    loss = combined_loss(terms, options, types_, s["loss_weights"] or [1.0] * len(types_), weights)
    loss.backward()
    return loss.detach(), policy.grad * mask


def assert_parity(trainer, our_settings: dict | None = None, **settings) -> None:
    data = batch()
    theirs, their_grad = trl_loss(trainer, data, **settings)
    ours, our_grad = our_loss(data, **{**settings, **(our_settings or {})})
    torch.testing.assert_close(ours, theirs, **TOL)
    mask = data["completion"][:, 1:].bool()
    torch.testing.assert_close(our_grad, their_grad * mask, **TOL)
    assert their_grad[mask].abs().sum() > 0, "the gradient reaches the response tokens"


EACH_LOSS = [
    ("sigmoid", {}), ("hinge", {}), ("exo_pair", {"label_smoothing": 1e-3}), ("nca_pair", {}),
    ("robust", {"label_smoothing": 0.1}), ("bco_pair", {}), ("sppo_hard", {}), ("aot", {}), ("aot_unpaired", {}),
    ("apo_zero", {}), ("apo_down", {}), ("discopop", {}), ("sft", {}), ("sigmoid_norm", {}),
]  # fmt: skip


@pytest.mark.parametrize(("loss", "options"), EACH_LOSS, ids=[name for name, _ in EACH_LOSS])
def test_each_loss_and_its_gradient_equal_trls(trainer, loss, options):
    assert_parity(trainer, loss_type=[loss], beta=0.5, **options)


def test_ipo_equals_trls_on_per_token_log_probs(trainer):
    """TRL's IPO divides each sequence's log-ratio by its length: ours does with ``average_logps=true``."""
    assert_parity(trainer, {"average": True}, loss_type=["ipo"], beta=0.5)


@pytest.mark.parametrize(
    ("loss", "smoothing"), [("robust", 0.3), ("exo_pair", 0.05), ("aot", 0.2), ("aot_unpaired", 0.2)]
)
def test_label_smoothing_equals_trls(trainer, loss, smoothing):
    assert_parity(trainer, loss_type=[loss], label_smoothing=smoothing)


@pytest.mark.parametrize("ld_alpha", [0.0, 0.4, 1.0])
def test_ld_alpha_weights_the_tokens_past_the_shorter_response_as_trl_does(trainer, ld_alpha):
    assert_parity(trainer, loss_type=["sigmoid"], ld_alpha=ld_alpha, beta=0.5)


def test_ld_alpha_leaves_the_sft_term_unweighted_as_trl_does(trainer):
    assert_parity(trainer, loss_type=["sigmoid", "sft"], ld_alpha=0.3)


F_LOSSES = ["sigmoid", "hinge", "exo_pair", "robust", "discopop", "sft", "sigmoid_norm"]


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("loss", F_LOSSES)
def test_each_f_divergence_equals_trls(trainer, divergence, loss):
    smoothing = {"exo_pair": 1e-3, "robust": 0.1}.get(loss, 0.0)
    assert_parity(trainer, loss_type=[loss], f_divergence_type=divergence, label_smoothing=smoothing, beta=0.5)


def test_the_alpha_divergence_coefficient_is_the_papers_trls_is_one_minus_it(trainer):
    data = batch()
    theirs, their_grad = trl_loss(trainer, data, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.7)
    ours, our_grad = our_loss(data, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(our_grad, their_grad * data["completion"][:, 1:].bool(), **TOL)


@pytest.mark.parametrize(
    "loss", ["sigmoid", "ipo", "bco_pair", "apo_zero", "nca_pair"]
)  # TRL 1.16 fails on sft: it writes into an expanded tensor
def test_wpo_weighting_equals_trls(trainer, loss):
    assert_parity(trainer, {"average": loss == "ipo"}, loss_type=[loss], use_weighting=True, beta=0.5)


def test_mpo_weighted_losses_equal_trls(trainer):
    assert_parity(trainer, loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])


def test_discopop_tau_equals_trls(trainer):
    assert_parity(trainer, loss_type=["discopop"], discopop_tau=0.5, beta=0.5)


def test_every_option_at_once_equals_trls(trainer):
    assert_parity(
        trainer,
        loss_type=["robust", "sigmoid_norm", "discopop"],  # TRL 1.16 fails on hinge with use_weighting (in place)
        loss_weights=[0.5, 1.5, 0.2],
        label_smoothing=0.15,
        ld_alpha=0.6,
        f_divergence_type="js_divergence",
        use_weighting=True,
        beta=0.3,
    )


# --- Where TRL's code differs from the paper: the paper's formula ---------------------------------------------------


def test_label_smoothing_makes_sigmoid_conservative_dpo_which_trl_ignores(trainer):
    """cDPO (Mitchell 2023): −(1 − ε) log σ(β h) − ε log σ(−β h); TRL 1.16's sigmoid has no ε."""
    data, eps, beta = batch(), 0.2, 0.5
    ours, _ = our_loss(data, loss_type=["sigmoid"], label_smoothing=eps, beta=beta)
    mask = data["completion"][:, 1:].float()
    h = ((data["policy"] - data["reference"]) * mask).sum(1)
    z = beta * (h[:PAIRS] - h[PAIRS:])
    expected = (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).mean()
    torch.testing.assert_close(ours, expected, **TOL)
    assert not torch.isclose(ours, trl_loss(trainer, data, loss_type=["sigmoid"], label_smoothing=eps, beta=beta)[0])


def test_bco_shifts_the_rewards_by_delta_which_trl_drops():
    """BCO (Jung et al. 2024): −log σ(r_w − δ) − log σ(−(r_l − δ)); TRL 1.16 has δ = 0 (tested above)."""
    data, beta, delta = batch(), 0.5, 0.37
    ours, _ = our_loss(data, loss_type=["bco_pair"], beta=beta, bco_delta=delta)
    mask = data["completion"][:, 1:].float()
    r = beta * ((data["policy"] - data["reference"]) * mask).sum(1)
    expected = (-F.logsigmoid(r[:PAIRS] - delta) - F.logsigmoid(-(r[PAIRS:] - delta))).mean()
    torch.testing.assert_close(ours, expected, **TOL)


def test_bcos_delta_is_the_mean_of_every_batchs_mean_reward():
    running = RunningMean()
    for value in (1.0, 4.0, -2.0):
        delta = running.update(torch.tensor(value))
    assert delta.item() == pytest.approx(1.0)
    saved = running.state_dict()
    again = RunningMean()
    again.load_state_dict(saved)
    assert again.update(torch.tensor(5.0)).item() == pytest.approx(2.0)


def test_ipo_on_summed_log_ratios_is_the_papers_under_any_f_divergence():
    """IPO's h is on sequences (Azar et al. 2023); TRL divides f(h_w) by the length, we keep the paper's h."""
    data, beta = batch(), 0.5
    ours, _ = our_loss(data, loss_type=["ipo"], f_divergence_type="forward_kl", beta=beta)
    mask = data["completion"][:, 1:].float()
    scores = 1 - torch.exp(-((data["policy"] - data["reference"]) * mask).sum(1))
    expected = ((scores[:PAIRS] - scores[PAIRS:] - 1 / (2 * beta)) ** 2).mean()
    torch.testing.assert_close(ours, expected, **TOL)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.9])
def test_the_alpha_divergence_score_is_the_papers_derivative(alpha):
    """f-DPO Table 1: f(u) = (u^(1−α) − (1−α)u − α)/(α(α−1)), so f'(u) = (1 − u^(−α))/α; reverse KL as α → 0."""
    u = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    expected = (1 - u ** (-alpha)) / alpha
    torch.testing.assert_close(f_divergence_scores(u.log(), "alpha_divergence", alpha), expected)
    torch.testing.assert_close(f_divergence_scores(u.log(), "alpha_divergence", 1e-9), u.log())


def test_rpos_nll_is_each_chosen_sequences_log_prob_over_its_length():
    """RPO (Pang et al. 2024, eq. 2): −log M(x, y_w) / |x + y_w|, averaged over pairs."""
    logps, lengths = torch.tensor([-6.0, -12.0]), torch.tensor([3, 8])
    assert rpo_nll(logps, lengths, lambda t: t.mean()).item() == pytest.approx((2.0 + 1.5) / 2)


def test_extreme_margins_stay_finite_in_every_loss():
    from trustregion.objectives.pair_losses import LOSSES

    big = torch.tensor([[80.0, -80.0], [-80.0, 80.0]], requires_grad=True)
    zero = torch.zeros(2, 2)
    for divergence in ("reverse_kl", "alpha_divergence"):
        terms = pair_terms(big, zero, torch.full((2, 2), 4), big[0], divergence, 0.5)
        for name in LOSSES:
            if name == "discopop":
                continue  # its exponential branch is exp(−β h): finite for the margins training reaches
            loss = combined_loss(terms, LossOptions(beta=0.1, label_smoothing=0.1), [name], [1.0])
            assert math.isfinite(loss.item()), name
