"""Sampling from a causal LM: left-padded prompts, a KV-cached loop, log-probs of given responses.

The prefill asks for the last position's logits only (``logits_to_keep=1``), never a [rows, prompt, vocab] tensor;
responses are scored by ``trustregion.models.logps.response_logps`` (the LM head on response positions only).

Shared by data sources that label model samples (the toy task's pairs), evaluation and the judge; it
imports nothing of theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trustregion.models.kv_cache import CACHE_KWARG, returned_cache
from trustregion.models.logps import response_logps as _response_logps


@dataclass
class Samples:
    """Sampled responses (token ids, EOS included when one was drawn), their entropies and log-probs."""

    responses: list[list[int]]
    ended: list[bool]
    entropy: list[float]  # sum over the response's tokens of the policy's next-token entropy (nats)
    logps: list[float]  # sum over the response's tokens of log pi(token) at temperature 1, from the sampling forwards


@dataclass(frozen=True)
class SamplingOptions:
    """How each response is drawn: up to ``max_new_tokens`` tokens, at ``temperature`` or greedily. ``lockstep`` runs
    all ``max_new_tokens`` forwards even when every row is done, so that ranks under ZeRO-3, which gather parameters
    collectively in each forward, stay in step."""

    max_new_tokens: int
    temperature: float = 1.0
    greedy: bool = False
    lockstep: bool = False


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with the prompts aligned on the right, so every row's next token is at the end."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def sample(
    model,
    prompts: Sequence[Sequence[int]],
    options: SamplingOptions,
    *,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Samples:
    """Sample one response per prompt, with a KV cache, stopping each row at EOS (see ``SamplingOptions``)."""
    if not prompts:
        return Samples([], [], [], [])
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, logits = returned_cache(out), out.logits[:, -1].float()
    next_pos = positions[:, -1] + 1
    rows = len(prompts)
    done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    picked, alive, entropies, logps = [], [], [], []
    max_new_tokens, temperature = options.max_new_tokens, options.temperature
    for t in range(max_new_tokens):
        logp = F.log_softmax(logits, dim=-1)
        entropies.append(-(logp.exp() * logp).sum(-1).masked_fill(done, 0.0))
        if options.greedy:
            token = logits.argmax(-1)
        else:
            probs = F.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        logps.append(logp.gather(1, token[:, None]).squeeze(1).masked_fill(done, 0.0))
        token = token.masked_fill(done, pad_id)
        picked.append(token)
        alive.append(~done)
        done = done | (token == eos_id)
        if t == max_new_tokens - 1 or (not options.lockstep and bool(done.all())):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            use_cache=True,
            **{CACHE_KWARG: cache},
        )
        cache, logits = returned_cache(out), out.logits[:, -1].float()
        next_pos = next_pos + 1
    tokens = torch.stack(picked, 1).cpu()
    keep = torch.stack(alive, 1).cpu()
    entropy = torch.stack(entropies, 1).sum(1).cpu()
    logp_sum = torch.stack(logps, 1).sum(1).cpu()
    responses = [tokens[i][keep[i]].tolist() for i in range(rows)]
    ended = [bool(r) and r[-1] == eos_id for r in responses]
    return Samples(responses, ended, entropy.tolist(), logp_sum.tolist())


def teacher_forced(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """prompt + response per row, right-padded, with the mask of response tokens (what ``sequence_logps`` scores)."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    response = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor([*p, *r], dtype=torch.long)
        attention[i, :n] = 1
        response[i, len(p) : n] = True
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


@torch.no_grad()
def response_logps(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    batch_size: int,
) -> list[float]:
    """Summed log-prob of each response given its prompt (teacher forcing, right padding)."""
    out: list[float] = []
    for s in range(0, len(prompts), batch_size):
        batch = teacher_forced(prompts[s : s + batch_size], responses[s : s + batch_size], pad_id)
        logps, _ = _response_logps(model, {k: v.to(device) for k, v in batch.items()})
        out += logps.float().cpu().tolist()
    return out


def encode_prompts(texts: Sequence[str], tokenizer, max_prompt_length: int) -> list[list[int]]:
    """Prompt token ids exactly as training encodes them (special tokens on, cut from the left)."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        out.append(ids[max(0, len(ids) - max_prompt_length) :])
    return out


def sample_texts(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    options: SamplingOptions,
    *,
    generator: torch.Generator,
    batch_size: int = 512,
    skip_special_tokens: bool = False,
) -> list[str]:
    """One decoded sample per prompt (EOS dropped), drawn ``batch_size`` prompts at a time."""
    texts: list[str] = []
    for start in range(0, len(prompt_ids), batch_size):
        out = sample(
            model,
            prompt_ids[start : start + batch_size],
            options,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            generator=generator,
        )
        texts += [
            tokenizer.decode(r[:-1] if e else r, skip_special_tokens=skip_special_tokens)
            for r, e in zip(out.responses, out.ended)
        ]
    return texts
