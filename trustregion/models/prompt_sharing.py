"""The prompt run once per pair: every chunk's response runs on the prompt's key/value cache, gradients through it.

A ``PairCollator`` batch holds ``k`` chunks (chosen, rejected[, mismatched]) of the same ``B`` prompts. Here the
model body runs on the ``B`` prompts once with a ``DynamicCache``; the cache is repeated for the ``k`` responses of
each prompt, and the responses run on it (positions continue each prompt's own length; the prompt's right padding
is masked out). The prompt's last hidden state predicts each response's first token. Autograd flows through the
cache into the prompt's forward, so log-probs and gradients equal the full-sequence path up to float rounding.

Refused (``None``) where it cannot be exact or the cache cannot be shared: rows of one pair whose prompts differ,
a batch without ``index`` (the pair count) or without prompts, or a model whose body does not take a ``DynamicCache`` (e.g. under
gradient checkpointing, where transformers turns the cache off).

Host syncs: a handful per call (the prompt check, the prompt and response widths, two ``nonzero``), on top of
``response_logps``' own. With the attention mask's holes at the prompts' right padding, the body must honour
a 2-D ``attention_mask`` with gaps and explicit ``position_ids`` (eager and SDPA attention do).
"""

from __future__ import annotations

import torch
from torch import nn

from trustregion.models.kv_cache import cache_kwarg


def shared_prompt_rows(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(hidden states that predict response tokens [T, H], those tokens [T], their row in the batch [T]), or None.

    The same rows as the full-sequence path scores (``response_mask[:, 1:]``), in another order.
    """
    from transformers import DynamicCache

    if "index" not in batch:
        return None
    input_ids, response = batch["input_ids"], batch["response_mask"].bool()
    n, width = input_ids.shape
    pairs = batch["index"].shape[0]
    if pairs == 0 or n % pairs:
        return None
    k = n // pairs
    lengths = batch["attention_mask"].sum(1)
    has_response = response.any(1)
    start = torch.where(has_response, response.int().argmax(1), lengths)  # prompt length of each row
    positions = torch.arange(width, device=input_ids.device)
    prompt_part = torch.where(positions < start[:, None], input_ids, -1).view(k, pairs, width)
    if not bool((prompt_part == prompt_part[:1]).all()):  # a host sync; also refuses mismatched prompts
        return None
    decoder = model.get_decoder()
    kwarg = cache_kwarg(decoder)
    if kwarg is None:
        return None

    p_start, p_width = start[:pairs], int(start[:pairs].max())
    if p_width == 0:
        return None
    cache = DynamicCache(config=model.config)
    prompt_mask = (positions[:p_width] < p_start[:, None]).long()
    prompt = decoder(
        input_ids=input_ids[:pairs, :p_width], attention_mask=prompt_mask, use_cache=True, **{kwarg: cache}
    ).last_hidden_state
    if cache.get_seq_length() != p_width:  # the body did not fill the cache (e.g. gradient checkpointing)
        return None

    # Responses in pair-major order (pair 0's k responses, pair 1's, ...) to match the cache's repeat_interleave.
    order = torch.arange(n, device=input_ids.device).view(k, pairs).t().reshape(-1)
    r_len = (lengths - start)[order]
    r_width = max(1, int(r_len.max()))
    offsets = torch.arange(r_width, device=input_ids.device)
    r_valid = offsets < r_len[:, None]
    r_ids = input_ids[order].gather(1, (start[order, None] + offsets).clamp(max=width - 1)).masked_fill(~r_valid, 0)
    cache.batch_repeat_interleave(k)
    mask = torch.cat([prompt_mask.repeat_interleave(k, 0), r_valid.long()], dim=1)
    hidden = decoder(
        input_ids=r_ids,
        attention_mask=mask,
        position_ids=start[order, None] + offsets,
        use_cache=True,
        **{kwarg: cache},
    ).last_hidden_state

    # A row's first response token is predicted by its prompt's last position (when it has a prompt); token j >= 1
    # by the response's position j - 1.
    first = has_response & (start >= 1)
    first_rows = first.nonzero(as_tuple=True)[0]
    pair_of = first_rows % pairs
    first_hidden = prompt[pair_of, start[first_rows] - 1]
    first_labels = input_ids[first_rows, start[first_rows]]
    rest_row, rest_pos = r_valid[:, 1:].nonzero(as_tuple=True)
    rest_hidden = hidden[rest_row, rest_pos]
    rest_labels = r_ids[rest_row, rest_pos + 1]
    return (
        torch.cat([first_hidden, rest_hidden]),
        torch.cat([first_labels, rest_labels]),
        torch.cat([first_rows, order[rest_row]]),
    )
