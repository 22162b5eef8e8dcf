"""Generation-based evaluation: the sampling loop, the KL estimate, the diversity metrics, the wiring into training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trustregion.errors import ConfigError
from trustregion.evaluation.text_metrics import bleu, distinct_n, self_bleu
from trustregion.models.loading import build_tokenizer, tiny_model
from trustregion.models.sampling import SamplingOptions, response_logps, sample

TEXTS = ["ba be bi", " bo bu da", "de di do du", " fa fe fi fo fu"] * 8


@pytest.fixture(scope="module")
def lm():
    """A tiny random GPT-NeoX and its tokenizer (random weights: the loop's bookkeeping is what is tested)."""
    from omegaconf import OmegaConf

    tok = build_tokenizer(TEXTS, 64)
    cfg = OmegaConf.create(
        {
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "attn_implementation": None,
            "dtype": "float32",
        }
    )
    model = tiny_model(cfg, len(tok), seed=0).eval()
    return model, tok


def count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_left_padded_batch_generates_what_each_prompt_generates_alone(lm):
    model, tok = lm
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12]]
    batch = sample(model, prompts, SamplingOptions(6, greedy=True), eos_id=0, pad_id=0)
    for p, got in zip(prompts, batch.responses):
        alone = sample(model, [p], SamplingOptions(6, greedy=True), eos_id=0, pad_id=0)
        assert got == alone.responses[0]


def test_cached_sampling_matches_teacher_forced_argmax(lm):
    """Greedy tokens from the KV-cached loop are the argmax of a full forward over prompt + response."""
    model, _ = lm
    prompt = [3, 4, 5]
    out = sample(model, [prompt], SamplingOptions(5, greedy=True), eos_id=-1, pad_id=0)
    seq = torch.tensor([prompt + out.responses[0]])
    logits = model(input_ids=seq).logits[0]
    assert out.responses[0] == logits[len(prompt) - 1 : -1].argmax(-1).tolist()


def test_sampled_log_probs_are_the_teacher_forced_log_probs_of_the_samples(lm):
    model, _ = lm
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12]] * 4
    out = sample(model, prompts, SamplingOptions(6), eos_id=3, pad_id=0, generator=torch.Generator().manual_seed(0))
    forced = response_logps(model, prompts, out.responses, 0, torch.device("cpu"), 8)
    assert out.logps == pytest.approx(forced, abs=1e-4)
    assert len(set(map(tuple, out.responses))) > 3  # sampled, not one response repeated


def test_the_prefill_runs_the_lm_head_on_the_last_position_only(lm):
    model, _ = lm
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[1]))
    try:
        sample(model, [[5, 6, 7, 8, 9], [10]], SamplingOptions(3, greedy=True), eos_id=-1, pad_id=0)
    finally:
        hook.remove()
    assert rows == [1, 1, 1]


def test_each_row_stops_at_its_eos(lm):
    model, _ = lm
    first = sample(model, [[7, 8]], SamplingOptions(1, greedy=True), eos_id=-1, pad_id=0).responses[0][0]
    out = sample(model, [[7, 8], [7, 8]], SamplingOptions(8, greedy=True), eos_id=first, pad_id=0)
    assert out.responses == [[first], [first]] and out.ended == [True, True]


def test_lockstep_runs_every_forward_even_when_all_rows_are_done(lm):
    """Under ZeRO-3 every rank must run the same forwards, so lockstep never exits early."""
    model, _ = lm
    first = sample(model, [[7, 8]], SamplingOptions(1, greedy=True), eos_id=-1, pad_id=0).responses[0][0]
    calls = count_forwards(model)
    sample(model, [[7, 8]], SamplingOptions(6, greedy=True), eos_id=first, pad_id=0)
    early = calls[0]
    sample(model, [[7, 8]], SamplingOptions(6, greedy=True, lockstep=True), eos_id=first, pad_id=0)
    assert (early, calls[0] - early) == (1, 6)


def test_monte_carlo_kl_estimate_matches_the_exact_kl(lm):
    """mean[log pi(y) - log q(y)] over y ~ pi is KL(pi || q); one-token responses give the exact value."""
    model, _ = lm
    torch.manual_seed(1)
    other = type(model)(model.config).eval()  # a second random model: the "SFT" one
    prompt = [3, 4, 5]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1], -1)
        lq = torch.log_softmax(other(input_ids=torch.tensor([prompt])).logits[0, -1], -1)
    exact = float((lp.exp() * (lp - lq)).sum())
    n = 3000
    out = sample(
        model, [prompt] * n, SamplingOptions(1), eos_id=-1, pad_id=0, generator=torch.Generator().manual_seed(0)
    )
    logp = torch.tensor(response_logps(model, [prompt] * n, out.responses, 0, torch.device("cpu"), 1000))
    logq = torch.tensor(response_logps(other, [prompt] * n, out.responses, 0, torch.device("cpu"), 1000))
    diff = logp - logq
    assert abs(float(diff.mean()) - exact) < 4 * float(diff.std()) / math.sqrt(n)


def test_distinct_n_counts_unique_ngrams_over_all_ngrams():
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 1) == 4 / 6
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 3 / 4


def test_self_bleu_is_one_for_repeated_responses_and_low_for_disjoint_ones():
    assert self_bleu([[[1, 2, 3, 4, 5]] * 3]) == pytest.approx(1.0)
    assert self_bleu([[[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]]) == 0.0
    assert 0.0 < bleu([1, 2, 3, 4, 9], [[1, 2, 3, 4, 5]]) < 1.0


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """A short frozen-reference run that evaluates by generation at steps 2 and 4: (run dir, its metrics rows)."""
    from conftest import FAST, compose

    from trustregion.train import train

    run_dir = tmp_path_factory.mktemp("frozen_run")
    cfg = compose(
        *FAST,
        "ref_update=none",
        "eval.generate=true",
        "eval.prompts=6",
        "eval.samples_per_prompt=2",
        "trainer.eval_every=2",
    )
    train(cfg, run_dir)
    return run_dir, [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def test_generation_evaluation_during_training_logs_gold_kl_and_a_plot(frozen_run):
    run_dir, rows = frozen_run
    evals = [r for r in rows if "eval/gold_reward" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for key in (
        "eval/in_domain_rate",
        "eval/kl_sft",
        "eval/kl_ref",
        "eval/response_tokens",
        "eval/entropy",
        "eval/distinct_1",
        "eval/distinct_2",
        "eval/self_bleu",
        "eval/sft_perplexity",
        "eval/sft_gold_reward",
    ):
        assert math.isfinite(evals[-1][key]), key
    assert -3.0 <= evals[-1]["eval/gold_reward"] <= 2.5
    assert (run_dir / "gold_vs_kl.png").stat().st_size > 1000


def test_the_evaluation_at_step_0_is_the_sft_model_itself(frozen_run):
    first = next(r for r in frozen_run[1] if "eval/gold_reward" in r)
    assert first["step"] == 0 and first["eval/kl_sft"] == pytest.approx(0.0, abs=1e-5)


def test_the_sft_baseline_sampled_from_the_sft_model_is_the_step_0_evaluation(frozen_run, tmp_path):
    """A run that does not evaluate at step 0 samples the SFT model for its baseline; a run that does takes it from
    its step-0 evaluation. The two agree."""
    from conftest import FAST, compose

    from trustregion.train import train

    train(
        compose(
            *FAST,
            "ref_update=none",
            "eval.generate=true",
            "eval.prompts=6",
            "eval.samples_per_prompt=2",
            "trainer.eval_every=2",
            "trainer.eval_at_start=false",
        ),
        tmp_path,
    )
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    sampled = next(r for r in rows if "eval/sft_gold_reward" in r)
    first = next(r for r in frozen_run[1] if "eval/gold_reward" in r)
    assert sampled["step"] == 2 and first["step"] == 0
    assert sampled["eval/sft_gold_reward"] == pytest.approx(first["eval/gold_reward"], abs=1e-9)
    assert sampled["eval/sft_in_domain_rate"] == pytest.approx(first["eval/in_domain_rate"], abs=1e-9)


def test_frozen_reference_kl_to_ref_equals_kl_to_sft(frozen_run):
    last = [r for r in frozen_run[1] if "eval/kl_sft" in r][-1]
    assert last["eval/kl_ref"] == pytest.approx(last["eval/kl_sft"], abs=1e-4)


def test_zero_temperature_without_greedy_is_a_config_error(fast_cfg, tmp_path):
    from trustregion.train import train

    cfg = fast_cfg("eval.generate=true", "eval.temperature=0", "trainer.max_steps=1")
    with pytest.raises(
        ConfigError, match="eval.temperature=0.0 is invalid: set eval.temperature to a number > 0, or eval.greedy=true"
    ):
        train(cfg, tmp_path)
