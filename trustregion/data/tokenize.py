"""Tokenization, truncation and collation of preference pairs.

Truncation rule: the prompt is cut from the left to ``max_prompt_length`` tokens first; then each
response is cut on the right so that prompt + response fit in ``max_length``. Both are counted.
Responses end with the tokenizer's EOS token (dropped only when truncation cuts it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from datasets import Dataset


@dataclass
class TruncationStats:
    truncated_prompts: int = 0
    truncated_responses: int = 0


def _encode_prompt(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def _encode_response(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def tokenize_pairs(
    ds: Dataset, tokenizer, max_length: int, max_prompt_length: int, mismatched: bool = False
) -> tuple[Dataset, TruncationStats]:
    """Token ids per pair (``prompt_ids``, ``chosen_ids``, ``rejected_ids``, ``index``).

    ``mismatched=True`` adds ``mismatched_ids``: the chosen response of the next row, a fixed
    mismatched pair per row for KTO's reference point (cacheable, unlike in-batch shuffles).
    """
    stats = TruncationStats()
    prompts, chosen, rejected = [], [], []
    for row in ds:
        p = _encode_prompt(tokenizer, row["prompt"])
        if len(p) > max_prompt_length:
            p = p[len(p) - max_prompt_length:]
            stats.truncated_prompts += 1
        room = max_length - len(p)
        responses = []
        for text in (row["chosen"], row["rejected"]):
            r = _encode_response(tokenizer, text)
            if len(r) > room:
                r = r[:room]
                stats.truncated_responses += 1
            responses.append(r)
        prompts.append(p)
        chosen.append(responses[0])
        rejected.append(responses[1])
    columns = {"prompt_ids": prompts, "chosen_ids": chosen, "rejected_ids": rejected, "index": list(range(len(prompts)))}
    if mismatched:
        n = len(prompts)
        columns["mismatched_ids"] = [chosen[(i + 1) % n][: max_length - len(prompts[i])] for i in range(n)]
    return Dataset.from_dict(columns), stats


def tokenize_sft(ds: Dataset, tokenizer, max_length: int, max_prompt_length: int) -> Dataset:
    """(prompt, response) rows as ``prompt_ids``/``chosen_ids`` so SFT shares the pair collator's masking."""
    pairs = ds.map(lambda r: {"chosen": r["response"], "rejected": r["response"]}, remove_columns=["response"])
    tokenized, _ = tokenize_pairs(pairs, tokenizer, max_length, max_prompt_length)
    return tokenized.remove_columns(["rejected_ids"])


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
