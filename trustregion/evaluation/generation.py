"""Generation-based evaluation: sample from the policy on held-out prompts and judge the samples.

Preference metrics on fixed pairs cannot show overoptimization; the policy's own samples can. For
each of ``eval.prompts`` held-out prompts we draw ``eval.samples_per_prompt`` responses with a small
KV-cached sampling loop on left-padded prompts (position ids follow the padding), score them with the
task's gold judge, and measure how far the policy has moved: ``eval/kl_sft`` is the Monte-Carlo KL
estimate mean[log pi(y|x) - log pi_SFT(y|x)] over the samples (a KL only at temperature 1, not greedy).
The run's gold reward vs KL-to-SFT points are redrawn into ``<run dir>/gold_vs_kl.png`` each time.
"""

from __future__ import annotations

import json
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from trustregion.errors import StopRequested
from trustregion.evaluation.text_metrics import distinct_n, repetition_rate, self_bleu
from trustregion.models.sampling import Samples, SamplingOptions, encode_prompts, response_logps, sample

PLOT_NAME = "gold_vs_kl.png"
SAMPLES_NAME = "eval_samples.jsonl"  # the wandb table's rows of every evaluation
TABLE_ROWS = 16
GENERATION_BATCH_FACTOR = 4  # sequences per generation batch, in training micro-batches (pairs)
# Gold reward of the SFT model's own samples, computed once per SFT model object (it never changes).
_SFT_BASELINE: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, float]] = weakref.WeakKeyDictionary()


def _gather(engine, items: list) -> list:
    """Every rank's ``items``, concatenated in rank order, on every rank (a no-op on one process)."""
    if engine.world_size == 1:
        return items
    import torch.distributed as dist

    parts: list = [None] * engine.world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


@dataclass
class Generated:
    """One rank's share of the samples, with the log-probs under the three models."""

    index: list[int]  # position in the global (prompt, k) list; -1 for padding rows
    prompt_ids: list[list[int]]
    samples: Samples
    logp_policy: list[float]
    logp_ref: list[float]
    logp_sft: list[float]


def generate_and_score(
    engine,
    model,
    prompt_ids: list[list[int]],
    cfg: DictConfig,
    tokenizer,
    scorers: Sequence[Any],
    should_stop: Callable[[], bool] = lambda: False,
) -> Generated:
    """Sample ``samples_per_prompt`` responses per prompt from ``model`` (this rank's share) and score them.

    Every rank gets the same number of rows (padded with copies of the first), so all ranks run the
    same forwards; ``scorers`` are the models whose log-probs we want (policy, reference, SFT).
    ``should_stop`` is asked before each generation batch; True raises ``StopRequested``.
    """
    ev = cfg.eval
    k = 1 if ev.greedy else int(ev.samples_per_prompt)
    items = [(p, j) for p in range(len(prompt_ids)) for j in range(k)]
    per_rank = -(-len(items) // engine.world_size)
    mine = items[engine.rank * per_rank : (engine.rank + 1) * per_rank]
    index = [p * k + j for p, j in mine] + [-1] * (per_rank - len(mine))
    mine = mine + [items[0]] * (per_rank - len(mine))
    prompts = [prompt_ids[p] for p, _ in mine]
    batch_size = generation_batch_size(cfg)
    gen = torch.Generator(device=engine.device).manual_seed(int(cfg.trainer.seed) * 1_000_003 + engine.rank)
    options = SamplingOptions(
        int(ev.max_new_tokens), float(ev.temperature), bool(ev.greedy), lockstep=engine.world_size > 1
    )
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    responses, ended, entropy, own_logps = [], [], [], []
    for s in range(0, len(prompts), batch_size):
        if should_stop():
            raise StopRequested("generation evaluation")
        out = sample(
            model,
            prompts[s : s + batch_size],
            options,
            eos_id=eos,
            pad_id=pad,
            generator=gen,
            device=engine.device,
        )
        responses += out.responses
        ended += out.ended
        entropy += out.entropy
        own_logps += out.logps
    # A response of zero tokens cannot happen (max_new_tokens >= 1), so every row has something to score.
    by_model: dict[int, list[float]] = {}  # the same model passed twice is scored once
    if str(cfg.trainer.precision) == "fp32":
        # The sampling forwards' log-probs are the sampling model's score: in fp32 they agree with a teacher-forced
        # pass to ~3e-4 nats per 16-token response (SmolLM2-135M); under 16-bit autocast the cached and the full
        # forward round apart by up to ~0.4 nats, so there every model is rescored alike.
        by_model[id(model)] = own_logps
    for m in scorers:
        if id(m) not in by_model:
            by_model[id(m)] = response_logps(m, prompts, responses, pad, engine.device, batch_size)
    logps = [by_model[id(m)] for m in scorers]
    return Generated(index, prompts, Samples(responses, ended, entropy, own_logps), *logps)


def generation_batch_size(cfg: DictConfig) -> int:
    """``eval.batch_size``, else ``GENERATION_BATCH_FACTOR`` training micro-batches (no gradients: wider batches fit)."""
    if cfg.eval.batch_size is not None:
        return int(cfg.eval.batch_size)
    return GENERATION_BATCH_FACTOR * max(1, int(cfg.trainer.batch_size))


def _records(gen: Generated, prompt_texts: list[str], k: int, tokenizer, task) -> list[dict]:
    """Per-sample records (this rank's real rows), with decoded text and the gold judge's verdict."""
    out = []
    for i, idx in enumerate(gen.index):
        if idx < 0:
            continue
        ids = gen.samples.responses[i]
        body = ids[:-1] if gen.samples.ended[i] else ids
        text = tokenizer.decode(body, skip_special_tokens=False) if body else ""
        prompt = prompt_texts[idx // k]
        reward, in_domain = task.score_text(prompt, text)
        parts = task.score_parts(prompt, text)
        out.append(
            {
                "parts": parts,
                "index": idx,
                "prompt": prompt,
                "response": text,
                "ids": body,
                "ended": gen.samples.ended[i],
                "tokens": len(ids),
                "entropy": gen.samples.entropy[i],
                "gold": float(reward),
                "in_domain": bool(in_domain),
                "logp": gen.logp_policy[i],
                "logp_ref": gen.logp_ref[i],
                "logp_sft": gen.logp_sft[i],
            }
        )
    return out


def summarize(records: list[dict], k: int) -> dict[str, float]:
    """The metrics of a list of per-sample records (all ranks' records, in index order)."""
    n = len(records)
    tokens = sum(r["tokens"] for r in records)
    groups: dict[int, list[list[int]]] = {}
    for r in records:
        groups.setdefault(r["index"] // k, []).append(r["ids"])
    mean = lambda key: sum(float(r[key]) for r in records) / n  # noqa: E731
    sft_nll = -sum(r["logp_sft"] for r in records) / max(1, tokens)
    gold = mean("gold")
    return {
        "eval/gold_reward": gold,
        "eval/gold_reward_sem": (sum((r["gold"] - gold) ** 2 for r in records) / max(1, n - 1) / n) ** 0.5,
        "eval/in_domain_rate": mean("in_domain"),
        "eval/kl_sft": sum(r["logp"] - r["logp_sft"] for r in records) / n,
        "eval/kl_ref": sum(r["logp"] - r["logp_ref"] for r in records) / n,
        "eval/response_tokens": sum(len(r["ids"]) for r in records) / n,
        "eval/eos_rate": mean("ended"),
        "eval/entropy": sum(r["entropy"] for r in records) / max(1, tokens),
        "eval/distinct_1": distinct_n([r["ids"] for r in records], 1),
        "eval/distinct_2": distinct_n([r["ids"] for r in records], 2),
        "eval/repetition": repetition_rate([r["ids"] for r in records], 2),
        "eval/self_bleu": self_bleu(list(groups.values())),
        "eval/sft_perplexity": math.exp(min(sft_nll, 50.0)),
        **{f"eval/gold/{part}": mean_of(records, part) for part in records[0].get("parts", {})},
    }


def mean_of(records: list[dict], part: str) -> float:
    """Mean of one part of the gold judge's verdict over the records (``eval/gold/<part>``)."""
    return sum(float(r["parts"][part]) for r in records) / len(records)


@dataclass
class EvalContext:
    """What generation-based evaluation reads from a run: models, config, data (its gold judge), logging."""

    engine: Any
    cfg: DictConfig
    data: Any  # PreferenceData with a task (gold judge) and eval prompts
    tokenizer: Any
    sft_model: Any  # the frozen starting model, kept even when the reference moves
    logger: Any
    run_dir: Path
    should_stop: Callable[[], bool] = lambda: False  # asked between generation batches, on every rank alike
    title: str = ""  # who the run is (its family's label and seed), for the figure's title


def evaluate_generation(ctx: EvalContext, step: int) -> dict[str, float]:
    """Sample from the policy on held-out prompts; gold reward, KL to SFT and reference, diversity (``eval/*``)."""
    engine, cfg, data, tokenizer, sft_model, logger, run_dir = (
        ctx.engine,
        ctx.cfg,
        ctx.data,
        ctx.tokenizer,
        ctx.sft_model,
        ctx.logger,
        ctx.run_dir,
    )
    ev = cfg.eval
    task = data.task
    clock = time.perf_counter()
    texts = data.eval_prompts()[: int(ev.prompts)]
    if not texts:
        return {}
    prompt_ids = encode_prompts(texts, tokenizer, int(cfg.dataset.max_prompt_length))
    k = 1 if ev.greedy else int(ev.samples_per_prompt)
    # A frozen reference whose log-probs are cached is never built: it is the SFT model.
    reference = engine.reference if engine.reference is not None else sft_model
    scorers = (engine.policy, reference, sft_model)
    gen = generate_and_score(engine, engine.policy, prompt_ids, cfg, tokenizer, scorers, ctx.should_stop)
    records = sorted(_gather(engine, _records(gen, texts, k, tokenizer, task)), key=lambda r: r["index"])
    metrics = summarize(records, k)
    if step == 0:  # the policy still is the SFT model, sampled with the baseline's seed: its samples are the baseline's
        _SFT_BASELINE.setdefault(sft_model, _baseline_fields(metrics))
    metrics.update(sft_baseline(ctx, prompt_ids, texts))
    metrics["eval/generation_s"] = time.perf_counter() - clock
    if engine.is_main:
        table = [
            [step, r["prompt"], r["response"], round(r["gold"], 3), r["in_domain"], round(r["logp"] - r["logp_sft"], 3)]
            for r in records[:TABLE_ROWS]
        ]
        columns = ["step", "prompt", "response", "gold_reward", "in_domain", "log_ratio_sft"]
        logger.log_table("eval/samples", columns, table, step)
        with open(run_dir / SAMPLES_NAME, "a", encoding="utf-8") as f:  # the same rows, readable without wandb
            f.writelines(json.dumps(dict(zip(columns, row))) + "\n" for row in table)
        if ev.plot:
            points = history(run_dir / "metrics.jsonl") + [(step, metrics["eval/kl_sft"], metrics["eval/gold_reward"])]
            path = plot_gold_vs_kl(points, run_dir / PLOT_NAME, metrics["eval/sft_gold_reward"], ctx.title)
            logger.log_artifact_image("eval/gold_vs_kl", path, step)
            log_scatter(logger, points, step)
    return metrics


def _baseline_fields(metrics: dict[str, float]) -> dict[str, float]:
    return {
        "eval/sft_gold_reward": metrics["eval/gold_reward"],
        "eval/sft_in_domain_rate": metrics["eval/in_domain_rate"],
    }


def sft_baseline(ctx: EvalContext, prompt_ids: list[list[int]], texts: list[str]) -> dict[str, float]:
    """Gold reward and in-domain rate of the SFT model's own samples (the KL = 0 point), computed once: taken from
    the step-0 evaluation when there is one, else sampled here."""
    engine, cfg, sft_model, tokenizer = ctx.engine, ctx.cfg, ctx.sft_model, ctx.tokenizer
    if sft_model not in _SFT_BASELINE:
        k = 1 if cfg.eval.greedy else int(cfg.eval.samples_per_prompt)
        gen = generate_and_score(engine, sft_model, prompt_ids, cfg, tokenizer, (sft_model,) * 3, ctx.should_stop)
        records = _records(gen, texts, k, tokenizer, ctx.data.task)
        _SFT_BASELINE[sft_model] = _baseline_fields(
            summarize(sorted(_gather(engine, records), key=lambda r: r["index"]), k)
        )
    return dict(_SFT_BASELINE[sft_model])


def history(path: Path) -> list[tuple[int, float, float]]:
    """(step, KL to SFT, gold reward) of the evaluations already in ``metrics.jsonl`` (none if it is absent)."""
    points = []
    if path.exists():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if "eval/kl_sft" in row and "eval/gold_reward" in row:
                    points.append((int(row["step"]), float(row["eval/kl_sft"]), float(row["eval/gold_reward"])))
    return points


def plot_gold_vs_kl(
    points: list[tuple[int, float, float]], path: Path, sft_gold: float | None = None, title: str = ""
) -> Path:
    """Write the gold reward vs KL-to-SFT curve of one run (steps in order) to ``path`` (PNG, no display needed),
    titled with who the run is."""
    from matplotlib.figure import Figure

    points = sorted(points)
    fig = Figure(figsize=(5, 3.6), dpi=100)
    ax = fig.add_subplot()
    kl = [0.0] + [p[1] for p in points] if sft_gold is not None else [p[1] for p in points]
    gold = [sft_gold] + [p[2] for p in points] if sft_gold is not None else [p[2] for p in points]
    ax.plot(kl, gold, "o-", ms=3)
    for s, x, y in points[-1:]:
        ax.annotate(f"step {s}", (x, y), fontsize=7)
    ax.set_xlabel("KL(policy ‖ SFT) per response (nats, sampled)")
    ax.set_ylabel("gold reward (mean per response)")
    ax.set_title(f"{title}\ngold reward vs KL to SFT" if title else "gold reward vs KL to SFT", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def log_scatter(logger, points: list[tuple[int, float, float]], step: int) -> None:
    """The same points as a wandb scatter plot (where the run logs to wandb)."""
    rows = [list(p) for p in sorted(points)]
    logger.log_scatter(
        "eval/gold_vs_kl_points", ["step", "kl_sft", "gold_reward"], rows, "gold reward vs KL to SFT", step
    )
