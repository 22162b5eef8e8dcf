"""Real-vocabulary shapes, built offline: random-init models with real widths and vocabularies, a word-level
tokenizer of the same size, and synthetic HH-like or TL;DR-like preference rows of random words."""

from __future__ import annotations

import json
import random
from pathlib import Path

MODELS = {
    "smollm2-135m-4l": dict(
        arch="llama", vocab=49152, hidden=576, heads=9, kv_heads=3, inter=1536, layers=4, tied=True
    ),
    "pythia-410m-2l": dict(
        arch="neox", vocab=50304, hidden=1024, heads=16, kv_heads=16, inter=4096, layers=2, tied=False
    ),
    "llama3-128k-2l": dict(
        arch="llama", vocab=128256, hidden=512, heads=8, kv_heads=2, inter=1536, layers=2, tied=False
    ),
}
SHAPES = {  # (prompt length range, response length range), in tokens
    "hh": ((100, 200), (80, 120)),
    "tldr": ((380, 420), (40, 60)),
}
EOS = "<eos>"


def build_model(name: str):
    """The random-init model ``name`` of ``MODELS`` (seed 0, fp32)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    m = MODELS[name]
    torch.manual_seed(0)
    if m["arch"] == "neox":
        config = GPTNeoXConfig(
            vocab_size=m["vocab"],
            hidden_size=m["hidden"],
            num_hidden_layers=m["layers"],
            num_attention_heads=m["heads"],
            intermediate_size=m["inter"],
            tie_word_embeddings=False,
            eos_token_id=0,
            pad_token_id=0,
        )
        return GPTNeoXForCausalLM(config)
    config = LlamaConfig(
        vocab_size=m["vocab"],
        hidden_size=m["hidden"],
        num_hidden_layers=m["layers"],
        num_attention_heads=m["heads"],
        num_key_value_heads=m["kv_heads"],
        intermediate_size=m["inter"],
        tie_word_embeddings=m["tied"],
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=0,
    )
    return LlamaForCausalLM(config)


def word_tokenizer(vocab: int):
    """A word-level tokenizer of exactly ``vocab`` tokens: id 0 is EOS (and padding), ``w<i>`` is id i."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {EOS: 0, **{f"w{i}": i for i in range(1, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token=EOS, padding_side="right"
    )


def synthetic_rows(shape: str, vocab: int, n: int, seed: int = 0) -> list[dict]:
    """``n`` preference rows of random words with ``shape``'s prompt and response lengths (one word = one token)."""
    rng = random.Random(seed)
    (p_lo, p_hi), (r_lo, r_hi) = SHAPES[shape]

    def words(lo: int, hi: int) -> str:
        return " ".join(f"w{rng.randrange(1, vocab)}" for _ in range(rng.randint(lo, hi)))

    return [
        {"prompt": words(p_lo, p_hi), "chosen": " " + words(r_lo, r_hi), "rejected": " " + words(r_lo, r_hi)}
        for _ in range(n)
    ]


def prepare(name: str, shape: str, rows: int, directory: Path) -> dict:
    """Write the model (``save_pretrained``, with its tokenizer) and ``rows`` synthetic rows as JSON lines."""
    directory.mkdir(parents=True, exist_ok=True)
    model_dir, data = directory / name, directory / f"{name}-{shape}.jsonl"
    if not (model_dir / "config.json").exists():
        build_model(name).save_pretrained(model_dir)
        word_tokenizer(MODELS[name]["vocab"]).save_pretrained(model_dir)
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(shape, MODELS[name]["vocab"], rows)))
    lengths = SHAPES[shape]
    max_length = lengths[0][1] + lengths[1][1] + 8  # nothing is truncated
    return {"model_dir": str(model_dir), "data": str(data), "max_length": max_length, "max_prompt": lengths[0][1] + 4}
