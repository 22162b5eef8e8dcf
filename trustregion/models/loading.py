"""Policy, reference and tokenizer: the tiny default built offline, or any causal LM by name or path."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from trustregion.console import quiet_stderr
from trustregion.errors import ConfigError

EOS = "<|endoftext|>"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def build_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (offline, deterministic), GPT-NeoX style.

    ``<|endoftext|>`` is EOS, BOS and padding, as in Pythia's tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=EOS,
        unk_token=None,
        padding_side="right",
        model_max_length=1 << 20,
    )


def tiny_model(cfg, vocab_size: int, seed: int) -> nn.Module:
    """A GPT-NeoX (Pythia architecture) causal LM with random weights, sized by ``cfg``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        **({"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    return model.to(torch_dtype(cfg.dtype))


def resolve_model_path(path: str) -> str:
    """``pkg:<module>`` is an installed package's directory (models shipped as PyPI packages); else ``path``."""
    if not path.startswith("pkg:"):
        return path
    import importlib.util

    module = path[len("pkg:") :]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.path={path}: package '{module}' is not installed; install it (see the model's yaml)")
    return list(spec.submodule_search_locations)[0]


def check_model_path(cfg) -> None:
    """Refuse a ``model.path`` that names a local directory that is not there (or a package not installed) in one
    line, before any data is read: a wrong path must not wait until the data is fixed."""
    if cfg.path is None:
        return
    path = resolve_model_path(str(cfg.path))
    local = Path(path).expanduser()
    if str(cfg.path).startswith((".", "/", "~")) and not local.exists():
        raise ConfigError(
            f"model.path={cfg.path}: no such directory; set model.path to a saved model dir "
            "(e.g. <sft run dir>/policy) or a hub name"
        )


def gguf_to_load(path: str, gguf_file: str | None) -> str | None:
    """The preset's GGUF file, unless ``path`` is a saved model dir without it (the SFT stage's output):
    loading details follow the weights, so ``model=<gguf preset> model.path=<sft run>/policy`` loads what SFT saved."""
    if not gguf_file:
        return None
    local = Path(path)
    if local.is_dir() and not (local / gguf_file).exists() and (local / "config.json").exists():
        return None
    return gguf_file


def local_only(path: str) -> dict[str, bool]:
    """``from_pretrained`` options for ``path``: a local dir never asks the hub (no retry lines when offline)."""
    return {"local_files_only": True} if Path(path).expanduser().is_dir() else {}


def _load_error(cfg_path: str, what: str, e: Exception, key: str = "model.path") -> ConfigError:
    """One line naming the path and the fix, for any failure to load a model or tokenizer."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    local = Path(cfg_path).expanduser()
    if cfg_path.startswith((".", "/", "~")) and not local.exists():
        fix = f"no such directory; set {key} to a saved model dir (e.g. <sft run dir>/policy) or a hub name"
    elif isinstance(e, ImportError):
        fix = f"{first}; install the model's extra (see its conf/model/*.yaml)"
    else:
        fix = f"{first}; set {key} to a dir written by save_pretrained, or a hub name reachable from here"
    return ConfigError(f"{key}={cfg_path}: cannot load the {what} ({fix})")


def load_tokenizer(path: str, gguf_file: str | None = None, key: str = "model.path"):
    """The tokenizer at ``path`` (pad = EOS where it has none, right padding); ``key`` names the setting in errors."""
    from transformers import AutoTokenizer

    try:
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        with quiet_stderr():
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs, **local_only(path))
    except Exception as e:  # noqa: BLE001 - any failure to load is a bad model.path: one line, traceback chained
        raise _load_error(path, "tokenizer", e, key) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_for_sampling(path: str, key: str, gguf_file: str | None = None) -> tuple[nn.Module, object]:
    """(model in eval mode, tokenizer) saved at ``path`` (a GGUF file in it where ``gguf_file`` names one, see
    ``gguf_to_load``); a failure is one line naming ``key`` and the fix."""
    from transformers import AutoModelForCausalLM

    gguf = gguf_to_load(path, gguf_file)
    tokenizer = load_tokenizer(path, gguf, key=key)
    try:
        with quiet_stderr():
            options = {"gguf_file": gguf} if gguf else {}
            return AutoModelForCausalLM.from_pretrained(path, **options, **local_only(path)).eval(), tokenizer
    except Exception as e:  # noqa: BLE001 - any failure to load is a bad path: one line, traceback chained
        raise _load_error(path, "model", e, key) from e


def load_pretrained(cfg) -> nn.Module:
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg.path)
    kwargs = {"dtype": torch_dtype(cfg.dtype), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    gguf = gguf_to_load(path, cfg.gguf_file)
    try:
        if not gguf:
            return AutoModelForCausalLM.from_pretrained(path, **kwargs, **local_only(path))
        # GGUF weights are dequantized on load; rebuild a plain model so save_pretrained works.
        with quiet_stderr():
            loaded = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, **kwargs, **local_only(path))
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, **kwargs)
        model.load_state_dict(loaded.state_dict())
        return model
    except Exception as e:  # noqa: BLE001 - any failure to load is a bad model.path: one line, traceback chained
        raise _load_error(cfg.path, "model", e) from e


def load_policy(cfg, texts: Iterable[str] | None, seed: int):
    """(policy, tokenizer). The tiny model trains its tokenizer on ``texts``; a named model loads its own."""
    if cfg.path is None:
        if texts is None:
            raise ConfigError("model.path is null and there is no text to build the tiny tokenizer from")
        tokenizer = build_tokenizer(texts, cfg.vocab_size)
        policy = tiny_model(cfg, len(tokenizer), seed)
    else:
        path = resolve_model_path(cfg.path)
        tokenizer = load_tokenizer(path, gguf_to_load(path, cfg.gguf_file))
        policy = load_pretrained(cfg)
    if cfg.gradient_checkpointing:
        # transformers 5 renamed gradient_checkpointing_enable (deprecated, removed in v6).
        enable = getattr(policy, "activation_checkpointing_enable", None) or policy.gradient_checkpointing_enable
        enable()
        policy.config.use_cache = False
    return policy, tokenizer


def freeze(model: nn.Module) -> nn.Module:
    """Make ``model`` a reference: no gradients, eval mode (no dropout)."""
    model.requires_grad_(False)
    model.eval()
    return model


def make_reference(policy: nn.Module) -> nn.Module:
    """A frozen copy of ``policy`` with its own storage (also materialises memory-mapped weights)."""
    reference = copy.deepcopy(policy)
    return freeze(reference)


def sequence_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], average: bool = False, tokens: bool = False, sum_sq: bool = False
) -> tuple[torch.Tensor, ...]:
    """(log-prob of each sequence's response tokens, summed or averaged; response token counts), and with ``tokens``
    the packed ``TokenLogps`` (with ``sum_sq``, log Σ p² of each response position too).

    Uses ``logsumexp`` and a gather rather than a full ``log_softmax``, so no second logits-sized tensor.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    mask = batch["response_mask"][:, 1:]
    lse = torch.logsumexp(logits, dim=-1)
    token_logps = torch.gather(logits, 2, labels.unsqueeze(-1)).squeeze(-1) - lse
    token_logps = token_logps.masked_fill(~mask, 0.0)
    counts = mask.sum(-1)
    total = token_logps.sum(-1)
    sequences = total / counts.clamp(min=1) if average else total
    if not tokens:
        return sequences, counts
    from trustregion.models.logps import TokenLogps

    row, pos = mask.nonzero(as_tuple=True)
    rank = (mask.cumsum(-1) - 1)[row, pos]
    sq = None
    if sum_sq:
        with torch.no_grad():
            sq = (torch.logsumexp(2 * logits, dim=-1) - 2 * lse)[row, pos]
    return sequences, counts, TokenLogps(token_logps[row, pos], row, rank, sq)
