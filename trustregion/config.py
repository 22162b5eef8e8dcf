"""Structured configs: one dataclass per config group, stored in Hydra's ConfigStore by ``trustregion.cli.app.register``.

Each YAML file under ``conf/<group>/`` starts from its schema (``defaults: [/schema/<group>/<name>@_here_]``), so an
unknown key or a value of the wrong type fails at start-up. Each setting declares its meaning and its range where it
is declared (``trustregion.schema.setting``); rules that tie settings together are the schema's ``check_together``;
``validate`` runs them all. Method-specific schemas live beside their objective (``trustregion.objectives``),
dataset-specific ones beside their loader (``trustregion.data``), rule-specific ones beside their rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from trustregion.errors import ConfigError
from trustregion.schema import (
    FRACTION,
    HALF_OPEN,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    Schema,
    above,
    at_least,
    check,
    check_settings,
    each,
    one_of,
    or_null,
    setting,
)


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
class MethodConfig(Schema):
    """The objective: ``_target_`` names its class (``trustregion.objectives.methods``); a method with settings of its
    own subclasses this schema."""

    _target_: str = setting(
        "", "the objective's class, <module>.<Class>; empty: the package's method called `name` (dpo, ipo, kto)"
    )
    name: str = setting(MISSING, "the method's name in labels and run dirs: dpo, ipo, kto, hinge, ...")
    beta: float = setting(0.1, "β: the strength of the KL penalty towards the reference", POSITIVE)
    average_logps: bool = setting(
        False, "average log-probs over response tokens instead of summing them (TRL's IPO does; the IPO paper does not)"
    )


@dataclass
class RefUpdateConfig(Schema):
    """The reference-update rule: ``_target_`` names its class (``trustregion.reference.rules``). The built-in ones
    read ``alpha`` and ``tau`` (every ``tau`` optimizer steps, ref <- alpha*policy + (1-alpha)*ref); a rule with
    settings of its own subclasses this schema."""

    _target_: str = setting("trustregion.reference.rules.EveryTau", "the rule's class, <module>.<Class>")
    name: str = setting("none", "the rule's name in labels and run dirs")
    alpha: float = setting(
        1.0,
        "α: the weight of the policy in the mix (1: the hard update, a copy)",
        Range(FRACTION.ok, "a number in (0, 1] (1 = hard update)"),
    )
    tau: Optional[int] = setting(None, "τ: optimizer steps between updates", or_null(at_least(1)))


DTYPES = ("float32", "bfloat16", "float16")
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")


@dataclass
class ModelConfig(Schema):
    name: str = setting("tiny", "the model's name in labels and run dirs")
    path: Optional[str] = setting(
        None, "a hub name or local dir for from_pretrained; null builds the tiny GPT-NeoX below from scratch"
    )
    dtype: str = setting("float32", "the weights' dtype", one_of(*DTYPES))
    attn_implementation: Optional[str] = setting(None, "eager | sdpa | flash_attention_2; null: transformers' default")
    gradient_checkpointing: bool = setting(False, "recompute activations in backward (less memory, slower)")
    trust_remote_code: bool = setting(False, "let from_pretrained run the model repository's own code")
    gguf_file: Optional[str] = setting(None, "a GGUF file inside model.path (de-quantized on load)")
    logps: str = setting(
        "chunked",
        "sequence log-probs: chunked runs the LM head on response positions only, logits_chunk_tokens rows at a time "
        "(exact, no [batch, seq, vocab] logits); full takes them from the model's logits",
        one_of("chunked", "full"),
    )
    logits_chunk_tokens: int = setting(
        1024, "rows per LM-head chunk (~256 for a 128k vocabulary: one fp32 chunk of 1024 rows is 525 MB)", at_least(1)
    )
    share_prompt: bool = setting(
        False, "chosen and rejected on one run of their shared prompt (its KV cache); chunked log-probs only"
    )
    # The tiny model (path: null): GPT-NeoX (Pythia) architecture, random init, tokenizer trained on the data.
    # Presets of pretrained models set these to null: their shape is the checkpoint's.
    hidden_size: Optional[int] = setting(64, "the tiny model's width", or_null(at_least(1)))
    num_layers: Optional[int] = setting(2, "the tiny model's layers", or_null(at_least(1)))
    num_heads: Optional[int] = setting(4, "the tiny model's attention heads", or_null(at_least(1)))
    intermediate_size: Optional[int] = setting(256, "the tiny model's MLP width", or_null(at_least(1)))
    max_position_embeddings: Optional[int] = setting(256, "the tiny model's longest sequence", or_null(at_least(1)))
    vocab_size: Optional[int] = setting(512, "the tiny model's tokenizer vocabulary", or_null(at_least(1)))

    @classmethod
    def check_together(cls, model: DictConfig, root: DictConfig) -> None:
        precision = root.trainer.precision if "trainer" in root else "fp32"
        mixed = "bf16-mixed" if model.dtype == "bfloat16" else "fp16-mixed"
        check(
            model.dtype == "float32" or precision != "fp32",
            "model.dtype",
            model.dtype,
            f"float32, or keep it and set trainer.precision={mixed}: 16-bit weights updated without fp32 masters round "
            "small steps away (bf16's spacing is 0.0078 at 1.0) and AdamW's eps underflows in fp16",
        )
        if model.path is None:  # the tiny model is built from its shape keys
            for key in TINY_SHAPE:
                check(model[key] is not None, f"model.{key}", model[key], "an integer >= 1 (model=tiny sets it)")
        check(
            not (model.share_prompt and (model.logps == "full" or model.gradient_checkpointing)),
            "model.share_prompt",
            model.share_prompt,
            "false, or use model.logps=chunked without model.gradient_checkpointing (which turns the KV cache off)",
        )


TINY_SHAPE = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings", "vocab_size")


class AdapterReferenceMode(str, Enum):
    auto = "auto"  # exact when its dense deltas are at most 15 % of the base model's bytes, else factors
    exact = "exact"  # a dense fp32 delta per adapted module: the Trust-Region update holds exactly
    factors = "factors"  # a second (A, B) pair lerped factor by factor: exact only for alpha = 1 or frozen


@dataclass
class PeftConfig(Schema):
    """LoRA adapters on a frozen base (``peft=lora``); ``peft=none`` trains every weight."""

    name: str = setting("none", "none (full fine-tuning) or lora", one_of("none", "lora"))
    rank: int = setting(8, "LoRA's rank", at_least(1))
    alpha: float = setting(16.0, "LoRA's alpha (its scale is alpha / rank)", POSITIVE)
    dropout: float = setting(0.0, "dropout on the adapters' input", HALF_OPEN)
    target_modules: list[str] = setting(
        meaning="module names to adapt, or [all-linear]", factory=lambda: ["all-linear"]
    )
    adapter_path: Optional[str] = setting(None, "continue from a saved PEFT adapter (its own rank, alpha, targets)")
    reference: AdapterReferenceMode = setting(
        AdapterReferenceMode.auto,
        "a moving reference's form: exact (a dense fp32 delta per module), factors (a second A, B pair; exact only for "
        "alpha 1), auto (exact when its deltas are at most 15 % of the base model's bytes)",
    )
    factors_error: Optional[bool] = setting(
        None, "under reference=factors also keep the exact delta to log ref/factors_error; null: where it is cheap"
    )
    export_merged: bool = setting(False, "also save policy_merged/ and reference_merged/ (whole models) at the end")

    @classmethod
    def check_together(cls, p: DictConfig, root: DictConfig) -> None:
        if p.name == "none":
            return
        check(len(p.target_modules) > 0, "peft.target_modules", "[]", "the modules to adapt, or [all-linear]")
        mode = str(p.reference.value)
        if root.model.share_prompt:
            raise ConfigError(
                "model.share_prompt=true is not supported with peft=lora (the reference's prompt cache would need "
                "its delta too); set model.share_prompt=false"
            )
        if root.deepspeed.stage == 3:
            if mode == "exact" or p.factors_error:
                key = "peft.reference=exact" if mode == "exact" else "peft.factors_error=true"
                raise ConfigError(
                    f"{key} does not run under deepspeed=zero3: the exact delta needs whole B and A at every update "
                    "(a gather), and ZeRO-3 partitions them; use peft.reference=factors (shard by shard), or "
                    "deepspeed=zero2"
                )
            if p.export_merged:
                raise ConfigError(
                    "peft.export_merged=true does not run under deepspeed=zero3 (the merge reads whole weights); "
                    "merge the exported adapters afterwards, or set peft.export_merged=false"
                )


def check_adapter_reference(p: DictConfig, reference_moves: bool) -> None:
    """An adapter reference's mode needs a reference that moves."""
    mode = str(p.reference.value)
    if p.name != "none" and mode != "auto" and not reference_moves:
        raise ConfigError(
            f"peft.reference={mode} is for a moving reference but ref_update=none (frozen: the base with adapters "
            "disabled, or the starting adapter); set peft.reference=auto or ref_update=soft|hard"
        )


@dataclass
class DatasetConfig(Schema):
    """The data source: ``_target_`` names a ``trustregion.data.DataSource`` class (one written outside the package
    subclasses this schema for settings of its own); empty: the package's source called ``name``."""

    _target_: str = setting("", "the data source's class, <module>.<Class>; empty: the package's source called `name`")
    name: str = setting(MISSING, "the data source")
    max_length: int = setting(128, "prompt + response tokens", at_least(2))
    max_prompt_length: int = setting(64, "prompts are cut from the left to this many tokens first", at_least(0))
    max_samples: Optional[int] = setting(None, "use at most this many training rows; null: all", or_null(at_least(1)))
    eval_samples: int = setting(
        64, "held-out pairs for evaluation (taken from the train split if there is no eval split)", at_least(0)
    )
    on_bad_row: OnBadRow = setting(OnBadRow.error, "a malformed row: error (stop, naming it) or skip (count it)")
    seed: int = setting(0, "the seed of the held-out split and of shuffles inside the source")

    @classmethod
    def check_together(cls, d: DictConfig, root: DictConfig) -> None:
        check(
            d.max_prompt_length < d.max_length,
            "dataset.max_prompt_length",
            d.max_prompt_length,
            f"an integer in [0, dataset.max_length={d.max_length}) so responses keep at least one token",
        )


@dataclass
class TrainerConfig(Schema):
    lr: float = setting(1e-4, "AdamW's learning rate (after warm-up)", POSITIVE)
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay", NON_NEGATIVE)
    adam_betas: tuple[float, float] = setting((0.9, 0.999), "AdamW's betas", each(HALF_OPEN, 2))
    schedule: Schedule = setting(Schedule.constant, "the LR after warm-up: constant, linear or cosine decay")
    warmup_steps: int = setting(0, "optimizer steps of linear LR warm-up", at_least(0))
    batch_size: int = setting(8, "rows (pairs) per micro-batch per process", at_least(1))
    grad_accum: int = setting(1, "micro-batches per optimizer step", at_least(1))
    max_steps: Optional[int] = setting(
        None, "optimizer steps; null: run `epochs` passes over the data", or_null(at_least(1))
    )
    epochs: float = setting(1.0, "passes over the data when max_steps is null", POSITIVE)
    max_grad_norm: Optional[float] = setting(
        1.0, "clip the gradient's norm to this; null: no clipping", or_null(POSITIVE)
    )
    fused_optimizer: bool = setting(False, "AdamW(fused=True) instead of foreach=True")
    precision: str = setting(
        "fp32",
        "fp32 | bf16-mixed | fp16-mixed: mixed runs compute in 16 bits and keep fp32 master weights and optimizer "
        "state; fp16 adds loss scaling",
        one_of(*PRECISIONS),
    )
    divergence_factor: Optional[float] = setting(
        100.0,
        "stop when a step's loss or gradient norm is non-finite or exceeds this many times its running median (the "
        "loss's never below its first value); null: only non-finite values stop the run",
        or_null(above(1)),
    )
    seed: int = setting(0, "the run's seed (initialisation, data order, sampling)")
    log_every: int = setting(10, "optimizer steps between logged rows", at_least(1))
    eval_every: int = setting(0, "optimizer steps between evaluations; 0: at the end only", at_least(0))
    eval_at_start: bool = setting(True, "evaluate before the first step too: the KL = 0 point of every curve")
    save_every: int = setting(0, "optimizer steps between checkpoints; 0: at the end only", at_least(0))
    keep_last: int = setting(2, "checkpoints kept (the oldest are pruned)", at_least(1))
    final_optimizer_state: bool = setting(
        True, "the last checkpoint keeps the optimizer state (exact resume with more steps); false halves its size"
    )
    resume: Optional[str] = setting(
        None, "a checkpoint or run dir, or latest (the newest complete one of this run dir)"
    )
    save_models: bool = setting(True, "export policy/ and reference/ (save_pretrained) at the end")
    save_final: bool = setting(
        True, "write a checkpoint at the end (what trainer.resume=latest continues from); false: periodic ones only"
    )
    progress_every_s: Optional[float] = setting(
        None,
        "seconds between console progress lines; null: 15 on a terminal, none in a multirun or without one; 0: none",
        or_null(NON_NEGATIVE),
    )
    device: str = setting(
        "auto",
        "where to train: auto (a GPU if there is one), cpu, cuda or cuda:N",
        Range(lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"), "auto, cpu or cuda"),
    )
    num_threads: Optional[int] = setting(None, "torch's CPU threads; null: the environment's", or_null(at_least(1)))
    shuffle: bool = setting(True, "shuffle the training rows each epoch")
    cache_reference: bool = setting(
        True,
        "with a frozen reference on one process, reuse the SFT log-probs as the reference's instead of running it",
    )
    sft_logps_cache: Optional[str] = setting(
        None,
        "a dir shared by runs of one SFT model and dataset: the SFT log-probs of the rows are scored once and read by "
        "later runs (one process)",
    )

    @classmethod
    def check_together(cls, t: DictConfig, root: DictConfig) -> None:
        stage = root.deepspeed.stage if "deepspeed" in root else 0
        check(
            t.sft_logps_cache is None or stage == 0,
            "trainer.sft_logps_cache",
            t.sft_logps_cache,
            "null under DeepSpeed (a sharded model's weights cannot be digested on one rank)",
        )
        check(
            t.final_optimizer_state or stage == 0,
            "trainer.final_optimizer_state",
            t.final_optimizer_state,
            "true under ZeRO (DeepSpeed keeps the fp32 weights in the optimizer state)",
        )


@dataclass
class LoggerConfig(Schema):
    backend: str = setting("wandb", "wandb or none; metrics.jsonl is always written", one_of("wandb", "none"))
    mode: str = setting(
        "offline", "wandb's mode (WANDB_MODE in the environment wins)", one_of("offline", "online", "disabled")
    )
    project: str = setting("trustregion", "the wandb project")
    entity: Optional[str] = setting(None, "the wandb entity (user or team); null: wandb's default")
    group: Optional[str] = setting(None, "the wandb group; null: the run's family (runs that differ only in seed)")
    name: Optional[str] = setting(None, "the wandb run name; null: model, data, family label and seed")
    tags: list[str] = setting(meaning="extra wandb tags", factory=list)
    system_metrics: bool = setting(True, "wandb's CPU/GPU utilisation and memory panels")


@dataclass
class EvalConfig(Schema):
    generate: bool = setting(False, "sample from the policy and score it with the task's gold (toy, sentiment)")
    prompts: int = setting(64, "held-out prompts sampled for generation-based evaluation", at_least(1))
    samples_per_prompt: int = setting(2, "samples per prompt", at_least(1))
    max_new_tokens: int = setting(16, "the longest sample", at_least(1))
    temperature: float = setting(1.0, "the sampling temperature (ignored with greedy)", NON_NEGATIVE)
    greedy: bool = setting(False, "greedy decoding: one sample per prompt")
    batch_size: Optional[int] = setting(
        None, "sequences per generation and scoring batch; null: 4 x trainer.batch_size", or_null(at_least(1))
    )
    plot: bool = setting(True, "write gold_vs_kl.png into the run dir at each evaluation")

    @classmethod
    def check_together(cls, ev: DictConfig, root: DictConfig) -> None:
        check(ev.greedy or ev.temperature > 0, "eval.temperature", ev.temperature, "a number > 0, or eval.greedy=true")


@dataclass
class DeepSpeedConfig(Schema):
    stage: int = setting(0, "0: plain torch on one process; 1, 2 or 3: DeepSpeed ZeRO", one_of("0", "1", "2", "3"))
    offload_optimizer: bool = setting(False, "ZeRO: keep the optimizer state in CPU memory")
    offload_params: bool = setting(False, "ZeRO-3: keep the parameters in CPU memory")
    param_persistence_threshold: int = setting(
        0, "ZeRO-3 keeps parameters below this size whole on every rank; 0 shards them all", at_least(0)
    )
    backend: Optional[str] = setting(None, "the process group's backend; null: nccl on GPUs, gloo on CPU")
    reference_update: ZeroUpdate = setting(
        ZeroUpdate.sharded, "ZeRO-3: sharded (each rank its own shards) or gathered (whole, on rank 0; slower)"
    )


@dataclass
class RunConfig(Schema):
    """What every training stage has: the model, its data, the trainer, the logger, the engine, the adapters."""

    model: ModelConfig = MISSING
    # A DatasetConfig (subclass) for the package's sources; untyped, like method and ref_update, so that a source
    # written outside the package brings a YAML with settings of its own (``trustregion.data.dataset_settings``).
    dataset: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    deepspeed: DeepSpeedConfig = MISSING
    peft: PeftConfig = setting(meaning="LoRA adapters", factory=PeftConfig)
    verbose: bool = setting(False, "third-party progress bars and info messages (transformers, datasets, DeepSpeed)")
    hooks: list[str] = setting(
        meaning="extra step hooks: classes <module>.<Class>, built with no argument", factory=list
    )


@dataclass
class Config(RunConfig):
    """Preference alignment: a method and a reference-update rule on top of a run."""

    # A MethodConfig (subclass) for the package's methods; untyped here, like ref_update, so that a method written
    # outside the package can bring a YAML with settings of its own (checked against its own schema when built).
    method: Any = MISSING
    # A RefUpdateConfig for the built-in rules; untyped here so that a rule written outside the package can bring a
    # YAML with settings of its own (checked against its own schema when the rule is built).
    ref_update: Any = MISSING
    eval: EvalConfig = setting(meaning="generation-based evaluation", factory=EvalConfig)


@dataclass
class SFTRunConfig(RunConfig):
    """The SFT stage: no method, no reference update, no generation evaluation."""


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


GROUPS = ("method", "model", "dataset", "trainer", "logger", "eval", "deepspeed", "peft")


def validate(cfg: DictConfig, reference_moves: bool = False) -> None:
    """Every group's declared ranges and combined rules (``trustregion.schema``); one ConfigError naming the setting and
    the fix. The rule's own settings are checked when it is built (``trustregion.reference.rules.build_rule``);
    ``reference_moves``: whether that rule ever updates."""
    for group in GROUPS:
        if group in cfg:
            check_settings(cfg[group], group, cfg)
    if "ref_update" in cfg:
        check_adapter_reference(cfg.peft, reference_moves)
