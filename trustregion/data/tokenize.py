"""Tokenization, truncation and collation of preference pairs (and of SFT and unpaired KTO rows).

Prompt and responses are tokenized separately. The prompt gets the model's own special tokens (BOS
for Llama, none for Pythia), or, when the row has ``prompt_messages`` and the tokenizer a chat
template, is the template's rendering with the generation prompt. Each response ends with EOS.
Truncation rule: the prompt is cut from the left to ``max_prompt_length`` tokens first (a leading BOS
is kept); then each response is cut on the right so that prompt + response fit in ``max_length``.
Every cut is counted in ``TruncationStats``.

With a ``cache_dir``, tokenized rows are written by ``Dataset.map`` to an Arrow file named by a key of
the data's fingerprint, the tokenizer and the lengths, so a second run loads them instead of
tokenizing again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pyarrow.compute as pc
import torch
from datasets import Dataset
from datasets.fingerprint import Hasher
from omegaconf import OmegaConf

from trustregion.data.datasets_internals import fingerprint
from trustregion.errors import ConfigError

_VERSION = "tokenize-v1"  # bump when the tokenized layout or rules change (invalidates the cache)


@dataclass
class TruncationStats:
    truncated_prompts: int = 0  # prompts longer than max_prompt_length (cut from the left)
    truncated_responses: int = 0  # responses that did not fit in max_length (cut on the right)
    truncated_rows: int = 0  # rows with any cut
    rows: int = 0
    from_cache: bool = False  # the tokenized rows were loaded from the disk cache


def tokenize_options(dataset_cfg: Any) -> dict[str, Any]:
    """``cache_dir``/``num_proc`` keyword arguments from a dataset config (absent options: no cache, one process)."""
    return {
        "cache_dir": OmegaConf.select(dataset_cfg, "cache_dir", default=None)
        if OmegaConf.is_config(dataset_cfg)
        else getattr(dataset_cfg, "cache_dir", None),
        "num_proc": OmegaConf.select(dataset_cfg, "num_proc", default=None)
        if OmegaConf.is_config(dataset_cfg)
        else getattr(dataset_cfg, "num_proc", None),
    }


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything about ``tokenizer`` that changes token ids: vocabulary, rules, specials, template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    specials = (
        type(tokenizer).__name__,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        str(getattr(tokenizer, "chat_template", None)),
        tokenizer("a b")["input_ids"],
    )
    return Hasher.hash((body, specials))


class _Encoder:
    """Token ids of prompts and responses for one tokenizer, with the truncation rule applied."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int) -> None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                "the tokenizer has no eos_token: responses must end with one; set it in the "
                "tokenizer files at model.path (tokenizer_config.json)"
            )
        self.tok = tokenizer
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.templated = bool(getattr(tokenizer, "chat_template", None))

    def prompts(self, texts: list[str], messages: Optional[list[Any]]) -> list[tuple[list[int], bool]]:
        rendered = list(texts)
        special = [True] * len(texts)
        if messages is not None and self.templated:
            for i, m in enumerate(messages):
                if m:
                    rendered[i] = self.tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                    special[i] = False  # the template writes BOS itself
        plain = [i for i, s in enumerate(special) if s]
        templ = [i for i, s in enumerate(special) if not s]
        ids: list[list[int]] = [[] for _ in texts]
        for group, add in ((plain, True), (templ, False)):
            if group:
                encoded = self.tok([rendered[i] for i in group], add_special_tokens=add)["input_ids"]
                for i, e in zip(group, encoded):
                    ids[i] = list(e)
        return [self._cut_prompt(p) for p in ids]

    def _cut_prompt(self, ids: list[int]) -> tuple[list[int], bool]:
        if len(ids) <= self.max_prompt_length:
            return ids, False
        bos = self.tok.bos_token_id
        keep = 1 if bos is not None and ids and ids[0] == bos and self.max_prompt_length > 1 else 0
        return ids[:keep] + ids[len(ids) - (self.max_prompt_length - keep) :], True

    def responses(self, texts: list[str], prompts: list[list[int]]) -> list[tuple[list[int], bool]]:
        encoded = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        out = []
        for r, p in zip(encoded, prompts):
            r = list(r) + [self.tok.eos_token_id]
            room = self.max_length - len(p)
            out.append((r[:room], True) if len(r) > room else (r, False))
        return out


def _encode(
    batch: dict[str, list], indices: list[int], enc: _Encoder, responses: dict[str, str], passthrough: dict[str, str]
) -> dict[str, list]:
    prompts = enc.prompts(batch["prompt"], batch.get("prompt_messages"))
    prompt_ids = [p for p, _ in prompts]
    out: dict[str, list] = {"prompt_ids": prompt_ids, "prompt_truncated": [t for _, t in prompts]}
    any_cut = [t for _, t in prompts]
    lengths = [0] * len(prompt_ids)
    for name, column in responses.items():
        encoded = enc.responses(batch[column], prompt_ids)
        out[f"{name}_ids"] = [r for r, _ in encoded]
        out[f"{name}_truncated"] = [t for _, t in encoded]
        any_cut = [a or t for a, (_, t) in zip(any_cut, encoded)]
        lengths = [max(n, len(p) + len(r)) for n, p, (r, _) in zip(lengths, prompt_ids, encoded)]
    for name, column in passthrough.items():
        out[name] = batch[column]
    out["row_truncated"] = any_cut
    out["length"] = lengths
    out["index"] = list(indices)
    return out


def _cache_file(cache_dir: Optional[str], key: str) -> Optional[str]:
    if cache_dir is None:
        return None
    folder = Path(cache_dir).expanduser() / "tokenized"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{key}.arrow")


@dataclass(frozen=True)
class _Layout:
    """What a tokenized row holds: response columns to encode, columns copied as they are, and which
    response column the next row lends as this row's mismatched response (None: no mismatched column)."""

    responses: dict[str, str]
    passthrough: dict[str, str]
    mismatched_from: Optional[str] = None


@dataclass(frozen=True)
class _Limits:
    max_length: int
    max_prompt_length: int
    cache_dir: Optional[str] = None
    num_proc: Optional[int] = None


def _tokenize(ds: Dataset, tokenizer, limits: _Limits, layout: _Layout) -> tuple[Dataset, TruncationStats]:
    max_length, max_prompt_length, cache_dir, num_proc = (
        limits.max_length,
        limits.max_prompt_length,
        limits.cache_dir,
        limits.num_proc,
    )
    responses, passthrough, mismatched_from = layout.responses, layout.passthrough, layout.mismatched_from
    enc = _Encoder(tokenizer, max_length, max_prompt_length)
    key = Hasher.hash(
        (
            _VERSION,
            fingerprint(ds),
            tokenizer_fingerprint(tokenizer),
            max_length,
            max_prompt_length,
            responses,
            passthrough,
            mismatched_from,
        )
    )
    names = ["prompt_ids", *(f"{n}_ids" for n in responses), *passthrough, "length", "index"]
    if len(ds) == 0:
        return Dataset.from_dict({n: [] for n in names}), TruncationStats()
    path = _cache_file(cache_dir, key)
    from_cache = path is not None and any(Path(path).parent.glob(f"{key}*.arrow"))
    out = ds.map(
        _encode,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        num_proc=num_proc,
        fn_kwargs={"enc": enc, "responses": responses, "passthrough": passthrough},
        cache_file_name=path,
        new_fingerprint=key,
        load_from_cache_file=True,
        desc="tokenizing",
    )
    table = out.with_format("arrow")[:]  # the counts come from the flag columns, so cached runs have them too

    def count(column: str) -> int:
        return int(pc.sum(table.column(column).cast("int64")).as_py() or 0)

    stats = TruncationStats(
        truncated_prompts=count("prompt_truncated"),
        truncated_responses=sum(count(f"{n}_truncated") for n in responses),
        truncated_rows=count("row_truncated"),
        rows=len(out),
        from_cache=from_cache,
    )
    out = out.select_columns(names)
    if mismatched_from is not None:
        mm_path = None if path is None else path[: -len(".arrow")] + "-mismatched.arrow"
        out = out.map(
            _add_mismatched,
            batched=True,
            with_indices=True,
            num_proc=num_proc,
            fn_kwargs={"source": out, "column": f"{mismatched_from}_ids", "max_length": max_length},
            cache_file_name=mm_path,
            new_fingerprint=Hasher.hash((key, "mismatched")),
            load_from_cache_file=True,
            desc="mismatched pairs",
        )
    return out, stats


def _add_mismatched(
    batch: dict[str, list], indices: list[int], source: Dataset, column: str, max_length: int
) -> dict[str, list]:
    n = len(source)
    others = source.select([(i + 1) % n for i in indices])[column]
    return {"mismatched_ids": [o[: max_length - len(p)] for o, p in zip(others, batch["prompt_ids"])]}


def tokenize_pairs(
    ds: Dataset,
    tokenizer,
    max_length: int,
    max_prompt_length: int,
    mismatched: bool = False,
    *,
    cache_dir: Optional[str] = None,
    num_proc: Optional[int] = None,
) -> tuple[Dataset, TruncationStats]:
    """Token ids per pair (``prompt_ids``, ``chosen_ids``, ``rejected_ids``, ``length``, ``index``).

    ``mismatched=True`` adds ``mismatched_ids``: the chosen response of the next row, a fixed
    mismatched pair per row for KTO's reference point (cacheable, unlike in-batch shuffles).
    """
    layout = _Layout({"chosen": "chosen", "rejected": "rejected"}, {}, "chosen" if mismatched else None)
    return _tokenize(ds, tokenizer, _Limits(max_length, max_prompt_length, cache_dir, num_proc), layout)


def tokenize_sft(
    ds: Dataset,
    tokenizer,
    max_length: int,
    max_prompt_length: int,
    *,
    cache_dir: Optional[str] = None,
    num_proc: Optional[int] = None,
) -> tuple[Dataset, TruncationStats]:
    """(prompt, response) rows as ``prompt_ids``/``chosen_ids`` so SFT shares the pair collator's masking."""
    limits = _Limits(max_length, max_prompt_length, cache_dir, num_proc)
    return _tokenize(ds, tokenizer, limits, _Layout({"chosen": "response"}, {}))


def tokenize_unpaired(
    ds: Dataset,
    tokenizer,
    max_length: int,
    max_prompt_length: int,
    *,
    cache_dir: Optional[str] = None,
    num_proc: Optional[int] = None,
) -> tuple[Dataset, TruncationStats]:
    """Unpaired KTO rows: ``prompt_ids``, ``completion_ids``, ``desirable``, ``mismatched_ids``, ``index``.

    ``mismatched_ids`` is the next row's completion, a fixed mismatched prompt-completion pair per row
    for the KL reference point.
    """
    layout = _Layout({"completion": "completion"}, {"desirable": "label"}, "completion")
    return _tokenize(ds, tokenizer, _Limits(max_length, max_prompt_length, cache_dir, num_proc), layout)


@dataclass
class PairCollator:
    """Pads a batch of pairs to its own longest sequence (right padding) and stacks the chunks.

    Chunks are ``chosen``, ``rejected`` (if present) and ``mismatched`` (if asked for), each
    prompt + response, concatenated along the batch so each model runs one forward per step.
    ``response_mask`` marks the tokens whose log-probs count (responses, not prompt or padding).
    """

    pad_token_id: int
    chunks: tuple[str, ...] = ("chosen", "rejected")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        seqs, masks = [], []
        for chunk in self.chunks:
            for row in rows:
                p, r = row["prompt_ids"], row[f"{chunk}_ids"]
                seqs.append(p + r)
                masks.append([0] * len(p) + [1] * len(r))
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        response = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, (s, m) in enumerate(zip(seqs, masks)):
            input_ids[i, : len(s)] = torch.tensor(s)
            attention[i, : len(s)] = 1
            response[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "response_mask": response,
            "index": torch.tensor([row["index"] for row in rows], dtype=torch.long),
        }


@dataclass
class UnpairedCollator(PairCollator):
    """Unpaired KTO batches: completions, then mismatched completions, plus the ``desirable`` labels."""

    chunks: tuple[str, ...] = ("completion", "mismatched")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        batch["desirable"] = torch.tensor([bool(row["desirable"]) for row in rows], dtype=torch.bool)
        return batch


def padding_fraction(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The share of a collated batch's positions that are padding (a 0-d tensor, no host sync)."""
    mask = batch["attention_mask"]
    return 1.0 - mask.sum().float() / max(1, mask.numel())


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int, megabatch: int = 50) -> list[int]:
    """A seeded permutation whose consecutive ``batch_size`` slices hold rows of similar length.

    Shuffle, cut into mega-batches of ``megabatch`` batches, sort each by length, then shuffle the
    batches inside each mega-batch: batches stay random in content and order, but pad much less.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = max(1, batch_size * megabatch)
    out: list[int] = []
    for start in range(0, len(order), span):
        block = sorted(order[start : start + span], key=lambda i: lengths[i], reverse=True)
        batches = [block[j : j + batch_size] for j in range(0, len(block), batch_size)]
        full, tail = (batches[:-1], batches[-1:]) if len(batches[-1]) < batch_size else (batches, [])
        rng.shuffle(full)
        out.extend(i for b in full + tail for i in b)
    return out
