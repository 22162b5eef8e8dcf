"""The sentiment task as a preference data source (``dataset=sentiment``): prompts and pairs from the starting model.

The starting model (``dataset.pair_model``, by default ``model.path``) first writes the prompts: short film
reviews sampled with the fixed ``dataset.seed``, cut to their first ``prompt_words`` words (the task's prompt
set; the first ``eval_samples`` are the held-out prompts, so every run seed is judged on the same ones). Then,
per training prompt, two samples of the same model labelled by Bradley-Terry on the gold (seed:
``dataset.pair_seed``, i.e. ``trainer.seed``, so seeds vary the pairs as in the toy task). Sampling a 135M model
takes minutes on a CPU, so prompts and pairs are cached as JSON under ``dataset.cache_dir`` when it is set,
keyed by the model's files and every setting that changes them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from datasets import Dataset
from omegaconf import DictConfig

from trustregion.config import DatasetConfig
from trustregion.data import PreferenceData, Source
from trustregion.data.rows import RowReport
from trustregion.data.sentiment import REVIEW_REQUESTS, SentimentTask, first_words
from trustregion.data.sentiment_gold import SentimentGold, names_the_film
from trustregion.errors import ConfigError
from trustregion.schema import NON_NEGATIVE, POSITIVE, Range, at_least, between, check, setting

HELD_OUT_PAIR_SEED = 1_000  # the held-out pairs do not follow the run's seed
UNIT: Range = between(0.0, 1.0, "a number in [0, 1]")
REVIEWER = "You write film reviews."


@dataclass
class SentimentDatasetConfig(DatasetConfig):
    """Film-review openings written by the starting model; gold = VADER sentiment minus penalties for repetition,
    garble and off-topic text (trustregion.data.sentiment_gold)."""

    name: str = "sentiment"
    num_pairs: int = setting(512, "training prompts, one pair of samples each", at_least(1))
    prompt_words: int = setting(6, "a prompt is the first words of a review the model wrote", at_least(1))
    prompt_max_new_tokens: int = setting(
        12, "tokens sampled per review when writing the prompts (6 words need about 9)", at_least(1)
    )
    pair_max_new_tokens: int = setting(
        20, "tokens per sampled response (conf: eval.max_new_tokens, so pairs match evaluation)", at_least(1)
    )
    pair_temperature: float = setting(1.0, "the temperature the pairs are sampled at", POSITIVE)
    label_temperature: float = setting(
        0.1, "Bradley-Terry labels: P(a > b) = sigmoid((gold(a) - gold(b)) / T)", POSITIVE
    )
    repetition_weight: float = setting(2.0, "the gold's penalty per unit of repeated-bigram fraction", NON_NEGATIVE)
    min_words: int = setting(3, "a continuation with fewer words scores empty_gold", at_least(1))
    empty_gold: float = setting(-2.0, "the gold of an empty or too short continuation")
    garble_weight: float = setting(
        2.0,
        "the gold's penalty per unit of garble: the share of words an English dictionary does not know",
        NON_NEGATIVE,
    )
    garbled_share: float = setting(0.2, "garble above this marks a sample garbled (eval/gold/garbled)", UNIT)
    offtopic_weight: float = setting(
        1.0, "the gold's penalty for a continuation that names neither the film nor a part of it", NON_NEGATIVE
    )
    film_prompts: bool = setting(
        True, "keep only openings that name a film or a part of one, so that every prompt opens a film review"
    )
    held_out_margin: float = setting(
        0.0,
        "keep a held-out pair only if its two samples' gold differs by more than this (0: every pair)",
        NON_NEGATIVE,
    )
    pair_model: Optional[str] = setting(None, "the starting model's dir (conf: model.path); writes prompts and pairs")
    gguf_file: Optional[str] = setting(None, "its GGUF file where it is one (conf: model.gguf_file)")
    pair_seed: int = setting(0, "which training pairs are drawn (conf: trainer.seed)")
    generation_batch: int = setting(
        64, "sequences sampled at once (full logits of the prompt: keep it modest)", at_least(1)
    )
    cache_dir: Optional[str] = setting(
        None, "where sampled prompts and pairs are kept for later runs; null: sample every time"
    )

    @classmethod
    def check_together(cls, d: DictConfig, root: DictConfig) -> None:
        check(d.eval_samples >= 1, "dataset.eval_samples", d.eval_samples, "an integer >= 1")
        if not d.pair_model:
            raise ConfigError(
                "dataset.pair_model is null: the sentiment task samples its prompts and pairs from the starting model; "
                "set model.path (e.g. model=smollm2-135m, or a saved model dir)"
            )


def task_from_config(cfg) -> SentimentTask:
    """The task's gold and labelling from the dataset settings."""
    gold = SentimentGold(
        repetition_weight=cfg.repetition_weight,
        min_words=cfg.min_words,
        empty_gold=cfg.empty_gold,
        garble_weight=cfg.garble_weight,
        garbled_share=cfg.garbled_share,
        offtopic_weight=cfg.offtopic_weight,
    )
    return SentimentTask(gold, cfg.label_temperature)


def _model_identity(path: str) -> list:
    """What identifies a model dir for the cache: its path and its files' names, sizes and modification times."""
    root = Path(path)
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []
    return [str(root.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


class Sampler:
    """The starting model, loaded on first use (a cache hit never loads it)."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self._loaded = None

    def load(self):
        if self._loaded is None:
            from trustregion.models.loading import load_for_sampling, resolve_model_path

            path = resolve_model_path(str(self.cfg.pair_model))
            self._loaded = load_for_sampling(path, key="dataset.pair_model", gguf_file=self.cfg.gguf_file)
        return self._loaded

    def sample(self, prompt_ids: list[list[int]], max_new_tokens: int, seed: int, temperature: float) -> list[str]:
        import torch

        from trustregion.models.sampling import SamplingOptions, sample_texts

        model, tokenizer = self.load()
        gen = torch.Generator().manual_seed(seed)
        return sample_texts(
            model,
            tokenizer,
            prompt_ids,
            SamplingOptions(max_new_tokens, temperature),
            generator=gen,
            batch_size=int(self.cfg.generation_batch),
        )

    def review_requests(self, n: int) -> list[list[int]]:
        """Token ids of ``n`` review requests (in turn), in the model's chat format where it has one."""
        _, tokenizer = self.load()
        out = []
        for i in range(n):
            request = REVIEW_REQUESTS[i % len(REVIEW_REQUESTS)]
            if getattr(tokenizer, "chat_template", None):
                # A short system turn of our own: templates that add a default one add 20-odd tokens to every request.
                messages = [{"role": "system", "content": REVIEWER}, {"role": "user", "content": request}]
                text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                out.append(tokenizer(request + "\n", add_special_tokens=True)["input_ids"])
        return out


class Cache:
    """JSON files under ``dataset.cache_dir`` keyed by a hash of what produced them; a no-op when it is null."""

    def __init__(self, cfg) -> None:
        self.root = Path(cfg.cache_dir) if cfg.cache_dir else None
        self.model = _model_identity(str(cfg.pair_model)) if self.root else None

    def path(self, kind: str, settings: dict) -> Path | None:
        if self.root is None:
            return None
        digest = hashlib.sha256(json.dumps([self.model, settings], sort_keys=True).encode()).hexdigest()[:16]
        return self.root / f"sentiment-{kind}-{digest}.json"

    def get(self, kind: str, settings: dict):
        path = self.path(kind, settings)
        if path is None or not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def put(self, kind: str, settings: dict, value) -> None:
        path = self.path(kind, settings)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value), encoding="utf-8")
        tmp.replace(path)  # atomic: runs sharing the cache never read half a file


def write_prompts(cfg, sampler: Sampler, cache: Cache) -> list[str]:
    """``num_pairs + eval_samples`` distinct review openings by the starting model (seed ``dataset.seed``)."""
    need = int(cfg.num_pairs) + int(cfg.eval_samples)
    settings = {
        "n": need,
        "words": cfg.prompt_words,
        "tokens": cfg.prompt_max_new_tokens,
        "seed": cfg.seed,
        "requests": [REVIEWER, *REVIEW_REQUESTS],
        "film": bool(cfg.film_prompts),
    }
    cached = cache.get("prompts", settings)
    if cached is not None:
        return cached
    prompts: list[str] = []
    seen: set[str] = set()
    for attempt in range(8):
        batch = (need - len(prompts)) * 5 // 4 + 16  # a few openings fail the filter or repeat
        texts = sampler.sample(sampler.review_requests(batch), cfg.prompt_max_new_tokens, cfg.seed * 97 + attempt, 1.0)
        for text in texts:
            prompt = first_words(text, int(cfg.prompt_words))
            if prompt is not None and cfg.film_prompts and not names_the_film(prompt):
                continue  # not a film review's opening ("While not replying to a comment")
            if prompt is not None and prompt not in seen:
                seen.add(prompt)
                prompts.append(prompt)
        if len(prompts) >= need:
            cache.put("prompts", settings, prompts[:need])
            return prompts[:need]
    raise ConfigError(
        f"the model at dataset.pair_model={cfg.pair_model} wrote only {len(prompts)} usable review openings of {need} "
        f"(at least dataset.prompt_words={cfg.prompt_words} words, no markup"
        f"{', naming a film or a part of one' if cfg.film_prompts else ''}): lower dataset.prompt_words, raise "
        "dataset.prompt_max_new_tokens, or set dataset.film_prompts=false"
    )


def sample_pairs(cfg, task: SentimentTask, prompts: list[str], seed: int, sampler: Sampler, cache: Cache):
    """(rows, skipped): two samples of the starting model per prompt, labelled by Bradley-Terry on the gold."""
    settings = {
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "seed": seed,
        "tokens": cfg.pair_max_new_tokens,
        "temperature": cfg.pair_temperature,
        "max_prompt_length": cfg.max_prompt_length,
    }
    texts = cache.get("samples", settings)
    if texts is None:
        from trustregion.models.sampling import encode_prompts

        _, tokenizer = sampler.load()
        ids = encode_prompts(prompts, tokenizer, int(cfg.max_prompt_length))
        doubled = [ids[i // 2] for i in range(2 * len(ids))]
        texts = sampler.sample(doubled, int(cfg.pair_max_new_tokens), 1_000_003 * seed + 17, cfg.pair_temperature)
        cache.put("samples", settings, texts)
    # The labels are drawn here, not cached: a change of the gold or of its temperature relabels the same samples.
    return task.label_rows(prompts, texts[0::2], texts[1::2], seed)


def clear_pairs(task: SentimentTask, rows: list[dict], margin: float) -> list[dict]:
    """The pairs whose two responses' gold differs by more than ``margin`` (all of them at 0): held-out pairs whose
    label a policy that learned the preference should get right, not a near-tie's coin flip."""
    if margin <= 0:
        return rows
    gap = lambda r: abs(task.score(r["prompt"], r["chosen"]).gold - task.score(r["prompt"], r["rejected"]).gold)
    return [r for r in rows if gap(r) > margin]


def load(cfg) -> PreferenceData:
    task = task_from_config(cfg)
    sampler, cache = Sampler(cfg), Cache(cfg)
    prompts = write_prompts(cfg, sampler, cache)
    held_out, train_prompts = prompts[: cfg.eval_samples], prompts[cfg.eval_samples :]
    if cfg.max_samples is not None:
        train_prompts = train_prompts[: cfg.max_samples]
    train, skipped = sample_pairs(cfg, task, train_prompts, int(cfg.pair_seed), sampler, cache)
    held_all, held_skipped = sample_pairs(cfg, task, held_out, HELD_OUT_PAIR_SEED, sampler, cache)
    held = clear_pairs(task, held_all, float(cfg.held_out_margin))
    if not train:
        raise ConfigError(
            f"the model at dataset.pair_model={cfg.pair_model} gave the same response twice for every prompt: "
            "raise dataset.pair_temperature or dataset.pair_max_new_tokens"
        )
    if not held:
        raise ConfigError(
            f"no held-out pair's gold differs by more than dataset.held_out_margin={cfg.held_out_margin}: lower it, "
            "or raise dataset.eval_samples"
        )
    unclear = len(held_all) - len(held)
    report = RowReport(kept=len(train), skipped=skipped + held_skipped + unclear, eval_kept=len(held))
    if skipped + held_skipped:
        report.reasons["identical samples"] = skipped + held_skipped
    if unclear:
        report.reasons["held-out pairs within dataset.held_out_margin"] = unclear
    # Generation evaluates the held-out prompts themselves, whatever became of their pairs: the same prompts for
    # every run, seed and margin.
    return PreferenceData(
        train=Dataset.from_list(train), eval=Dataset.from_list(held), report=report, task=task, prompts=held_out
    )


SOURCES = (Source("sentiment", load, SentimentDatasetConfig),)
