"""Response log-probs without full logits: the LM head runs only on response positions, in token chunks.

``response_logps`` is a drop-in for ``trustregion.models.loading.sequence_logps``. The model body gives the last
hidden states; only rows at positions t whose next token t+1 is a response token go through the head,
``chunk_tokens`` rows at a time, so at most one chunk of [chunk, vocab] logits exists at once, forward or
backward. The backward (``_ChunkedHeadLogps``) recomputes each chunk's logits from the saved hidden rows,
weight, labels and per-token logsumexp, and writes grad_hidden, grad_weight (and grad_bias).

The body runs on groups of rows of similar length, each cut to its own longest row (``width_groups``), so a
batch with one long row does not run (and keep activations for) every row at that row's width.

Host syncs: the row lengths, then one ``nonzero`` on the response mask per length group (the token count sets
the number of chunks); under ZeRO-3 the body runs on the whole batch at once (one ``nonzero``) and one more
sync agrees the chunk count across ranks.

ZeRO-3: a partitioned head weight is empty outside its module's forward hooks, so the custom backward, which
reads the weight directly, cannot run. There, ``head_logps`` calls the head *module* per chunk under
non-reentrant activation checkpointing: DeepSpeed's hooks gather and release the weight on every call, in the
forward and again in the recompute, so results are exact and one chunk's logits (with the usual log-softmax
temporaries) live at a time. Each call is a collective all-gather, so every rank must make the same number of
calls: the chunk count is the maximum over the default process group (one all-reduce), and ranks with fewer
response tokens call the head on empty chunks. Tested on 2 gloo ranks in tests/test_logps.py. ZeRO stages 1
and 2 keep whole parameters: the custom-backward path runs.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> torch.Tensor:
    """``hidden @ weight.T (+ bias)`` in the weight's dtype, written into the fp32 buffer ``out`` [rows, vocab]."""
    if weight.dtype == torch.float32:
        if bias is None:
            return torch.mm(hidden, weight.t(), out=out)
        return torch.addmm(bias, hidden, weight.t(), out=out)
    return out.copy_(nn.functional.linear(hidden, weight, bias))


class _ChunkedHeadLogps(torch.autograd.Function):
    """log softmax(hidden @ W.T + b)[label] per row, one chunk of rows at a time; recomputes logits in backward."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunk_tokens: int,
    ) -> torch.Tensor:
        n = hidden.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        target = torch.empty(n, dtype=torch.float32, device=hidden.device)
        buf = torch.empty(min(n, chunk_tokens), weight.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_tokens):
            end = min(start + chunk_tokens, n)
            z = _chunk_logits(hidden[start:end], weight, bias, buf[: end - start])
            target[start:end] = z.gather(1, labels[start:end, None]).squeeze(1)
            # logsumexp in place: the buffer is not needed afterwards, so no second logits-sized temporary.
            m = z.amax(dim=1)
            lse[start:end] = z.sub_(m[:, None]).exp_().sum(dim=1).log_().add_(m)
        del buf
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk_tokens = chunk_tokens
        return target - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, chunk = hidden.shape[0], ctx.chunk_tokens
        # d logp_i / d z_ij = 1[j = label_i] - p_ij. The per-row factor g_i is applied to the [rows, hidden]
        # operands, never to the [rows, vocab] probabilities: grad_z = g (onehot - p) gives
        #   grad_h = g * (W[label] - p @ W),  grad_W = onehot.T @ (g h) - p.T @ (g h),  grad_b = sum g onehot - p.T g.
        g = grad.float()
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        buf = torch.empty(min(n, chunk), weight.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            h, y, gc = hidden[start:end], labels[start:end], g[start:end, None]
            p = _chunk_logits(h, weight, bias, buf[: end - start]).sub_(lse[start:end, None]).exp_()
            p_mm = p if weight.dtype == torch.float32 else p.to(weight.dtype)
            if grad_h is not None:
                grad_h[start:end] = gc * (weight[y].float() - (p_mm @ weight).float())
            if grad_w is not None or grad_b is not None:
                gh = gc * h.float()
                if grad_w is not None:
                    grad_w.index_add_(0, y, gh)
                    grad_w.sub_((p_mm.t() @ gh.to(weight.dtype)).float())
                if grad_b is not None:
                    grad_b.index_add_(0, y, gc.squeeze(1))
                    grad_b.sub_(p.t() @ gc.squeeze(1))
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
        )


def _checkpointed_module_chunks(
    hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """The ZeRO-3 path: the head module per chunk, recomputed in backward; the chunk count agreed across ranks."""
    import torch.distributed as dist
    from torch.utils.checkpoint import checkpoint

    def chunk_logps(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = head(h).float()
        return z.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(z, dim=-1)

    n = hidden.shape[0]
    chunks = torch.tensor([-(-n // chunk_tokens)], device=hidden.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(chunks, op=dist.ReduceOp.MAX)  # every rank calls the head (a collective) as often
    parts = []
    for i in range(int(chunks)):
        h, y = hidden[i * chunk_tokens : (i + 1) * chunk_tokens], labels[i * chunk_tokens : (i + 1) * chunk_tokens]
        parts.append(
            checkpoint(chunk_logps, h, y, use_reentrant=False) if torch.is_grad_enabled() else chunk_logps(h, y)
        )
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def head_logps(hidden: torch.Tensor, head: nn.Linear, labels: torch.Tensor, chunk_tokens: int = 1024) -> torch.Tensor:
    """Per-row log-prob of ``labels`` under ``head(hidden)`` ([rows, hidden] -> [rows], fp32), chunked over rows."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if _zero3_partitioned(head.weight):
        return _checkpointed_module_chunks(hidden, head, labels, chunk_tokens)
    return _ChunkedHeadLogps.apply(hidden, head.weight, head.bias, labels, chunk_tokens)


@torch.no_grad()
def head_log_sum_sq(hidden: torch.Tensor, head: nn.Module, chunk_tokens: int = 1024) -> torch.Tensor:
    """log Σ_v p_v² per row of softmax(head(hidden)) ([rows], fp32, no gradient; WPO's weights), chunked over rows.
    Under ZeRO-3 every rank calls the head (a collective) as often."""
    chunks = -(-hidden.shape[0] // chunk_tokens)
    if _zero3_partitioned(head.weight):  # every rank calls the head (a collective) as often: one sync
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            agreed = torch.tensor([chunks], device=hidden.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            chunks = int(agreed)
    parts = [hidden.new_zeros(0, dtype=torch.float32)]
    for i in range(chunks):
        z = head(hidden[i * chunk_tokens : (i + 1) * chunk_tokens]).float()
        parts.append(torch.logsumexp(2 * z, dim=-1) - 2 * torch.logsumexp(z, dim=-1))
    return torch.cat(parts)


@dataclass(frozen=True)
class TokenLogps:
    """Response tokens, packed: each one's log-prob (with gradient), its row, its index in the row's response, and
    (when asked) log Σ_v p_v² of its position's distribution."""

    logps: torch.Tensor  # [T]
    row: torch.Tensor  # [T]
    rank: torch.Tensor  # [T]
    log_sum_sq: torch.Tensor | None = None  # [T], no gradient


def token_ranks(row: torch.Tensor, rows: int) -> torch.Tensor:
    """Each token's index in its row's response, for tokens packed row by row in position order (no host sync)."""
    order = torch.arange(row.shape[0], device=row.device)
    first = torch.full((rows,), row.shape[0], dtype=order.dtype, device=row.device)
    first = first.index_reduce(0, row, order, "amin", include_self=True)
    return order - first[row]


def _zero3_partitioned(param: torch.Tensor) -> bool:
    """Whether ``param`` is a DeepSpeed ZeRO-3 parameter (never true unless deepspeed is already imported)."""
    if "deepspeed" not in sys.modules:
        return False
    from deepspeed.runtime.zero.partition_parameters import is_zero_param

    return is_zero_param(param)


def response_logps(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    average: bool = False,
    chunk_tokens: int = 1024,
    share_prompt: bool = False,
    tokens: bool = False,
    sum_sq: bool = False,
) -> tuple[torch.Tensor, ...]:
    """(log-prob of each sequence's response tokens, summed or averaged, fp32; response token counts), and with
    ``tokens`` a third item, the ``TokenLogps`` (with ``sum_sq``, log Σ p² too: one more head pass, no gradient).

    Same contract as ``trustregion.models.loading.sequence_logps``; ``model`` is a transformers causal LM (a DeepSpeed
    engine passes its attributes through). ``batch`` needs right-padded ``input_ids``, ``attention_mask`` and a
    bool ``response_mask`` (True on response tokens). ``share_prompt``: run each pair's prompt once (see
    ``trustregion.models.prompt_sharing``; needs the collator's ``index``), else, with a warning, every row whole;
    ``tokens`` runs every row whole (the same values: the tokens then come row by row).
    """
    head = model.get_output_embeddings()
    mask = batch["response_mask"][:, 1:].bool()
    shared = None
    if share_prompt and not tokens:
        from trustregion.models.prompt_sharing import shared_prompt_rows

        shared = shared_prompt_rows(model, batch)
        if shared is None:
            warnings.warn(
                "share_prompt: this batch or model cannot share the prompt's cache; ran every row whole", stacklevel=2
            )
    if shared is not None:
        rows, labels, seq = shared
    else:
        rows, labels, seq = _body_rows(model.get_decoder(), batch, mask, split=not _zero3_partitioned(head.weight))
    token_logps = head_logps(rows, head, labels, chunk_tokens)
    total = torch.zeros(mask.shape[0], dtype=torch.float32, device=token_logps.device).index_add(0, seq, token_logps)
    counts = mask.sum(-1)
    sequences = total / counts.clamp(min=1) if average else total
    if not tokens:
        return sequences, counts
    sq = head_log_sum_sq(rows.detach(), head, chunk_tokens) if sum_sq else None
    return sequences, counts, TokenLogps(token_logps, seq, token_ranks(seq, mask.shape[0]), sq)


def width_groups(lengths: list[int]) -> list[list[int]]:
    """Row indices grouped for the body's forwards, longest first: a row joins the current group while its length is
    at least half the group's width (its longest row), so no row runs padded past twice its own length and there are
    at most ``log2(longest / shortest) + 1`` groups. Rows keep their batch order inside a group."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and 2 * lengths[i] >= lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(g) for g in groups]


def _body_rows(
    decoder: nn.Module, batch: dict[str, torch.Tensor], mask: torch.Tensor, split: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden states that predict response tokens [T, H], those tokens [T], their row [T]) from the model body.

    The collator pads every row to the batch's longest, so one long row would make every row run (and keep its
    activations for backward) at that width. With ``split``, the body runs once per ``width_groups`` group, each cut
    to its own longest row: activations scale with the batch's tokens, not rows x longest row. Right padding and
    causal attention make each row's hidden states independent of the width it runs at (exact up to float
    rounding). ``split=False`` (ZeRO-3, where every rank must run the body equally often) runs it once.
    """
    input_ids, attention = batch["input_ids"], batch["attention_mask"]
    lengths = attention.sum(1).tolist() if split else [input_ids.shape[1]] * input_ids.shape[0]  # a host sync
    groups = width_groups(lengths)
    if len(groups) == 1:
        groups, widths = [None], [input_ids.shape[1]]  # the whole batch as it is: no copies
    else:
        widths = [max(1, max(int(lengths[i]) for i in g)) for g in groups]
    parts_h, parts_y, parts_s = [], [], []
    for g, width in zip(groups, widths):
        sel = slice(None) if g is None else torch.tensor(g, device=input_ids.device)
        ids, att, m = input_ids[sel, :width], attention[sel, :width], mask[sel, : width - 1]
        hidden = decoder(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        seq, pos = m.nonzero(as_tuple=True)  # a host sync: the response token count
        parts_h.append(hidden[seq, pos])
        parts_y.append(ids[seq, pos + 1])
        parts_s.append(seq if g is None else sel[seq])
    if len(parts_h) == 1:
        return parts_h[0], parts_y[0], parts_s[0]
    return torch.cat(parts_h), torch.cat(parts_y), torch.cat(parts_s)


# (model, batch, average) -> (sequence log-probs, response token counts); ``tokens=True`` adds a ``TokenLogps``.
LogpsFn = Callable[..., tuple[torch.Tensor, ...]]


def logps_function(model_cfg) -> LogpsFn:
    """The sequence log-prob function ``model.logps`` selects: ``(model, batch, average) -> (logps, counts)``."""
    if model_cfg.logps == "full":
        from trustregion.models.loading import sequence_logps

        return sequence_logps
    return functools.partial(
        response_logps, chunk_tokens=int(model_cfg.logits_chunk_tokens), share_prompt=bool(model_cfg.share_prompt)
    )
