"""Structured configs: one dataclass per config group, stored in Hydra's ConfigStore by ``trustregion.cli.app.register``.

Each YAML file under ``conf/<group>/`` starts from its schema (``defaults: [/schema/<group>/<name>@_here_]``),
so an unknown key or a value of the wrong type fails at start-up. Range checks that types cannot
express (alpha in (0, 1], beta > 0, ...) are in ``validate``. Method-specific schemas live beside their
objective (``trustregion.objectives.objective``), dataset-specific ones beside their loader (``trustregion.data``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from trustregion.errors import ConfigError


class OnBadRow(str, Enum):
    error = "error"
    skip = "skip"


class Schedule(str, Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class ZeroUpdate(str, Enum):
    sharded = "sharded"  # each rank lerps its own shards, no communication
    gathered = "gathered"  # GatheredParameters on both models (slower; for comparison)


@dataclass
class MethodConfig:
    name: str = MISSING  # a key of trustregion.objectives.objective.OBJECTIVES
    beta: float = 0.1
    # Average log-probs over response tokens instead of summing them (TRL's IPO does; the IPO paper does not).
    average_logps: bool = False


@dataclass
class RefUpdateConfig:
    """The reference-update rule: ``_target_`` names its class (``trustregion.reference.rules``). The built-in ones
    read ``alpha`` and ``tau`` (every ``tau`` optimizer steps, ref <- alpha*policy + (1-alpha)*ref); a rule with
    settings of its own subclasses this schema. ``tau: null`` with the ``Frozen`` rule: never updates."""

    _target_: str = "trustregion.reference.rules.EveryTau"
    name: str = "none"
    alpha: float = 1.0
    tau: Optional[int] = None


@dataclass
class ModelConfig:
    name: str = "tiny"
    # HF hub name or local directory for from_pretrained; null builds the tiny GPT-NeoX below from scratch.
    path: Optional[str] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2; null = transformers' default
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    gguf_file: Optional[str] = None  # a GGUF file inside model.path (dequantized on load)
    # Sequence log-probs: "chunked" runs the LM head on response positions only, logits_chunk_tokens rows at a
    # time (trustregion.models.logps; exact, no [batch, seq, vocab] logits); "full" takes them from the model's logits.
    logps: str = "chunked"
    logits_chunk_tokens: int = 1024  # ~256 for a 128k vocabulary (one fp32 chunk of 1024 rows: 525 MB)
    share_prompt: bool = False  # chosen and rejected on one run of their shared prompt (its KV cache); chunked only
    # The tiny model (path: null): GPT-NeoX (Pythia) architecture, random init, tokenizer trained on the data.
    # Presets of pretrained models set these to null: their shape is the checkpoint's, and config.yaml says so.
    hidden_size: Optional[int] = 64
    num_layers: Optional[int] = 2
    num_heads: Optional[int] = 4
    intermediate_size: Optional[int] = 256
    max_position_embeddings: Optional[int] = 256
    vocab_size: Optional[int] = 512


TINY_SHAPE = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings", "vocab_size")


class AdapterReferenceMode(str, Enum):
    auto = "auto"  # exact when its dense deltas are at most 15 % of the base model's bytes, else factors
    exact = "exact"  # a dense fp32 delta per adapted module: the Trust-Region update holds exactly
    factors = "factors"  # a second (A, B) pair lerped factor by factor: exact only for alpha = 1 or frozen


@dataclass
class PeftConfig:
    """LoRA adapters on a frozen base (``peft=lora``); ``peft=none`` trains every weight."""

    name: str = "none"
    rank: int = 8
    alpha: float = 16.0  # LoRA's scale is alpha / rank
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or ["all-linear"]
    adapter_path: Optional[str] = None  # continue from a saved PEFT adapter (its own rank, alpha and targets)
    reference: AdapterReferenceMode = AdapterReferenceMode.auto
    # Under reference=factors, also keep the exact delta (dense, as exact does) to log ref/factors_error;
    # null: only where that delta is cheap (the auto rule's budget).
    factors_error: Optional[bool] = None
    export_merged: bool = False  # also save policy_merged/ and reference_merged/ (whole models) at the end


@dataclass
class DatasetConfig:
    name: str = MISSING
    max_length: int = 128  # prompt + response tokens
    max_prompt_length: int = 64  # prompts are cut from the left to this many tokens first
    max_samples: Optional[int] = None
    eval_samples: int = 64  # held-out pairs for evaluation (taken from the train split if no eval split)
    on_bad_row: OnBadRow = OnBadRow.error
    seed: int = 0


@dataclass
class TrainerConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    schedule: Schedule = Schedule.constant
    warmup_steps: int = 0
    batch_size: int = 8  # pairs per micro-batch per process
    grad_accum: int = 1
    max_steps: Optional[int] = None  # optimizer steps; null: run `epochs` passes over the data
    epochs: float = 1.0
    max_grad_norm: Optional[float] = 1.0
    fused_optimizer: bool = False  # AdamW(fused=True) instead of foreach=True (see scripts/bench.py --experiments)
    # fp32 | bf16-mixed | fp16-mixed: mixed runs compute in 16 bits (autocast on one process, DeepSpeed's bf16/fp16
    # sections under ZeRO) and keep fp32 master weights and optimizer state; fp16 adds loss scaling.
    precision: str = "fp32"
    # Stop when a step's loss or gradient norm is non-finite or exceeds this many times its running median (the
    # loss's never below its first value); null: only non-finite values stop the run.
    divergence_factor: Optional[float] = 100.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at the end only
    eval_at_start: bool = True  # evaluate before the first step too: the KL = 0 point of every curve
    save_every: int = 0  # 0: checkpoint at the end only
    keep_last: int = 2
    # The last checkpoint of a run that ends cleanly keeps the optimizer and scheduler state (exact resume, e.g.
    # with more steps); false drops them (about half a checkpoint's size: Adam's two fp32 moments).
    final_optimizer_state: bool = True
    resume: Optional[str] = None  # a checkpoint dir, or "latest" (newest complete one in this run dir)
    save_models: bool = True  # export policy/ and reference/ (save_pretrained) at the end; false: no export
    # The checkpoint at the end (what trainer.resume=latest continues from, e.g. with more steps); false: none, for
    # sweeps that only want metrics and exports. Periodic checkpoints and one a stop signal asks for are kept.
    save_final: bool = True
    # Seconds between progress lines on the console; null: 15 on a terminal, none (the final line only) when
    # stderr is not a terminal or in a multirun; 0: none.
    progress_every_s: Optional[float] = None
    device: str = "auto"  # auto | cpu | cuda
    num_threads: Optional[int] = None
    shuffle: bool = True
    # With a frozen reference (ref_update=none) on one process, reuse the cached SFT log-probs as the
    # reference's instead of running it every step (they are the same model on the same data).
    cache_reference: bool = True
    # A dir shared by runs of one SFT model and dataset: the SFT log-probs of the rows are scored by the first run and
    # read by the next (keyed by the weights, the rows and the settings; trustregion/training/sft_logps.py). One process.
    sft_logps_cache: Optional[str] = None


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | none; metrics.jsonl is always written
    mode: str = "offline"  # offline | online | disabled
    project: str = "trustregion"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the family (method, beta, update rule), shared by runs that differ in seed
    name: Optional[str] = None  # null: derived from method, ref_update, alpha, tau, seed
    tags: list[str] = field(default_factory=list)
    system_metrics: bool = True  # wandb's CPU/GPU utilisation and memory panels


@dataclass
class EvalConfig:
    generate: bool = False  # sample from the policy and score it (tasks with a gold judge: the toy task)
    prompts: int = 64  # held-out prompts sampled for generation-based evaluation
    samples_per_prompt: int = 2
    max_new_tokens: int = 16
    temperature: float = 1.0
    greedy: bool = False
    batch_size: Optional[int] = None  # sequences per generation and scoring batch; null: 4 x trainer.batch_size
    plot: bool = True


@dataclass
class DeepSpeedConfig:
    stage: int = 0  # 0: plain torch on one process; 1, 2 or 3: DeepSpeed ZeRO
    offload_optimizer: bool = False
    offload_params: bool = False
    # ZeRO-3 keeps parameters below this size whole on every rank; 0 shards them all (see reference.py).
    param_persistence_threshold: int = 0
    backend: Optional[str] = None  # null: nccl on GPUs, gloo on CPU
    # How ZeRO-3 applies the reference update: sharded (each rank its own shards) or gathered (whole, on rank 0).
    reference_update: ZeroUpdate = ZeroUpdate.sharded


@dataclass
class Config:
    method: MethodConfig = MISSING
    # A RefUpdateConfig for the built-in rules; untyped here so that a rule written outside the package can bring a
    # YAML with settings of its own (checked against its own schema when the rule is built).
    ref_update: Any = MISSING
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    deepspeed: DeepSpeedConfig = MISSING
    peft: PeftConfig = field(default_factory=PeftConfig)
    run_name: Optional[str] = None
    verbose: bool = False  # third-party progress bars and info messages (transformers, datasets, DeepSpeed)
    hooks: list[str] = field(
        default_factory=list
    )  # extra step hooks: classes (<module>.<Class>) built with no argument


@dataclass
class SFTRunConfig:
    """The SFT stage: no method, no reference update, no generation evaluation."""

    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    deepspeed: DeepSpeedConfig = MISSING
    peft: PeftConfig = field(default_factory=PeftConfig)
    run_name: Optional[str] = None
    verbose: bool = False
    hooks: list[str] = field(default_factory=list)


def _run_time(fmt: str) -> str:
    """``${run_time:%H-%M-%S}``: like Hydra's ``${now:}``, but every rank of one launch gets rank 0's time."""
    import os
    from datetime import datetime

    stamp = os.environ.get("TRUSTREGION_RUN_TIME")
    return (datetime.fromtimestamp(float(stamp)) if stamp else datetime.now()).strftime(fmt)


def schemas() -> dict[str, type]:
    """The group schemas of this module as ``{group: dataclass}`` (stored by ``trustregion.cli.app.register``)."""
    return {
        "ref_update": RefUpdateConfig,
        "model": ModelConfig,
        "trainer": TrainerConfig,
        "logger": LoggerConfig,
        "deepspeed": DeepSpeedConfig,
        "peft": PeftConfig,
    }


_DTYPES = ("float32", "bfloat16", "float16")
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")


def check(ok: bool, key: str, value: Any, want: str) -> None:
    """Raise one ConfigError line naming ``key``, its value and what to set it to, unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!s} is invalid: set {key} to {want}")


def check_model_config(model: DictConfig, precision: str) -> None:
    """The model's dtype against the trainer's precision, and how its log-probs are computed."""
    check(model.dtype in _DTYPES, "model.dtype", model.dtype, f"one of {', '.join(_DTYPES)}")
    check(precision in PRECISIONS, "trainer.precision", precision, ", ".join(PRECISIONS))
    mixed = "bf16-mixed" if model.dtype == "bfloat16" else "fp16-mixed"
    check(
        model.dtype == "float32" or precision != "fp32",
        "model.dtype",
        model.dtype,
        f"float32, or keep it and set trainer.precision={mixed}: 16-bit weights updated without fp32 masters round "
        "small steps away (bf16's spacing is 0.0078 at 1.0) and AdamW's eps underflows in fp16",
    )
    check(model.logps in ("chunked", "full"), "model.logps", model.logps, "chunked or full")
    if model.path is None:  # the tiny model is built from its shape keys
        for key in TINY_SHAPE:
            value = model[key]
            check(value is not None and value >= 1, f"model.{key}", value, "an integer >= 1 (model=tiny sets it)")
    check(
        model.logits_chunk_tokens >= 1,
        "model.logits_chunk_tokens",
        model.logits_chunk_tokens,
        "an integer >= 1",
    )
    check(
        not (model.share_prompt and (model.logps == "full" or model.gradient_checkpointing)),
        "model.share_prompt",
        model.share_prompt,
        "false, or use model.logps=chunked without model.gradient_checkpointing (which turns the KV cache off)",
    )


def validate(cfg: DictConfig, reference_moves: bool = False) -> None:
    """Range checks the schema types cannot express; raises ConfigError naming the field and the fix. The rule's own
    settings are checked by the rule (``trustregion.reference.rules``); ``reference_moves``: whether it ever updates."""
    t, d = cfg.trainer, cfg.dataset
    if "method" in cfg:
        m = cfg.method
        check(m.beta > 0 and math.isfinite(m.beta), "method.beta", m.beta, "a number > 0")
    check_model_config(cfg.model, t.precision)
    check(t.lr > 0, "trainer.lr", t.lr, "a number > 0")
    check(
        t.divergence_factor is None or t.divergence_factor > 1,
        "trainer.divergence_factor",
        t.divergence_factor,
        "a number > 1 (how many times its running median a loss or gradient norm may reach), or null",
    )
    check(t.batch_size >= 1, "trainer.batch_size", t.batch_size, "an integer >= 1")
    check(
        t.sft_logps_cache is None or cfg.deepspeed.stage == 0,
        "trainer.sft_logps_cache",
        t.sft_logps_cache,
        "null under DeepSpeed (a sharded model's weights cannot be digested on one rank)",
    )
    check(t.grad_accum >= 1, "trainer.grad_accum", t.grad_accum, "an integer >= 1")
    check(t.max_steps is None or t.max_steps >= 1, "trainer.max_steps", t.max_steps, "an integer >= 1 or null")
    check(t.epochs > 0, "trainer.epochs", t.epochs, "a number > 0")
    check(t.warmup_steps >= 0, "trainer.warmup_steps", t.warmup_steps, "an integer >= 0")
    check(t.log_every >= 1, "trainer.log_every", t.log_every, "an integer >= 1")
    check(t.keep_last >= 1, "trainer.keep_last", t.keep_last, "an integer >= 1")
    check(
        t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
        "trainer.device",
        t.device,
        "auto, cpu or cuda",
    )
    check(
        t.max_grad_norm is None or t.max_grad_norm > 0, "trainer.max_grad_norm", t.max_grad_norm, "a number > 0 or null"
    )
    check(d.max_length >= 2, "dataset.max_length", d.max_length, "an integer >= 2")
    check(
        0 <= d.max_prompt_length < d.max_length,
        "dataset.max_prompt_length",
        d.max_prompt_length,
        f"an integer in [0, dataset.max_length={d.max_length}) so responses keep at least one token",
    )
    check(cfg.logger.backend in ("wandb", "none"), "logger.backend", cfg.logger.backend, "wandb or none")
    check(
        cfg.logger.mode in ("offline", "online", "disabled"),
        "logger.mode",
        cfg.logger.mode,
        "offline, online or disabled",
    )
    check(cfg.deepspeed.stage in (0, 1, 2, 3), "deepspeed.stage", cfg.deepspeed.stage, "0 (off), 1, 2 or 3")
    check(
        t.final_optimizer_state or cfg.deepspeed.stage == 0,
        "trainer.final_optimizer_state",
        t.final_optimizer_state,
        "true under ZeRO (DeepSpeed keeps the fp32 weights in the optimizer state)",
    )
    if "eval" in cfg and cfg.eval.generate:
        check_eval_config(cfg.eval)
    if "peft" in cfg and cfg.peft.name != "none":
        check_peft_config(cfg, reference_moves)


def check_peft_config(cfg: DictConfig, reference_moves: bool) -> None:
    """Range checks of ``peft`` and its fit with the reference update and DeepSpeed; one ConfigError each."""
    p = cfg.peft
    if p.name != "lora":
        raise ConfigError(f"peft.name={p.name} is invalid: set peft=lora or peft=none")
    if p.rank < 1:
        raise ConfigError(f"peft.rank={p.rank} is invalid: set peft.rank to an integer >= 1")
    if not p.alpha > 0:
        raise ConfigError(f"peft.alpha={p.alpha} is invalid: set peft.alpha to a number > 0")
    if not 0 <= p.dropout < 1:
        raise ConfigError(f"peft.dropout={p.dropout} is invalid: set peft.dropout to a number in [0, 1)")
    if not p.target_modules:
        raise ConfigError("peft.target_modules=[] is invalid: name the modules to adapt, or set it to [all-linear]")
    mode = str(p.reference.value)
    frozen = not reference_moves
    if frozen and mode != "auto" and "ref_update" in cfg:
        raise ConfigError(
            f"peft.reference={mode} is for a moving reference but ref_update=none (frozen: the base with adapters "
            "disabled, or the starting adapter); set peft.reference=auto or ref_update=soft|hard"
        )
    if cfg.model.share_prompt:
        raise ConfigError(
            "model.share_prompt=true is not supported with peft=lora (the reference's prompt cache would need "
            "its delta too); set model.share_prompt=false"
        )
    if cfg.deepspeed.stage == 3:
        if mode == "exact" or p.factors_error:
            key = "peft.reference=exact" if mode == "exact" else "peft.factors_error=true"
            raise ConfigError(
                f"{key} does not run under deepspeed=zero3: the exact delta needs whole B and A at every update "
                "(a gather), and ZeRO-3 partitions them; use peft.reference=factors (shard by shard), or deepspeed=zero2"
            )
        if p.export_merged:
            raise ConfigError(
                "peft.export_merged=true does not run under deepspeed=zero3 (the merge reads whole weights); "
                "merge the exported adapters afterwards, or set peft.export_merged=false"
            )


def check_eval_config(ev: DictConfig) -> None:
    """Range checks of the generation settings; one ConfigError naming the field and the fix."""
    if ev.prompts < 1:
        raise ConfigError(f"eval.prompts={ev.prompts} is invalid: set eval.prompts to an integer >= 1")
    if ev.samples_per_prompt < 1:
        raise ConfigError(f"eval.samples_per_prompt={ev.samples_per_prompt} is invalid: set it to an integer >= 1")
    if ev.batch_size is not None and ev.batch_size < 1:
        raise ConfigError(
            f"eval.batch_size={ev.batch_size} is invalid: set eval.batch_size to an integer >= 1, or null"
        )
    if ev.max_new_tokens < 1:
        raise ConfigError(
            f"eval.max_new_tokens={ev.max_new_tokens} is invalid: set eval.max_new_tokens to an integer >= 1"
        )
    if not ev.greedy and not (ev.temperature > 0 and math.isfinite(ev.temperature)):
        raise ConfigError(
            f"eval.temperature={ev.temperature} is invalid: set eval.temperature > 0, or eval.greedy=true"
        )
