"""Every metric a run logs (``metrics.jsonl`` and wandb), with what it estimates: one place, which the documentation's
metrics reference is written from and ``tests/test_metric_catalog.py`` holds every logged key against.

A name ending in ``/*`` stands for a family of keys (``eval/gold/<part>``: one per part of a task's gold).
"""

from __future__ import annotations

import fnmatch

# (name, what it estimates); grouped as the tables show them.
TRAINING: tuple[tuple[str, str], ...] = (
    ("step", "the optimizer step the row belongs to (0: before the first step)"),
    ("loss", "the objective's loss, mean over the steps since the last row (and over ranks)"),
    ("grad_norm", "the gradient's global L2 norm before clipping"),
    ("lr", "the learning rate of the last step (after warm-up and schedule)"),
    ("epoch", "passes over the training rows so far (fractional)"),
    ("tokens_per_s", "response tokens per second of wall time since the last row, all ranks"),
    ("s_per_step", "seconds per optimizer step since the last row"),
    ("perf/tflops", "model FLOP/s per process since the last row, in TFLOP/s"),
    ("perf/mfu", "perf/tflops over this machine's measured matmul peak in the compute dtype"),
    ("perf/peak_memory_mb", "this process's peak memory (GPU: allocated; CPU: resident set), MiB"),
    ("rewards/chosen", "implicit reward β·(log π − log π_ref) of the chosen responses, against the current reference"),
    ("rewards/rejected", "the same for the rejected responses"),
    ("rewards/margins", "rewards/chosen − rewards/rejected, mean over pairs"),
    ("rewards/accuracies", "share of pairs whose chosen reward exceeds the rejected one (current reference)"),
    ("rewards/grad_term", "the DPO gradient weight β·σ(r_rejected − r_chosen), mean over pairs"),
    ("rewards_sft/chosen", "implicit reward of the chosen responses against the frozen starting (SFT) model"),
    ("rewards_sft/rejected", "the same for the rejected responses"),
    ("rewards_sft/margins", "rewards_sft/chosen − rewards_sft/rejected: the policy's drift on the data since SFT"),
    ("rewards_sft/accuracies", "share of pairs the policy orders correctly against the SFT model"),
    ("logps/chosen", "log π of the chosen responses (summed over tokens; per-token with method.average_logps)"),
    ("logps/rejected", "the same for the rejected responses"),
    ("logps/completion", "log π of unpaired KTO completions"),
    ("ref/logps/chosen", "log π_ref of the chosen responses"),
    ("ref/logps/rejected", "log π_ref of the rejected responses"),
    ("ref/logps/completion", "log π_ref of unpaired KTO completions"),
    (
        "logratio/policy_ref",
        "mean log π/π_ref per response token on the batch's (off-policy) responses; not a KL: it can be negative",
    ),
    ("lengths/chosen", "response tokens of the chosen responses, mean per pair"),
    ("lengths/rejected", "response tokens of the rejected responses, mean per pair"),
    ("data/padding_fraction", "padding's share of the batch's tokens"),
    ("sft/loss", "the SFT stage's mean token negative log-likelihood of the responses"),
)
REFERENCE: tuple[tuple[str, str], ...] = (
    ("ref_updates", "reference updates so far"),
    ("ref/distance", "‖θ_ref − θ‖ / ‖θ‖ over every weight, after the step's update"),
    ("ref/update_ms", "wall time of this step's reference update, ms (0 when it did not update)"),
    ("ref/alpha", "ref_update=schedule: the α of the last update step"),
    ("ref/kl_estimate", "ref_update=kl_budget: its running estimate of the drift, nats per response token"),
    ("ref/last_update_step", "ref_update=kl_budget: the step of its last update"),
    ("ref/factors_error", "LoRA factors reference: relative error of lerped factors against the exact mixed delta"),
    ("ref/*", "a rule's own fields (Rule.metrics), e.g. a user rule's"),
)
DATA: tuple[tuple[str, str], ...] = (
    ("world_size", "processes of the run (step 0)"),
    ("data/train_pairs", "training pairs after loading and filtering (step 0)"),
    ("data/sft_examples", "the SFT stage's training examples (step 0)"),
    ("data/skipped_rows", "source rows skipped as malformed (dataset.on_bad_row=skip)"),
    ("data/truncated_prompts", "training rows whose prompt was cut to dataset.max_prompt_length"),
    ("data/truncated_responses", "training rows whose response was cut to fit dataset.max_length"),
    ("data/truncated_rows", "training rows cut in either way"),
    ("data/notes", "what the loader did besides reading (a split held out, a file read as JSON)"),
)
EVALUATION: tuple[tuple[str, str], ...] = (
    ("eval/loss", "the objective's loss on the held-out pairs"),
    ("eval/rewards/margins", "held-out rewards/margins (against the current reference)"),
    ("eval/rewards/accuracies", "held-out rewards/accuracies"),
    ("eval/rewards_sft/margins", "held-out rewards_sft/margins: one yardstick across update rules"),
    ("eval/rewards_sft/accuracies", "held-out share of pairs ordered correctly against the SFT model"),
    ("eval/logratio/policy_ref", "held-out logratio/policy_ref"),
    ("eval/logps/chosen", "held-out logps/chosen"),
    ("eval/logps/rejected", "held-out logps/rejected"),
    ("eval/gold_reward", "the task's gold reward of the policy's samples on held-out prompts, mean per response"),
    ("eval/gold_reward_sem", "the standard error of eval/gold_reward over those samples"),
    (
        "eval/gold/*",
        "the parts of a task's gold, mean per response (sentiment: sentiment, repetition, garble; and the rates of empty, degenerate, garbled and off-topic samples)",
    ),
    ("eval/in_domain_rate", "share of samples the task counts as well-formed"),
    ("eval/kl_sft", "KL(π ‖ π_SFT) per response, nats: mean of log π − log π_SFT over the policy's own samples"),
    ("eval/kl_ref", "KL(π ‖ π_ref) per response, nats, sampled likewise (against the current reference)"),
    ("eval/sft_gold_reward", "eval/gold_reward of the SFT model's own samples: the KL = 0 point"),
    ("eval/sft_in_domain_rate", "eval/in_domain_rate of the SFT model's samples"),
    ("eval/sft_perplexity", "the SFT model's perplexity on the policy's samples (per token): fluency as it sees it"),
    ("eval/response_tokens", "sample length, tokens per response"),
    ("eval/eos_rate", "share of samples that ended with EOS before eval.max_new_tokens"),
    ("eval/entropy", "the policy's mean next-token entropy along its samples, nats per token"),
    ("eval/distinct_1", "distinct unigrams over all unigrams of the samples"),
    ("eval/distinct_2", "distinct bigrams over all bigrams"),
    ("eval/repetition", "share of repeated bigrams within a sample, mean over samples"),
    ("eval/self_bleu", "BLEU of each sample against the other samples of its prompt: low is diverse"),
    ("eval/generation_s", "seconds the generation evaluation took"),
)
CATALOG: tuple[tuple[str, str], ...] = TRAINING + REFERENCE + DATA + EVALUATION


def meaning(key: str) -> str | None:
    """What logged metric ``key`` estimates, or None where the catalog lacks it."""
    for name, text in CATALOG:
        if key == name or (name.endswith("/*") and fnmatch.fnmatchcase(key, name)):
            return text
    return None


def markdown_table(rows: tuple[tuple[str, str], ...] = CATALOG) -> str:
    """The catalog as a Markdown table (the documentation's metrics reference)."""
    lines = ["| metric | what it estimates |", "|---|---|"]
    return "\n".join([*lines, *(f"| `{name}` | {text} |" for name, text in rows)])
