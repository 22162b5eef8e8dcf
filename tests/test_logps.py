"""trustregion.models.logps.response_logps equals the full-logits path (models.sequence_logps) and never holds full logits."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trustregion.data.tokenize import PairCollator
from trustregion.models.loading import sequence_logps
from trustregion.models.logps import head_logps, response_logps
from trustregion.objectives.losses import dpo_loss

torch.set_num_threads(1)

ARCHS = ["gpt-neox", "llama-tied", "llama-untied"]
VOCAB = {"gpt-neox": 300, "llama-tied": 400, "llama-untied": 512}
MAX_LENGTH = 24


def tiny(arch: str, dtype: torch.dtype = torch.float32):
    """A 1-layer random model: GPT-NeoX (untied embed_out), SmolLM2-like tied Llama, Llama-3-like untied Llama."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt-neox":
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=VOCAB[arch],
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=4,
                intermediate_size=64,
                tie_word_embeddings=False,
            )
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB[arch],
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                tie_word_embeddings=arch == "llama-tied",
            )
        )
    return model.to(dtype)


def pair_batch(vocab: int) -> dict[str, torch.Tensor]:
    """3 pairs, right-padded: prompts and responses of different lengths; one chosen response runs to the last column."""
    g = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    rows = [
        {"prompt_ids": ids(5), "chosen_ids": ids(MAX_LENGTH - 5), "rejected_ids": ids(4), "index": 0},  # truncated
        {"prompt_ids": ids(9), "chosen_ids": ids(7), "rejected_ids": ids(11), "index": 1},
        {"prompt_ids": ids(3), "chosen_ids": ids(2), "rejected_ids": ids(6), "index": 2},
    ]
    return PairCollator(pad_token_id=0)(rows)


def response_tokens(batch) -> int:
    return int(batch["response_mask"][:, 1:].sum())


def dpo_grads(model, logps_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sequence log-probs and the gradients of a DPO loss (against a fixed reference) w.r.t. every parameter."""
    batch = pair_batch(model.config.vocab_size)
    model.zero_grad(set_to_none=True)
    logps, _ = logps_fn(model, batch)
    pol = logps.view(2, -1)
    ref = torch.linspace(-80.0, -20.0, pol.numel()).view(2, -1)
    losses, _, _ = dpo_loss(pol[0], pol[1], ref[0], ref[1], beta=0.5)
    losses.mean().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_grads(got: dict, want: dict, atol: float, rtol: float = 0.0) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("arch", ARCHS)
def test_logps_and_counts_equal_the_full_logits_path(arch):
    model, batch = tiny(arch), pair_batch(VOCAB[arch])
    want, want_counts = sequence_logps(model, batch)
    got, counts = response_logps(model, batch, chunk_tokens=16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    assert torch.equal(counts, want_counts)
    assert got.dtype == torch.float32


@pytest.mark.parametrize("arch", ARCHS)
def test_averaged_logps_equal_the_full_logits_path(arch):
    model, batch = tiny(arch), pair_batch(VOCAB[arch])
    want, _ = sequence_logps(model, batch, average=True)
    got, _ = response_logps(model, batch, average=True, chunk_tokens=16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_dpo_gradients_of_every_parameter_equal_the_full_logits_path(arch):
    model = tiny(arch)
    want_logps, want = dpo_grads(model, sequence_logps)
    got_logps, got = dpo_grads(model, lambda m, b: response_logps(m, b, chunk_tokens=16))
    torch.testing.assert_close(got_logps, want_logps, atol=1e-5, rtol=1e-6)
    assert_same_grads(got, want, atol=1e-5)


@pytest.mark.parametrize("chunk", ["smaller", "equal", "larger"])
def test_chunk_size_does_not_change_logps_or_gradients(chunk):
    model = tiny("llama-tied")
    tokens = response_tokens(pair_batch(VOCAB["llama-tied"]))
    size = {"smaller": 5, "equal": tokens, "larger": tokens + 100}[chunk]
    want_logps, want = dpo_grads(model, sequence_logps)
    got_logps, got = dpo_grads(model, lambda m, b: response_logps(m, b, chunk_tokens=size))
    torch.testing.assert_close(got_logps, want_logps, atol=1e-5, rtol=1e-6)
    assert_same_grads(got, want, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt-neox", "llama-tied"])
def test_bf16_logps_and_gradients_are_close_to_the_full_logits_path(arch):
    # Both paths compute logits in bf16 and the softmax in fp32; they differ by bf16 rounding of the head's
    # matmuls (accumulation order) and by our fp32 accumulation of grad_weight across chunks.
    model = tiny(arch, torch.bfloat16)
    want_logps, want = dpo_grads(model, sequence_logps)
    got_logps, got = dpo_grads(model, lambda m, b: response_logps(m, b, chunk_tokens=16))
    torch.testing.assert_close(got_logps, want_logps, atol=0.05, rtol=2e-3)
    for name in want:
        scale = want[name].float().abs().max().clamp(min=1e-6)
        assert (got[name].float() - want[name].float()).abs().max() <= 0.02 * scale, name


def test_reference_call_without_grad_matches_and_builds_no_graph():
    model = tiny("gpt-neox")
    batch = pair_batch(VOCAB["gpt-neox"])
    with torch.no_grad():
        want, _ = sequence_logps(model, batch)
        got, _ = response_logps(model, batch, chunk_tokens=8)
    assert not got.requires_grad and got.grad_fn is None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)


def test_head_with_a_bias_gets_exact_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(13, 16, requires_grad=True)
    labels = torch.randint(0, 50, (13,))
    upstream = torch.randn(13)
    want = torch.log_softmax(head(hidden), -1).gather(1, labels[:, None]).squeeze(1)
    want_grads = torch.autograd.grad((want * upstream).sum(), (hidden, head.weight, head.bias))
    got = head_logps(hidden, head, labels, chunk_tokens=4)
    got_grads = torch.autograd.grad((got * upstream).sum(), (hidden, head.weight, head.bias))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_zero3_module_path_computes_the_same_logps_and_gradients_in_one_process():
    # The path head_logps takes for a ZeRO-3 head (module called per chunk, recomputed in backward), unpartitioned.
    from trustregion.models.logps import _checkpointed_module_chunks

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(13, 16, requires_grad=True)
    labels = torch.randint(0, 50, (13,))
    upstream = torch.randn(13)
    want = head_logps(hidden, head, labels, chunk_tokens=4)
    want_grads = torch.autograd.grad((want * upstream).sum(), (hidden, head.weight, head.bias))
    got = _checkpointed_module_chunks(hidden, head, labels, chunk_tokens=4)
    got_grads = torch.autograd.grad((got * upstream).sum(), (hidden, head.weight, head.bias))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def saved_activation_bytes(model, logps_fn) -> int:
    """Bytes autograd saves for backward during one call, parameters excluded (they are stored anyway)."""
    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logps_fn(model, pair_batch(model.config.vocab_size))
    return total


def body_only(model, batch):
    return model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)


def test_head_saves_less_than_a_quarter_of_the_logits_where_the_full_path_saves_them_all():
    model = tiny("llama-untied")
    logits_bytes = response_tokens(pair_batch(VOCAB["llama-untied"])) * VOCAB["llama-untied"] * 4
    body = saved_activation_bytes(model, body_only)
    full = saved_activation_bytes(model, sequence_logps) - body
    ours = saved_activation_bytes(model, lambda m, b: response_logps(m, b, chunk_tokens=8)) - body
    assert full >= logits_bytes  # the measurement sees logits where they are saved
    assert ours < logits_bytes / 4


class _LargestVocabSizedOutput(TorchDispatchMode):
    """Records the most elements of any newly allocated op output whose last dimension is the vocabulary.

    An output is new when its storage is none of the op's inputs' (views and in-place results are not).
    """

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if (
                isinstance(t, torch.Tensor)
                and t.dim() >= 2
                and t.shape[-1] == self.vocab
                and t.untyped_storage().data_ptr() not in inputs
            ):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def test_backward_materialises_at_most_one_chunk_of_logits():
    model, vocab, chunk = tiny("llama-untied"), VOCAB["llama-untied"], 8
    batch = pair_batch(vocab)
    assert response_tokens(batch) > 4 * chunk
    logps, _ = response_logps(model, batch, chunk_tokens=chunk)
    with _LargestVocabSizedOutput(vocab) as seen:
        logps.sum().backward()
    assert 0 < seen.largest <= chunk * vocab


def test_full_logits_path_backward_is_seen_materialising_full_logits():
    # The probe of the test above, on the path it replaces: it does see [batch, length, vocab] tensors.
    model, vocab = tiny("llama-untied"), VOCAB["llama-untied"]
    batch = pair_batch(vocab)
    logps, _ = sequence_logps(model, batch)
    with _LargestVocabSizedOutput(vocab) as seen:
        logps.sum().backward()
    assert seen.largest >= response_tokens(batch) * vocab


@pytest.mark.slow
def test_zero3_partitioned_head_gives_the_logps_and_gradients_of_one_process():
    # 2 gloo ranks with different response token counts (so different chunk counts) under ZeRO-3.
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "tests/zero3_logps_worker.py",
    ]
    out = subprocess.run(
        cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, env=env, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["partitioned"]
    assert result["logps_diff"] <= 1e-5
    assert result["grad_diff"] <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prompt_logps_and_dpo_gradients_equal_the_full_logits_path(arch):
    import warnings

    model = tiny(arch)
    want_logps, want = dpo_grads(model, sequence_logps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to whole rows would warn
        got_logps, got = dpo_grads(model, lambda m, b: response_logps(m, b, chunk_tokens=16, share_prompt=True))
    torch.testing.assert_close(got_logps, want_logps, atol=1e-5, rtol=1e-6)
    assert_same_grads(got, want, atol=1e-5)


def test_shared_prompt_serves_three_chunks_per_prompt():
    from trustregion.models.prompt_sharing import shared_prompt_rows

    model = tiny("llama-untied")
    g = torch.Generator().manual_seed(2)
    rows = [
        {
            "prompt_ids": torch.randint(1, 512, (p,), generator=g).tolist(),
            "index": i,
            **{
                f"{c}_ids": torch.randint(1, 512, (n,), generator=g).tolist()
                for c, n in zip(("chosen", "rejected", "mismatched"), lens)
            },
        }
        for i, (p, lens) in enumerate([(4, (6, 3, 9)), (8, (2, 5, 4))])
    ]
    batch = PairCollator(pad_token_id=0, chunks=("chosen", "rejected", "mismatched"))(rows)
    assert shared_prompt_rows(model, batch) is not None
    want, _ = sequence_logps(model, batch)
    got, _ = response_logps(model, batch, share_prompt=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)


def test_shared_prompt_refuses_pairs_whose_prompts_differ_and_runs_rows_whole():
    model, batch = tiny("gpt-neox"), pair_batch(VOCAB["gpt-neox"])
    batch["input_ids"][3, 1] = batch["input_ids"][0, 1] % 299 + 1  # the first pair's rejected row: another prompt
    want, _ = sequence_logps(model, batch)
    with pytest.warns(UserWarning, match="share_prompt"):
        got, _ = response_logps(model, batch, share_prompt=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)


def test_shared_prompt_refuses_a_body_that_keeps_no_cache():
    # transformers turns the cache off under gradient checkpointing in training mode.
    from trustregion.models.prompt_sharing import shared_prompt_rows

    model = tiny("llama-tied")
    model.activation_checkpointing_enable()
    model.train()
    assert shared_prompt_rows(model, pair_batch(VOCAB["llama-tied"])) is None


@pytest.mark.parametrize("method", ["dpo", "kto", "ipo"])
def test_the_training_loop_gives_the_same_losses_with_chunked_and_full_log_probs(fast_cfg, tmp_path, method):
    from trustregion.train import train

    def losses(mode: str) -> list[float]:
        train(fast_cfg(f"method={method}", f"model.logps={mode}", "model.logits_chunk_tokens=7"), tmp_path / mode)
        rows = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    full, chunked = losses("full"), losses("chunked")
    assert len(full) == 4 and chunked == pytest.approx(full, rel=2e-6, abs=1e-5)  # IPO losses are ~25


def test_share_prompt_with_gradient_checkpointing_is_refused_in_one_line(fast_cfg, tmp_path):
    from trustregion.errors import ConfigError
    from trustregion.train import train

    cfg = fast_cfg("model.logps=chunked", "model.share_prompt=true", "model.gradient_checkpointing=true")
    with pytest.raises(ConfigError, match="model.share_prompt=True is invalid: set model.share_prompt to false, or"):
        train(cfg, tmp_path)


def long_row_batch(vocab: int, long: int = 64) -> dict[str, torch.Tensor]:
    """4 pairs of a few tokens each, one of them with a ``long``-token prompt + chosen (a cut 22k-character row)."""
    g = torch.Generator().manual_seed(2)

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    rows = [{"prompt_ids": ids(3 + i), "chosen_ids": ids(4), "rejected_ids": ids(2 + i), "index": i} for i in range(4)]
    rows[1] = {"prompt_ids": ids(long // 2), "chosen_ids": ids(long // 2), "rejected_ids": ids(3), "index": 1}
    return PairCollator(pad_token_id=0)(rows)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_long_row_does_not_make_every_row_run_at_its_width(arch):
    # The cause of a long row's memory: the collator pads all rows to the longest, and the body kept activations for
    # rows x longest positions. The body must run on at most twice each row's own length.
    model, batch = tiny(arch), long_row_batch(VOCAB[arch])
    shapes = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    got, counts = response_logps(model, batch, chunk_tokens=16)
    hook.remove()
    positions, tokens = sum(r * w for r, w in shapes), int(batch["attention_mask"].sum())
    assert batch["input_ids"].shape[1] == 64 and positions <= 2 * tokens, shapes
    want, want_counts = sequence_logps(model, batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    assert torch.equal(counts, want_counts)


@pytest.mark.unit
@pytest.mark.parametrize("chunk_tokens", [1024, 3])
def test_per_token_log_probs_come_packed_by_row_and_rank_and_equal_the_full_logits_ones(chunk_tokens):
    """What LD-DPO and WPO read: each response token's log-prob, row and index in its response, and log Σ_v p_v²."""
    model = tiny("gpt-neox")
    batch = pair_batch(VOCAB["gpt-neox"])
    full_seq, full_counts, full = sequence_logps(model, batch, tokens=True, sum_sq=True)
    seq, counts, ours = response_logps(model, batch, chunk_tokens=chunk_tokens, tokens=True, sum_sq=True)
    torch.testing.assert_close(seq, full_seq, atol=1e-5, rtol=1e-6)
    order = torch.argsort(ours.row * 1000 + ours.rank)  # the same tokens, row by row in position order
    assert ours.row[order].tolist() == full.row.tolist() and ours.rank[order].tolist() == full.rank.tolist()
    torch.testing.assert_close(ours.logps[order], full.logps, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ours.log_sum_sq[order], full.log_sum_sq, atol=1e-5, rtol=1e-6)
    assert full.rank.tolist() == [r for n in full_counts.tolist() for r in range(n)]
    torch.testing.assert_close(torch.zeros_like(seq).index_add(0, ours.row, ours.logps), seq, atol=1e-5, rtol=1e-6)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    p = logits.softmax(-1)[batch["response_mask"][:, 1:].bool()]
    torch.testing.assert_close(full.log_sum_sq, (p**2).sum(-1).log(), atol=1e-5, rtol=1e-6)
