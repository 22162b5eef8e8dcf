"""What the bench runs: models, data, our configs and TRL's, the full and quick plans, and their configs."""

from __future__ import annotations

import os

MODELS = {
    # like the TRL notes in shared/README.md: hidden 128, 4 layers, vocab ~512, seq up to 128, batch 8
    "tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 512},
    # a larger model that still trains at a few s/step on 2 cores
    "small": {"hidden_size": 384, "num_layers": 6, "num_heads": 6, "intermediate_size": 1536},
}
# The toy task with longer walks: 32-token prompts, 64-token responses (+ EOS), 97 tokens per sequence;
# 128 symbols give a 472-token BPE vocabulary. 64 pairs: the loop cycles through them (throughput only).
DATA = [
    "dataset=toy",
    "dataset.pair_source=process",
    "dataset.vocab=128",
    "dataset.prompt_len=32",
    "dataset.response_len=64",
    "dataset.max_length=128",
    "dataset.max_prompt_length=64",
    "dataset.num_pairs=64",
    "dataset.eval_samples=8",
    "dataset.sft_samples=64",
]
BATCH = 8
THREADS = 2
# Our runs: (name, overrides). "frozen" = ref_update=none.
CONFIGS = {
    "dpo-frozen-cached": ["method=dpo", "ref_update=none", "trainer.cache_reference=true"],
    "dpo-frozen": ["method=dpo", "ref_update=none", "trainer.cache_reference=false"],
    "tr-dpo-soft": ["method=dpo", "ref_update=soft", "ref_update.alpha=0.6", "ref_update.tau=1"],
    "tr-dpo-hard": ["method=dpo", "ref_update=hard", "ref_update.alpha=1.0", "ref_update.tau=64"],
    "tr-ipo-soft": ["method=ipo", "ref_update=soft", "ref_update.alpha=0.6", "ref_update.tau=1"],
    "tr-kto-soft": ["method=kto", "ref_update=soft", "ref_update.alpha=0.6", "ref_update.tau=1"],
}
TRL_CONFIGS = {
    "trl-frozen": {"sync_ref_model": False, "precompute_ref_log_probs": False},
    "trl-synced": {"sync_ref_model": True, "ref_model_mixup_alpha": 0.6, "ref_model_sync_steps": 1},
    "trl-precomputed": {"sync_ref_model": False, "precompute_ref_log_probs": True},
}
# ours vs TRL: which of our rows each TRL row is compared with
TRL_PAIRS = {"trl-frozen": "dpo-frozen", "trl-synced": "tr-dpo-soft", "trl-precomputed": "dpo-frozen-cached"}
# ~100M+ parameters for the update-alone timing: Pythia-160M's shape (GPT-NeoX, 162M parameters)
# the BPE vocabulary the tiny model gets on the bench data (reported by the training runs)
TINY_VOCAB = 472
BIG = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072, "vocab": 50304}

PLANS = {
    # per model: rounds of interleaved runs, warm-up and timed steps (hard: enough steps to include its update)
    "full": {
        "budget_s": 840,
        "models": {
            "tiny": {
                "rounds": 2,
                "warmup": 4,
                "steps": 24,
                "steps_hard": 64,
                "configs": list(CONFIGS),
                "trl": list(TRL_CONFIGS),
            },
            "small": {
                "rounds": 2,
                "warmup": 2,
                "steps": 5,
                "steps_hard": 5,
                "configs": ["dpo-frozen-cached", "dpo-frozen", "tr-dpo-soft", "tr-dpo-hard"],
                "trl": [],
            },
        },
        "update": {"tiny_reps": 200, "big_reps": 8},
        "zero3": {"models": ["tiny", "small"], "reps": 20, "train_steps": 24, "train_warmup": 4},
    },
    "quick": {
        "budget_s": 150,
        "models": {
            "tiny": {
                "rounds": 1,
                "warmup": 3,
                "steps": 15,
                "steps_hard": 15,
                "configs": ["dpo-frozen-cached", "dpo-frozen", "tr-dpo-soft"],
                "trl": ["trl-frozen", "trl-synced"],
            },
        },
        "update": {"tiny_reps": 50, "big_reps": 3},
        "zero3": {"models": ["tiny"], "reps": 5, "train_steps": 0, "train_warmup": 0},
    },
}

# Whole DPO steps at real vocabularies (scripts/benchkit/shapes.py), ours vs TRL's DPOTrainer on the same files.
REAL_PAIRS_PER_BATCH = 4
SOFT = ["method=dpo", "ref_update=soft", "ref_update.alpha=0.6", "ref_update.tau=1"]
REAL_CONFIGS = {
    "frozen": ["method=dpo", "ref_update=none"],  # the default: log-probs cached, no reference model built
    "soft": SOFT,  # chunked response-only head (the default for real models)
    "soft, full logits": [*SOFT, "model.logps=full"],
    "soft, shared prompt": [*SOFT, "model.share_prompt=true"],
    # LoRA rank 8 on every linear layer: the reference is the shared base plus a delta (docs/guides/lora.md)
    "LoRA frozen": ["method=dpo", "ref_update=none", "peft=lora"],
    "LoRA soft, factors": [*SOFT, "peft=lora", "peft.reference=factors", "peft.factors_error=false"],
    "LoRA soft, exact": [*SOFT, "peft=lora", "peft.reference=exact"],
}
REAL_LORA = ("LoRA frozen", "LoRA soft, factors", "LoRA soft, exact")
REAL_TRL = {
    "TRL precomputed": {"sync_ref_model": False, "precompute_ref_log_probs": True},
    "TRL synced": {"sync_ref_model": True, "ref_model_mixup_alpha": 0.6, "ref_model_sync_steps": 1},
}
REAL_TRL_PAIRS = {"TRL precomputed": "frozen", "TRL synced": "soft"}  # each TRL run vs the run of ours it follows
REAL_GOAL = ("smollm2-135m-4l", "hh")  # where the goals are set
# Compute precisions of the real-vocabulary rows: our overrides, and TRL's DPOConfig fields for the same mode
# (bf16=True is autocast over fp32 weights, as our bf16-mixed). An entry lists its own, fp32 by default.
REAL_PRECISIONS = {
    "fp32": {"ours": [], "trl": {}},
    "bf16-mixed": {"ours": ["trainer.precision=bf16-mixed"], "trl": {"bf16": True}},
}
# The precision issue's goals for bf16-mixed against the same run in fp32 (ours, same config): whole steps at least
# BF16_GOAL times fp32's response tokens/s, MFU at least BF16_MFU_GOAL of the measured bf16 matmul peak, and peak
# memory at most BF16_MEMORY_GOAL times fp32's.
BF16_GOAL = 1.8
BF16_MFU_GOAL = 0.5
BF16_MEMORY_GOAL = 0.75


def real_label(config: str, precision: str) -> str:
    """A real-vocabulary row's name: the config alone in fp32, else the config and its precision."""
    return config if precision == "fp32" else f"{config}, {precision}"


def split_label(label: str) -> tuple[str, str]:
    """(config, precision) of a row's name (``real_label``'s inverse)."""
    for precision in REAL_PRECISIONS:
        if precision != "fp32" and label.endswith(f", {precision}"):
            return label[: -len(precision) - 2], precision
    return label, "fp32"


REAL_PLANS = {
    "full": {
        "warmup": 1,
        "steps": 3,  # the most timed steps of any entry (the rows file is sized for it)
        "head_reps": 3,
        "runs": [
            {
                "model": "smollm2-135m-4l",
                "shape": "hh",
                "rounds": 2,
                "ours": [c for c in REAL_CONFIGS if c not in REAL_LORA],
                "trl": list(REAL_TRL),
            },
            {"model": "smollm2-135m-4l", "shape": "hh", "rounds": 1, "steps": 2, "ours": list(REAL_LORA), "trl": []},
            {
                # bf16-mixed beside the fp32 rows above, the soft pair alone: on a CPU without bf16 units (AVX2) a
                # bf16 step here took ~11x fp32's (emulated matmuls: 50 vs 4.5 s, 2 threads), 3-6 minutes a run
                "model": "smollm2-135m-4l",
                "shape": "hh",
                "rounds": 1,
                "steps": 1,
                "ours": ["soft"],
                "trl": ["TRL synced"],
                "precisions": ["bf16-mixed"],
            },
            {
                "model": "smollm2-135m-4l",
                "shape": "tldr",
                "rounds": 1,
                "steps": 2,
                "ours": ["soft", "soft, shared prompt"],
                "trl": ["TRL synced"],
            },
            {
                "model": "pythia-410m-2l",
                "shape": "hh",
                "rounds": 1,
                "steps": 2,
                "ours": ["soft"],
                "trl": ["TRL synced"],
            },
            {
                "model": "llama3-128k-2l",
                "shape": "hh",
                "rounds": 1,
                "steps": 2,
                "ours": ["soft"],
                "trl": ["TRL synced"],
                "overrides": ["model.logits_chunk_tokens=256"],
            },
        ],
    },
    "quick": {
        "warmup": 1,
        "steps": 1,
        "head_reps": 1,
        "runs": [
            {
                "model": "smollm2-135m-4l",
                "shape": "hh",
                "rounds": 1,
                "ours": ["soft"],
                "trl": ["TRL synced"],
                "precisions": list(REAL_PRECISIONS),
            },
            {
                "model": "smollm2-135m-4l",
                "shape": "hh",
                "rounds": 1,
                "ours": ["LoRA frozen", "LoRA soft, factors"],
                "trl": [],
            },
        ],
    },
}

# Proposed package changes, each behind a config flag, timed against the baseline (--experiments).
EXPERIMENTS = {"baseline": [], "fused AdamW": ["trainer.fused_optimizer=true"]}


def quiet() -> None:
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        import datasets

        datasets.disable_progress_bars()
    except Exception:
        pass


def model_overrides(model: str) -> list[str]:
    return [f"model.{k}={v}" for k, v in MODELS[model].items()]


def compose(*overrides: str):
    """The config the CLI would compose (``trustregion.cli.app.compose``)."""
    from trustregion.cli.app import compose as cli_compose

    return cli_compose(*overrides)


def loop_overrides(model: str, total: int, threads: int | None = THREADS, batch: int = BATCH) -> list[str]:
    """The tiny/small model on the bench's toy data, with ``trainer_overrides``."""
    return [*trainer_overrides(total, threads, batch), *model_overrides(model), *DATA]


def trainer_overrides(total: int, threads: int | None, batch: int) -> list[str]:
    # optimisation settings pinned (TRL gets the same ones), so edits of conf/trainer/default.yaml do not move the bench
    return [
        "trainer=default",
        "trainer.epochs=1",
        "trainer.lr=1e-4",
        "trainer.schedule=constant",
        "trainer.warmup_steps=0",
        "trainer.max_grad_norm=1.0",
        "trainer.weight_decay=0.0",
        "trainer.adam_betas=[0.9,0.999]",
        "trainer.grad_accum=1",
        "method.beta=0.1",
        "logger=none",
        "eval.generate=false",
        "trainer.eval_every=0",
        "trainer.save_every=0",
        "trainer.save_models=false",
        "trainer.log_every=10",
        f"trainer.batch_size={batch}",
        f"trainer.max_steps={total + 10}",
        "trainer.device=auto",
        f"trainer.num_threads={threads if threads else 'null'}",
    ]
