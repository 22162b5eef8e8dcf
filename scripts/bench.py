#!/usr/bin/env python
"""`make bench`: training throughput, reference-update cost, ZeRO-3 and a side-by-side with TRL's DPOTrainer.

    .venv/bin/python scripts/bench.py                # the full bench (about 14 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --quick        # a smoke version (about 2 minutes)
    .venv/bin/python scripts/bench.py --profile      # also torch.profiler tables of ours and TRL
    .venv/bin/python scripts/bench.py --experiments  # proposed trustregion/ changes, monkeypatched, vs baseline

Writes ``outputs/bench/<date>/bench.md`` and ``bench.json`` (``<date>-quick`` for ``--quick``; ``--out`` to
change) and prints the table.

How it measures (the same rules for every row):
- Every run is a fresh subprocess (``--worker``), so peak RSS (``ru_maxrss``) is that run's own and no
  state leaks between runs. Runs are interleaved in rounds (the order rotates each round; each TRL run
  comes right after the run of ours it is compared with); a row shows the median over rounds of each
  run's median step, its min-max over rounds, and the fastest single step of all rounds.
- Our loop is timed inside the real ``trustregion.train.train``: a wrapper around
  ``ReferenceUpdater.maybe_update`` (called once per optimizer step, after ``engine.step()``) stamps the
  wall clock, so one step = the time between two stamps: collation, both forwards, loss, backward,
  clipping, AdamW, the reference update and the loop's own metric/log bookkeeping. The first
  ``warmup`` steps are dropped; after the last timed step the wrapper stops the run (the final
  evaluation and checkpoint are setup/teardown, not steps).
- TRL's ``DPOTrainer`` is timed the same way: a callback stamps ``on_step_end``; same model (a GPT-NeoX
  built by ``trustregion.models.tiny_model`` from the same config and seed), same tokenizer, same toy
  pairs as a ``datasets.Dataset``, batch, lengths, fp32, threads, lr, clipping and constant schedule.
- Response tokens per step are counted from each batch's response (completion) mask, chosen + rejected.
- Threads (``--threads``, default auto): all cores when the 1-minute load average is under 0.75, else 1.
  With two threads on cores that other jobs keep busy, every parallel op waits for a descheduled
  partner thread (a 1M-element lerp went from 0.1 ms to 8 ms here), and the bench would time the
  scheduler. The choice and the load are written into the report.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PY = sys.executable

# --- settings ------------------------------------------------------------------------------------
MODELS = {
    # like the TRL notes in shared/README.md: hidden 128, 4 layers, vocab ~512, seq up to 128, batch 8
    "tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 512},
    # a larger model that still trains at a few s/step on 2 cores
    "small": {"hidden_size": 384, "num_layers": 6, "num_heads": 6, "intermediate_size": 1536},
}
# The toy task with longer walks: 32-token prompts, 64-token responses (+ EOS), 97 tokens per sequence;
# 128 symbols give a 472-token BPE vocabulary. 64 pairs: the loop cycles through them (throughput only).
DATA = ["dataset=toy", "dataset.pair_source=process", "dataset.vocab=128", "dataset.prompt_len=32",
        "dataset.response_len=64", "dataset.max_length=128", "dataset.max_prompt_length=64",
        "dataset.num_pairs=64", "dataset.eval_samples=8", "dataset.sft_samples=64"]
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
            "tiny": {"rounds": 3, "warmup": 4, "steps": 24, "steps_hard": 64, "configs": list(CONFIGS),
                     "trl": list(TRL_CONFIGS)},
            "small": {"rounds": 2, "warmup": 2, "steps": 5, "steps_hard": 5,
                      "configs": ["dpo-frozen-cached", "dpo-frozen", "tr-dpo-soft", "tr-dpo-hard"], "trl": []},
        },
        "update": {"tiny_reps": 200, "big_reps": 8},
        "zero3": {"models": ["tiny", "small"], "reps": 20, "train_steps": 24, "train_warmup": 4},
    },
    "quick": {
        "budget_s": 150,
        "models": {
            "tiny": {"rounds": 1, "warmup": 3, "steps": 15, "steps_hard": 15,
                     "configs": ["dpo-frozen-cached", "dpo-frozen", "tr-dpo-soft"], "trl": ["trl-frozen", "trl-synced"]},
        },
        "update": {"tiny_reps": 50, "big_reps": 3},
        "zero3": {"models": ["tiny"], "reps": 5, "train_steps": 0, "train_warmup": 0},
    },
}


# --- shared helpers (also used by scripts/bench_zero3.py) ------------------------------------------
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
    """The Hydra config exactly as the CLI composes it (as tests/conftest.py does)."""
    sys.path.insert(0, str(REPO))
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trustregion.config import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def loop_overrides(model: str, total: int, threads: int | None = THREADS, batch: int = BATCH) -> list[str]:
    # optimisation settings pinned (TRL gets the same ones), so edits of conf/trainer/default.yaml do not move the bench
    return ["trainer=default", "trainer.lr=1e-4", "trainer.schedule=constant", "trainer.warmup_steps=0",
            "trainer.max_grad_norm=1.0", "trainer.weight_decay=0.0", "trainer.adam_betas=[0.9,0.999]", "trainer.grad_accum=1",
            "method.beta=0.1", "logger=none", "eval.generate=false", "trainer.eval_every=0", "trainer.save_every=0",
            "trainer.save_models=false", "trainer.log_every=10", f"trainer.batch_size={batch}",
            f"trainer.max_steps={total + 10}", "trainer.device=auto",
            f"trainer.num_threads={threads if threads else 'null'}", *model_overrides(model), *DATA]


class StopBench(Exception):
    """Raised from the step hook after the last timed step: ends train() without its teardown."""


class LoopTimer:
    """Hooks train(): a wall-clock stamp per optimizer step, the update's own time, response tokens per step."""

    def __init__(self, total_steps: int, profile_after: int | None = None) -> None:
        self.total = total_steps
        self.profile_after = profile_after
        self.profiler = None
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []  # process CPU time (all threads): robust to other jobs on the cores
        self.update_ms: list[float] = []
        self.tokens: list = []  # 0-d tensors (no host sync in the loop)
        self.first_threads = None

    def install(self) -> None:
        import torch

        import trustregion.train as T
        from trustregion.reference import ReferenceUpdater

        timer, original_update, original_step = self, ReferenceUpdater.maybe_update, T.preference_step

        cuda = torch.cuda.is_available()

        def maybe_update(updater, step):
            if cuda:  # on a GPU, time the work, not its launch
                torch.cuda.synchronize()
            tic = time.perf_counter()
            updated = original_update(updater, step)
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if updated:
                timer.update_ms.append((now - tic) * 1e3)
            timer.stamps.append(now)
            timer.cpu_stamps.append(time.process_time())
            if timer.first_threads is None:
                timer.first_threads = torch.get_num_threads()
            if timer.profile_after is not None and len(timer.stamps) == timer.profile_after:
                timer.profiler = start_profiler()
            if len(timer.stamps) >= timer.total:
                raise StopBench()
            return updated

        def preference_step(engine, cfg, batch, *args, **kwargs):
            b = batch["index"].numel()
            timer.tokens.append(batch["response_mask"][: 2 * b if "desirable" not in batch else b, 1:].sum())
            return original_step(engine, cfg, batch, *args, **kwargs)

        ReferenceUpdater.maybe_update = maybe_update
        T.preference_step = preference_step

    def result(self, warmup: int) -> dict:
        deltas = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        timed = deltas[max(0, warmup - 1):]  # deltas[i] is step i+2
        cpu = [b - a for a, b in zip(self.cpu_stamps, self.cpu_stamps[1:])][max(0, warmup - 1):]
        toks = [int(t) for t in self.tokens]
        return {"step_s": timed, "cpu_step_s": cpu, "tokens_per_step": statistics.median(toks) if toks else 0,
                "update_ms": self.update_ms, "threads": self.first_threads, "steps_seen": len(self.stamps)}


def start_profiler():
    import torch

    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    prof.__enter__()
    return prof


def profile_summary(prof, steps: int) -> dict:
    """Top operators by self CPU time over the profiled steps, per step."""
    prof.__exit__(None, None, None)
    events = prof.key_averages()
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {"steps": steps, "total_ms_per_step": total / 1e3 / steps,
            "top": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps, "calls_per_step": e.count / steps}
                    for e in rows[:15]]}


def peak_memory() -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except Exception:
        pass
    return out


# --- proposed changes to trustregion/, tried by monkeypatching (--experiments) -----------------------
def response_only_logps(model, batch, average=False):
    """Like trustregion.models.sequence_logps, but the LM head runs only where a response token is predicted.

    The backbone runs as before; the output projection, logsumexp and gather see only the response
    positions (no [batch, length, vocab] logits for prompts and padding).
    """
    import torch

    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    mask = batch["response_mask"][:, 1:]
    labels = batch["input_ids"][:, 1:][mask]
    logits = model.get_output_embeddings()(hidden[:, :-1][mask]).float()
    token_logps = logits.gather(1, labels.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)
    rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
    total = torch.zeros(mask.shape[0], dtype=token_logps.dtype, device=mask.device).index_add(0, rows, token_logps)
    counts = mask.sum(-1)
    return (total / counts.clamp(min=1) if average else total), counts


def apply_patches(patches: list[str]) -> None:
    import torch

    if "fused_adamw" in patches:  # engine.py: AdamW(..., foreach=True) -> AdamW(..., fused=True)
        original = torch.optim.AdamW

        def adamw(params, *args, **kwargs):
            if kwargs.pop("foreach", None):
                kwargs["fused"] = True
            return original(params, *args, **kwargs)

        torch.optim.AdamW = adamw
    if "response_logps" in patches:  # the objective's models.sequence_logps -> response_only_logps
        import trustregion.objective as objective

        objective.sequence_logps = response_only_logps


# --- workers (each in its own process) ----------------------------------------------------------
def worker_ours(spec: dict) -> dict:
    quiet()
    t0 = time.perf_counter()
    import torch

    import trustregion.train as T

    apply_patches(spec.get("patches", []))
    total = spec["warmup"] + spec["steps"] + 1
    cfg = compose(*loop_overrides(spec["model"], total, spec["threads"]), *CONFIGS[spec["config"]])
    timer = LoopTimer(total, spec["warmup"] if spec.get("profile") else None)
    timer.install()
    params = {}
    original_engine = T.make_engine

    def make_engine(cfg, policy, reference, total_steps):
        params["n"] = sum(p.numel() for p in policy.parameters())
        params["vocab"] = policy.config.vocab_size
        return original_engine(cfg, policy, reference, total_steps)

    T.make_engine = make_engine
    with tempfile.TemporaryDirectory(prefix="bench-") as run_dir:
        try:
            T.train(cfg, Path(run_dir))
        except StopBench:
            pass
    out = timer.result(spec["warmup"])
    if timer.profiler is not None:
        out["profile"] = profile_summary(timer.profiler, total - spec["warmup"])
    out.update(peak_memory(), params=params.get("n"), vocab=params.get("vocab"),
               setup_s=timer.stamps[0] - t0 if timer.stamps else None, torch_threads=torch.get_num_threads(),
               lr=float(cfg.trainer.lr), max_grad_norm=cfg.trainer.max_grad_norm, schedule=str(cfg.trainer.schedule.value))
    return out


def worker_trl(spec: dict) -> dict:
    quiet()
    t0 = time.perf_counter()
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.callbacks import SyncRefModelCallback

    from trustregion.data import load_preferences
    from trustregion.models import load_policy, make_reference

    torch.set_num_threads(spec["threads"])
    total = spec["warmup"] + spec["steps"] + 1
    cfg = compose(*loop_overrides(spec["model"], total, spec["threads"]), *CONFIGS["dpo-frozen"])
    torch.manual_seed(cfg.trainer.seed)
    data = load_preferences(cfg.dataset)
    policy, tokenizer = load_policy(cfg.model, data.texts(), cfg.trainer.seed)  # the same GPT-NeoX and tokenizer
    reference = make_reference(policy)
    t = cfg.trainer
    stamps: list[float] = []
    cpu_stamps: list[float] = []
    sync_ms: list[float] = []
    tokens: list = []

    original_sync = SyncRefModelCallback.sync_target_model

    def timed_sync(model, target_model, alpha):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        tic = time.perf_counter()
        original_sync(model, target_model, alpha)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        sync_ms.append((time.perf_counter() - tic) * 1e3)

    SyncRefModelCallback.sync_target_model = staticmethod(timed_sync)

    profiler = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())
            if spec.get("profile") and len(stamps) == spec["warmup"]:
                profiler.append(start_profiler())
            if len(stamps) >= total:
                control.should_training_stop = True
                if profiler:
                    profiler.append(profile_summary(profiler[0], total - spec["warmup"]))

    class CountingDPOTrainer(DPOTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            tokens.append(inputs["completion_mask"][:, 1:].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out_dir:
        args = DPOConfig(
            output_dir=out_dir, per_device_train_batch_size=BATCH, max_steps=total + 10,
            learning_rate=t.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.weight_decay,
            adam_beta1=t.adam_betas[0], adam_beta2=t.adam_betas[1], max_grad_norm=t.max_grad_norm,
            beta=cfg.method.beta, loss_type=["sigmoid"], max_length=cfg.dataset.max_length,
            gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
            logging_steps=t.log_every, save_strategy="no", eval_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, seed=t.seed, **spec["trl"],
        )
        trainer = CountingDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data.train,
                                     processing_class=tokenizer, callbacks=[Stamp()])
        threads = torch.get_num_threads()
        trainer.train()
        optimizer = type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer).__name__
        defaults = getattr(trainer.optimizer, "defaults", {})
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]
    toks = [int(x) for x in tokens]
    cpu = [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:])]
    return {**({"profile": profiler[1]} if len(profiler) > 1 else {}),
            "step_s": deltas[max(0, spec["warmup"] - 1):], "cpu_step_s": cpu[max(0, spec["warmup"] - 1):],
            "tokens_per_step": statistics.median(toks) if toks else 0,
            "update_ms": sync_ms, "threads": threads, "steps_seen": len(stamps), **peak_memory(),
            "params": sum(p.numel() for p in policy.parameters()), "vocab": policy.config.vocab_size,
            "setup_s": stamps[0] - t0 if stamps else None, "optimizer": f"{optimizer} (fused={defaults.get('fused')}, "
            f"foreach={defaults.get('foreach')})", "args": {k: str(getattr(args, k)) for k in ("optim", "bf16", "gradient_checkpointing", "max_length", "learning_rate",
                                                   "lr_scheduler_type", "warmup_steps", "max_grad_norm", "weight_decay")},
            "lr_seen": trainer.lr_scheduler.get_last_lr()[0] if trainer.lr_scheduler else None}


def worker_update(spec: dict) -> dict:
    """Time one reference update alone: fused (ReferenceUpdater), per-parameter loops, and a plain copy."""
    quiet()
    import torch
    from omegaconf import OmegaConf

    from trustregion.models import make_reference, tiny_model
    from trustregion.reference import ReferenceUpdater, mixable_tensors

    torch.set_num_threads(spec["threads"])
    results = {}
    for name, shape, reps in (("tiny", {**MODELS["tiny"], "vocab": TINY_VOCAB}, spec["tiny_reps"]),
                              ("pythia-160m-shape", BIG, spec["big_reps"])):
        mcfg = OmegaConf.create({"dtype": "float32", "attn_implementation": None, "max_position_embeddings": 256,
                                 **{k: v for k, v in shape.items() if k != "vocab"}})
        device = "cuda" if torch.cuda.is_available() else "cpu"
        policy = tiny_model(mcfg, shape["vocab"], seed=0).to(device)
        reference = make_reference(policy)
        with torch.no_grad():  # make the two differ, as they do in training
            for p in policy.parameters():
                p.add_(1e-3)
        pol, ref = mixable_tensors(policy), mixable_tensors(reference)
        n = sum(p.numel() for p in policy.parameters())
        elems = sum(t.numel() for t in pol)
        alpha = 0.6
        soft = ReferenceUpdater(pol, ref, alpha, 1)
        hard = ReferenceUpdater(pol, ref, 1.0, 1)

        def naive():  # TRL's / the authors' loop: parameters only
            for r, p in zip(reference.parameters(), policy.parameters()):
                r.data.mul_(1.0 - alpha).add_(p.data, alpha=alpha)

        def loop_lerp():
            for r, p in zip(ref, pol):
                r.lerp_(p, alpha)

        methods = {
            "copy (torch._foreach_copy_)": (lambda: torch._foreach_copy_(ref, pol), 8),
            "fused soft (ReferenceUpdater, _foreach_lerp_)": (soft.update, 12),
            "fused hard (ReferenceUpdater, alpha=1)": (hard.update, 8),
            "naive loop (mul_(1-a).add_(p, alpha=a))": (naive, 20),
            "loop of lerp_ per tensor": (loop_lerp, 12),
        }
        times = {m: [] for m in methods}
        with torch.no_grad():
            for rep in range(reps + 2):
                order = list(methods)[rep % len(methods):] + list(methods)[: rep % len(methods)]
                for m in order:
                    fn = methods[m][0]
                    if device == "cuda":
                        torch.cuda.synchronize()
                    tic = time.perf_counter()
                    fn()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - tic
                    if rep >= 2:
                        times[m].append(dt)
        results[name] = {"params": n, "tensors": len(pol), "elements": elems, "reps": reps,
                         "methods": {m: {"ms": [x * 1e3 for x in times[m]], "bytes_per_elem": methods[m][1]}
                                     for m in methods}}
        del policy, reference, pol, ref, soft, hard
    results.update(peak_memory())
    return results


def worker_head(spec: dict) -> dict:
    """sequence_logps (full logits) vs response_only_logps: forward + backward on one batch, small and 50k vocabularies."""
    quiet()
    import torch
    from omegaconf import OmegaConf

    from trustregion.models import sequence_logps, tiny_model

    torch.set_num_threads(spec["threads"])
    g = torch.Generator().manual_seed(0)
    out = {}
    for vocab in (TINY_VOCAB, BIG["vocab"]):
        mcfg = OmegaConf.create({"dtype": "float32", "attn_implementation": None, "max_position_embeddings": 256,
                                 **MODELS["tiny"]})
        model = tiny_model(mcfg, vocab, seed=0)
        b, length = 2 * BATCH, 97
        batch = {"input_ids": torch.randint(1, vocab, (b, length), generator=g),
                 "attention_mask": torch.ones(b, length, dtype=torch.long),
                 "response_mask": torch.zeros(b, length, dtype=torch.bool)}
        batch["response_mask"][:, 32:] = True  # 32 prompt tokens, 65 response tokens, as in the bench data
        diff = (sequence_logps(model, batch)[0] - response_only_logps(model, batch)[0]).abs().max().item()
        times = {"full logits (current)": [], "response positions only": []}
        fns = {"full logits (current)": sequence_logps, "response positions only": response_only_logps}
        for rep in range(spec["reps"] + 2):
            for name, fn in fns.items():
                tic = time.perf_counter()
                fn(model, batch)[0].sum().backward()
                if rep >= 2:
                    times[name].append((time.perf_counter() - tic) * 1e3)
                model.zero_grad(set_to_none=True)
        out[str(vocab)] = {"max_abs_diff": diff, "ms": times}
    # AdamW step alone, as engine.py builds it (foreach=True) and fused, on the bench models
    optim = {}
    for name in MODELS:
        mcfg = OmegaConf.create({"dtype": "float32", "attn_implementation": None, "max_position_embeddings": 256,
                                 **MODELS[name]})
        params = list(tiny_model(mcfg, TINY_VOCAB, seed=0).parameters())
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opts = {"foreach=True (current)": torch.optim.AdamW(params, lr=1e-4, foreach=True),
                "fused=True": torch.optim.AdamW(params, lr=1e-4, fused=True)}
        times = {k: [] for k in opts}
        for rep in range(spec["reps"] * 4 + 3):
            for k, opt in opts.items():
                tic = time.perf_counter()
                opt.step()
                if rep >= 3:
                    times[k].append((time.perf_counter() - tic) * 1e3)
        optim[name] = {"params": sum(p.numel() for p in params), "ms": times}
    return {"head": out, "optim": optim}


WORKERS = {"ours": worker_ours, "trl": worker_trl, "update": worker_update, "head": worker_head}
EXPERIMENTS = {"baseline": [], "fused AdamW": ["fused_adamw"], "LM head on response positions": ["response_logps"],
               "both": ["fused_adamw", "response_logps"]}


# --- the orchestrator -------------------------------------------------------------------------------
def run_worker(kind: str, spec: dict, timeout: float, log) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [PY, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec), "--result", result_path]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONPATH": str(REPO)}
    tic = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout)[-1500:], "wall_s": time.perf_counter() - tic}
        out = json.loads(Path(result_path).read_text())
        out["wall_s"] = time.perf_counter() - tic
        return out
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - tic}
    finally:
        Path(result_path).unlink(missing_ok=True)


def run_zero3(plan: dict, log) -> dict:
    """Two ranks under torchrun (gloo, 1 thread each): the update alone, then the real loop."""
    out = {}
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for mode in ("update", "train"):
        if mode == "train" and not plan["train_steps"]:
            continue
        with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
            result_path = f.name
        spec = {"mode": mode, **plan}
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "scripts" / "bench_zero3.py"), "--spec", json.dumps(spec), "--result", result_path]
        tic = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
            if proc.returncode != 0:
                out[mode] = {"error": (proc.stderr or proc.stdout)[-1500:]}
            else:
                out[mode] = json.loads(Path(result_path).read_text())
        except subprocess.TimeoutExpired:
            out[mode] = {"error": "timed out after 420 s"}
        finally:
            Path(result_path).unlink(missing_ok=True)
        out[mode]["wall_s"] = time.perf_counter() - tic
        log(f"zero3 {mode}: {'error' if 'error' in out[mode] else 'ok'} ({out[mode]['wall_s']:.0f} s)")
    return out


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def machine_info() -> dict:
    import importlib.metadata as md

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "deepspeed", "trl", "datasets", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "gpu": gpu, "versions": versions, "loadavg_start": load}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke version (~2 min)")
    ap.add_argument("--out", default=None, help="output dir (default outputs/bench/<date>)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of interleaved runs for every model (default: per plan)")
    ap.add_argument("--budget", type=float, default=None, help="seconds after which no new round starts")
    ap.add_argument("--sections", default="throughput,trl,update,zero3")
    ap.add_argument("--threads", default="auto",
                    help="torch threads per single-process run: a number, or auto (all cores if the 1-minute load "
                         "average is under 0.75, else 1: two threads on cores that other jobs keep busy wait on each "
                         "other at every parallel op, and then the scheduler is what gets measured)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile (torch.profiler) ours and TRL with a soft/synced reference on the tiny model")
    ap.add_argument("--experiments", action="store_true",
                    help="only run the proposed trustregion/ changes (monkeypatched) against the baseline")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        sys.path.insert(0, str(REPO))
        load = os.getloadavg()[0]
        result = WORKERS[a.worker](json.loads(a.spec))
        result["load1_start"], result["load1_end"] = load, os.getloadavg()[0]
        Path(a.result).write_text(json.dumps(result))
        return

    plan = PLANS["quick" if a.quick else "full"]
    budget = a.budget or plan["budget_s"]
    load1 = os.getloadavg()[0]
    if a.threads == "auto":
        threads = (os.cpu_count() or 1) if load1 < 0.75 else 1
        threads_note = f"auto: 1-minute load {load1:.2f} at start -> {threads}"
    else:
        threads, threads_note = int(a.threads), "set with --threads"
    sections = set(a.sections.split(","))
    # A quick run never overwrites the day's full run.
    day = _dt.datetime.now().strftime("%Y-%m-%d")
    out_dir = Path(a.out) if a.out else REPO / "outputs" / "bench" / (f"{day}-quick" if a.quick else day)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench {time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    info = machine_info()
    log(f"{info['cpu_count']} CPUs ({info['cpu_model']}), load {fmt_load(info['loadavg_start'])}, torch {info['versions']['torch']}, "
        f"trl {info['versions']['trl']}; plan {'quick' if a.quick else 'full'}; {threads} thread(s) ({threads_note})")
    if "trl" in sections and info["versions"]["trl"] == "not installed":
        log("trl is not installed: pip install -e '.[bench]' (skipping the TRL section)")
        sections.discard("trl")

    if a.experiments:
        run_experiments(a, threads, threads_note, out_dir, start, log, info)
        return
    # Jobs in time order: each TRL run right after the run of ours it is compared with.
    jobs: list[tuple[int, str, str, dict]] = []  # (rounds, key, kind, spec)
    for model, p in plan["models"].items():
        trl_for = {TRL_PAIRS[c]: c for c in p["trl"]} if "trl" in sections else {}
        ours = [c for c in CONFIGS if (c in p["configs"] and "throughput" in sections) or c in trl_for]
        for c in ours:
            steps = p["steps_hard"] if c == "tr-dpo-hard" else p["steps"]
            base = {"model": model, "warmup": p["warmup"], "steps": steps, "threads": threads}
            jobs.append((p["rounds"], f"{model}/{c}", "ours", {**base, "config": c}))
            if c in trl_for:
                jobs.append((p["rounds"], f"{model}/{trl_for[c]}", "trl", {**base, "steps": p["steps"], "trl": TRL_CONFIGS[trl_for[c]]}))
    runs: dict = {}
    extras: dict = {}
    walls: dict = {}
    rounds = a.rounds or max([j[0] for j in jobs], default=0)

    def do_round(r: int) -> None:
        todo = [j for j in jobs if (a.rounds or j[0]) > r]
        k = r % max(1, len(todo))
        for _, key, kind, spec in todo[k:] + todo[:k]:  # rotate the order each round
            res = run_worker(kind, spec, timeout=600, log=log)
            runs.setdefault(key, []).append(res)
            walls[key] = res["wall_s"]
            if "error" in res:
                log(f"round {r + 1} {key}: ERROR {res['error'].strip().splitlines()[-1][:200]}")
            else:
                log(f"round {r + 1} {key}: {med(res['step_s']) * 1e3:.1f} ms/step (min {min(res['step_s']) * 1e3:.1f}), "
                    f"{res['peak_rss_mb']:.0f} MB, load {res['load1_start']:.1f}, wall {res['wall_s']:.0f} s")

    rounds_done, skipped = 0, 0
    if jobs:
        do_round(0)
        rounds_done = 1
    if "update" in sections:
        log("reference update alone ...")
        extras["update"] = run_worker("update", {**plan["update"], "threads": threads}, timeout=600, log=log)
        if "error" in extras["update"]:
            log("update: ERROR " + extras["update"]["error"].strip().splitlines()[-1][:200])
    if "zero3" in sections:
        log("ZeRO-3, 2 ranks ...")
        extras["zero3"] = run_zero3(plan["zero3"], log)
    for r in range(1, rounds):
        expected = sum(walls.get(key, 0) for n, key, _, _ in jobs if (a.rounds or n) > r)
        if time.perf_counter() - start + expected > budget:
            skipped = rounds - r
            log(f"time budget of {budget:.0f} s: skipping the last {skipped} round(s) (--budget to change)")
            break
        do_round(r)
        rounds_done += 1

    missed = [k for k in runs if k.split("/")[1] in TRL_PAIRS
              and (paired_ratio(runs[k], runs.get(k.split("/")[0] + "/" + TRL_PAIRS[k.split("/")[1]], []))
                   or (9,))[0] < 1.3]
    if missed and not a.profile and not a.quick and time.perf_counter() - start < budget:
        log(f"ours is under 1.3x TRL's speed for {', '.join(missed)}: profiling both to show where the time goes")
    if a.profile or (missed and not a.quick and time.perf_counter() - start < budget):
        log("profiling ours and TRL (tiny, soft/synced reference) ...")
        p = {"model": "tiny", "warmup": 4, "steps": 12, "threads": threads, "profile": True}
        extras["profile"] = {"ours (tr-dpo-soft)": run_worker("ours", {**p, "config": "tr-dpo-soft"}, timeout=600, log=log),
                             "TRL (synced)": run_worker("trl", {**p, "trl": TRL_CONFIGS["trl-synced"]}, timeout=600, log=log)}
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - start
    settings = {"plan": "quick" if a.quick else "full", "rounds": rounds_done, "rounds_skipped": skipped,
                "batch_pairs": BATCH, "threads": threads, "threads_note": threads_note, "models": MODELS, "data_overrides": DATA,
                "configs": CONFIGS, "trl_configs": TRL_CONFIGS, "plan_detail": plan, "big_update_model": BIG}
    report = {"machine": info, "settings": settings, "runs": runs, **extras}
    md_text = render(report)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    (out_dir / "bench.md").write_text(md_text)
    print(md_text)
    log(f"wrote {out_dir / 'bench.md'} and bench.json")


def run_experiments(a, threads, threads_note, out_dir, start, log, info) -> None:
    rounds = a.rounds or 2
    runs: dict = {}
    for r in range(rounds):
        for model, warmup, steps in (("tiny", 4, 24), ("small", 2, 5)):
            names = list(EXPERIMENTS)
            names = names[r % len(names):] + names[: r % len(names)]
            for name in names:
                spec = {"model": model, "config": "tr-dpo-soft", "warmup": warmup, "steps": steps, "threads": threads,
                        "patches": EXPERIMENTS[name]}
                res = run_worker("ours", spec, timeout=600, log=log)
                runs.setdefault(f"{model}/{name}", []).append(res)
                log(f"round {r + 1} {model}/{name}: " + (f"ERROR {res['error'][-200:]}" if "error" in res else
                                                         f"{med(res['step_s']) * 1e3:.1f} ms/step"))
    head = run_worker("head", {"threads": threads, "reps": 8}, timeout=600, log=log)
    L = [f"# Proposed trustregion/ changes, monkeypatched ({_dt.datetime.now():%Y-%m-%d %H:%M})", "",
         f"TR-DPO soft, real loop, {threads} thread(s) ({threads_note}), {rounds} round(s); ratio = per-round "
         "s/step ÷ baseline (median, range).", "",
         "| model | variant | s/step (median) | range | ÷ baseline (wall) | CPU s/step | ÷ baseline (CPU) |", "|---|---|---|---|---|---|---|"]
    for key, res in runs.items():
        model, name = key.split("/")
        sm = summarize(res)
        pr = paired_ratio(res, runs[f"{model}/baseline"]) if name != "baseline" else None
        pc = paired_ratio(res, runs[f"{model}/baseline"], "cpu_step_s") if name != "baseline" else None
        L.append(f"| {model} | {name} | {fmt(sm and sm['median_s'], '.4f')} | "
                 f"{fmt(sm and sm['min_s'], '.4f')}–{fmt(sm and sm['max_s'], '.4f')} | {fmt_ratio(pr)} | "
                 f"{fmt(sm and sm['cpu_s'], '.4f')} | {fmt_ratio(pc)} |")
    if "error" not in head:
        L += ["", "sequence_logps forward + backward alone (tiny body, 16 sequences of 97 tokens, 65 of them response):", "",
              "| vocab | variant | ms (median) | max abs difference of log-probs |", "|---|---|---|---|"]
        for vocab, d in head["head"].items():
            for name, ms in d["ms"].items():
                L.append(f"| {vocab} | {name} | {med(ms):.1f} | {d['max_abs_diff']:.2e} |")
        L += ["", "AdamW step alone (all parameters with gradients):", "", "| model | parameters | optimizer | ms/step (median) | range |",
              "|---|---|---|---|---|"]
        for name, d in head["optim"].items():
            for k, ms in d["ms"].items():
                L.append(f"| {name} | {d['params']:,} | {k} | {med(ms):.2f} | {min(ms):.2f}–{max(ms):.2f} |")
    text = "\n".join(L) + "\n"
    (out_dir / "experiments.md").write_text(text)
    (out_dir / "experiments.json").write_text(json.dumps({"machine": info, "runs": runs, "head": head}, indent=1, default=str))
    print(text)
    log(f"wrote {out_dir / 'experiments.md'}")


# --- the report -------------------------------------------------------------------------------------
def fmt(x, spec=".1f", none="–"):
    if x is None or (isinstance(x, float) and x != x):
        return none
    return format(x, spec)


def summarize(results: list[dict]) -> dict | None:
    ok = [r for r in results if "error" not in r and r.get("step_s")]
    if not ok:
        return None
    per_run = [med(r["step_s"]) for r in ok]
    cpu_runs = [med(r["cpu_step_s"]) for r in ok if r.get("cpu_step_s")]
    means = [statistics.fmean(r["step_s"]) for r in ok]
    upd = [u for r in ok for u in r.get("update_ms", [])]
    return {"median_s": med(per_run), "min_s": min(per_run), "max_s": max(per_run), "mean_s": med(means),
            "cpu_s": med(cpu_runs), "cpu_min_s": min(cpu_runs, default=None), "cpu_max_s": max(cpu_runs, default=None),
            "best_s": min(x for r in ok for x in r["step_s"]),
            "tokens": med([r["tokens_per_step"] for r in ok]), "n": len(ok), "runs": per_run,
            "update_ms": med(upd) if upd else None, "updates": len(upd) / len(ok),
            "rss": med([r["peak_rss_mb"] for r in ok]), "params": ok[0].get("params"), "vocab": ok[0].get("vocab"),
            "threads": ok[0].get("threads"), "errors": len(results) - len(ok), "optimizer": ok[0].get("optimizer"),
            "load": med([r["load1_start"] for r in ok if "load1_start" in r])}


def paired_ratio(a: list[dict], b: list[dict], key: str = "step_s") -> tuple[float, float, float] | None:
    """Per-round ratio of run medians a/b (runs of the same round are next to each other in time)."""
    ratios = [med(x[key]) / med(y[key]) for x, y in zip(a, b)
              if "error" not in x and "error" not in y and x.get(key) and y.get(key)]
    if not ratios:
        return None
    return med(ratios), min(ratios), max(ratios)


def render(rep: dict) -> str:
    m, s, runs = rep["machine"], rep["settings"], rep["runs"]
    v = m["versions"]
    any_run = next((r for rs in runs.values() for r in rs if "lr" in r), {})
    th = s["threads"]
    L = [f"# trustregion bench ({_dt.datetime.now():%Y-%m-%d %H:%M})", "",
         f"- Machine: {m['cpu_count']} CPUs, {m['cpu_model']}{', GPU ' + m['gpu'] if m['gpu'] else ''}; "
         f"load average at start {fmt_load(m['loadavg_start'])}, at end {fmt_load(m.get('loadavg_end'))} "
         "(other jobs share these cores: compare rows by their per-round spread)",
         f"- Versions: torch {v['torch']}, transformers {v['transformers']}, deepspeed {v['deepspeed']}, trl {v['trl']}, "
         f"datasets {v['datasets']}, accelerate {v['accelerate']}, Python {m['python']}",
         f"- Settings: plan {s['plan']}, {s['rounds']} round(s) of interleaved runs"
         f"{' (' + str(s['rounds_skipped']) + ' skipped: time budget)' if s['rounds_skipped'] else ''}, "
         f"batch {s['batch_pairs']} pairs, fp32, {th} torch thread(s) per process ({s['threads_note']}), toy pairs "
         f"with 32-token prompts and 64-token responses (+EOS: 97 tokens per sequence, max_length 128), AdamW "
         f"lr {any_run.get('lr')}, clip {any_run.get('max_grad_norm')}, {any_run.get('schedule')} LR; "
         f"total wall time {m['wall_s']:.0f} s",
         "- s/step: median over rounds of each run's median step (range = min-max over rounds); best step = the "
         "fastest single step of all rounds (other jobs only ever add time, so it is the steadiest estimate of an idle "
         "machine); mean = mean step incl. periodic logging and updates; tok/s = response tokens (chosen+rejected) per step / median s/step; "
         "RSS = peak resident memory of that run's process (ru_maxrss, includes imports); CPU s/step = the process's "
         "CPU time per step (time.process_time, all threads; other jobs still inflate it through shared caches and "
         "sibling hyperthreads, and with several threads it counts spinning)", ""]
    models = sorted({k.split("/")[0] for k in runs}, key=lambda x: list(MODELS).index(x))
    for model in models:
        rows = {k.split("/")[1]: summarize(vs) for k, vs in runs.items() if k.startswith(model + "/")}
        ours = [c for c in CONFIGS if c in rows]
        if not ours:
            continue
        first = next((r for r in rows.values() if r), None)
        L += [f"## Training throughput: {model} model ({MODELS[model]['hidden_size']} hidden, {MODELS[model]['num_layers']} layers, "
              f"{(first or {}).get('params') or 0:,} parameters, vocab {(first or {}).get('vocab')})", "",
              "| run | s/step (median) | range over rounds | best step | mean s/step | CPU s/step | resp. tok/s | ÷ DPO frozen (no cache): median (per-round range); best; CPU | ref update ms | updates per run | peak RSS MB | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        base = runs.get(f"{model}/dpo-frozen")
        for c in ours:
            r = rows[c]
            if r is None:
                L.append(f"| {c} | failed | | | | | | | | | | |")
                continue
            ratio = paired_ratio(runs[f"{model}/{c}"], base) if base and c != "dpo-frozen" else None
            cratio = paired_ratio(runs[f"{model}/{c}"], base, "cpu_step_s") if base and c != "dpo-frozen" else None
            bratio = r["best_s"] / rows["dpo-frozen"]["best_s"] if rows.get("dpo-frozen") and c != "dpo-frozen" else None
            L.append(f"| {c} | {r['median_s']:.4f} | {r['min_s']:.4f}–{r['max_s']:.4f} | {r['best_s']:.4f} | {r['mean_s']:.4f} | "
                     f"{fmt(r['cpu_s'], '.4f')} | {r['tokens'] / r['median_s']:,.0f} | "
                     f"{fmt_ratio(ratio)}; {fmt(bratio, '.3f')}; {fmt(cratio and cratio[0], '.3f')} | {fmt(r['update_ms'], '.2f')} | "
                     f"{r['updates']:.0f} | {r['rss']:.0f} | {fmt(r['load'], '.1f')} |")
        soft, frozen, cached = rows.get("tr-dpo-soft"), rows.get("dpo-frozen"), rows.get("dpo-frozen-cached")
        if soft and frozen:
            pr = paired_ratio(runs[f"{model}/tr-dpo-soft"], runs[f"{model}/dpo-frozen"])
            direct = (soft["update_ms"] or 0) / 1e3 / soft["median_s"]
            spread = (frozen["max_s"] - frozen["min_s"]) / frozen["median_s"]
            verdict = "met" if direct < 0.03 else "NOT met"
            L += ["", f"Goal TR soft within 3 % of frozen DPO (no cache): **{verdict}** by the direct measure: the update "
                  f"inside the soft runs takes {soft['update_ms']:.2f} ms = {100 * direct:.2f} % of the soft step. "
                  f"End to end, soft/frozen: per-round median steps {fmt_ratio(pr)} (median, range), best steps "
                  f"{soft['best_s'] / frozen['best_s']:.3f}; for scale, frozen DPO's own median step moved by "
                  f"{100 * spread:.0f} % between rounds."]
            if cached:
                pc = paired_ratio(runs[f"{model}/tr-dpo-soft"], runs[f"{model}/dpo-frozen-cached"])
                L.append(f"Against frozen DPO with the cached-reference shortcut: soft/cached = {fmt_ratio(pc)}, best steps "
                         f"{soft['best_s'] / cached['best_s']:.3f} "
                         "(the shortcut skips the reference forward, which no moving reference can).")
        hard = rows.get("tr-dpo-hard")
        if hard and hard["update_ms"]:
            L.append(f"Hard update (τ=64): {hard['update_ms']:.2f} ms per update (a copy), amortized "
                     f"{hard['update_ms'] / 64:.3f} ms/step = {100 * hard['update_ms'] / 64 / 1e3 / hard['median_s']:.3f} % of a step.")
        elif hard:
            L.append("Hard update (τ=64): no update inside the timed window (under 64 steps): its rows time the steps "
                     "between updates; one update costs about a copy (see the update-alone table).")
        L.append("")
    trl_rows = [(k.split("/")[0], k.split("/")[1]) for k in runs if k.split("/")[1] in TRL_CONFIGS]
    if trl_rows:
        L += ["## Side by side with TRL's DPOTrainer", "",
              "Same GPT-NeoX (built from the same config and seed), same tokenizer and toy pairs (`datasets.Dataset`), "
              f"batch 8, max_length 128, fp32, {th} thread(s), lr/clip/schedule as ours; TRL: gradient checkpointing off, "
              "bf16 off, its default optimizer. Speed-up = TRL s/step ÷ ours, per round (runs next to each other), median and range.", "",
              "| model | ours | TRL | ours / TRL s/step (median) | speed-up (×), per round | ours / TRL best step | speed-up, best (×) | ours / TRL CPU s/step | speed-up, CPU (×) | ≥ 1.3× (median; best; CPU) | ours / TRL update ms | ours / TRL peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for model, c in trl_rows:
            t, o = summarize(runs[f"{model}/{c}"]), summarize(runs.get(f"{model}/{TRL_PAIRS[c]}", []))
            if t is None or o is None:
                L.append(f"| {model} | {TRL_PAIRS[c]} | {c} | failed | | | | | | | | |")
                continue
            pr = paired_ratio(runs[f"{model}/{c}"], runs[f"{model}/{TRL_PAIRS[c]}"])
            pc = paired_ratio(runs[f"{model}/{c}"], runs[f"{model}/{TRL_PAIRS[c]}"], "cpu_step_s")
            best = t["best_s"] / o["best_s"]
            verdict = "; ".join("–" if x is None else ("yes" if x >= 1.3 else "no") for x in (pr and pr[0], best, pc and pc[0]))
            L.append(f"| {model} | {TRL_PAIRS[c]} | {c} | {o['median_s']:.4f} / {t['median_s']:.4f} | {fmt_ratio(pr, '.2f')} | "
                     f"{o['best_s']:.4f} / {t['best_s']:.4f} | {best:.2f} | "
                     f"{fmt(o['cpu_s'], '.4f')} / {fmt(t['cpu_s'], '.4f')} | {fmt(pc and pc[0], '.2f')} | {verdict} | "
                     f"{fmt(o['update_ms'], '.2f')} / {fmt(t['update_ms'], '.2f')} | {o['rss']:.0f} / {t['rss']:.0f} |")
        opt = next((summarize(runs[f"{mm}/{cc}"]) or {} for mm, cc in trl_rows), {}).get("optimizer")
        L += ["", f"TRL's optimizer: {opt}; ours: torch AdamW (foreach=True). Goal: ours ≥ 1.3× faster.", ""]
    up = rep.get("update")
    if up and "error" not in up:
        L += [f"## Reference update alone (one update, {th} thread(s))", "",
              "Bytes moved per element (fp32): copy reads the policy and writes the reference (8); a lerp reads both "
              "and writes one (12); mul_ then add_ make two passes (8 + 12 = 20). GB/s = that traffic ÷ time.", "",
              "| model | parameters | method | ms/update (median) | range | GB/s | × copy |", "|---|---|---|---|---|---|---|"]
        for name, r in up.items():
            if not isinstance(r, dict) or "methods" not in r:
                continue
            copy_ms = med(next(iter(r["methods"].values()))["ms"])
            for meth, d in r["methods"].items():
                ms = med(d["ms"])
                gbs = r["elements"] * d["bytes_per_elem"] / (ms / 1e3) / 1e9
                L.append(f"| {name} | {r['params']:,} | {meth} | {ms:.3f} | {min(d['ms']):.3f}–{max(d['ms']):.3f} | "
                         f"{gbs:.1f} | {ms / copy_ms:.2f} |")
        L.append("")
    elif up:
        L += ["## Reference update alone", "", f"failed: {up['error'].strip().splitlines()[-1]}", ""]
    z = rep.get("zero3")
    if z:
        L += render_zero3(z, runs, th)
    if rep.get("profile"):
        L += render_profile(rep["profile"])
    return "\n".join(L) + "\n"


def render_zero3(z: dict, runs: dict, threads: int) -> list[str]:
    L = ["## ZeRO-3, 2 ranks (torchrun, gloo on CPU, 1 thread per rank)", ""]
    u = z.get("update", {})
    if "error" in u:
        L += [f"update timing failed: {u['error'].strip().splitlines()[-1]}", ""]
    elif u:
        L += ["Bytes each update must move, N = parameter elements (fp32, 4 bytes), W = 2 ranks: sharded = 0 (each rank "
              "lerps its own shard, persistent parameters none with threshold 0); gathered = all-gather policy + "
              "all-gather reference + broadcast of the edited reference from rank 0 = 3·(W−1)·N·4 bytes received in "
              "total over the ranks. Loopback bytes: /proc/net/dev `lo` counter during the updates, minus a "
              "barrier-only baseline, per update (TCP framing included; other jobs' loopback traffic may add to it).", "",
              "| model | N parameters | update | ms/update (median) | range | bytes by formula | loopback bytes measured |",
              "|---|---|---|---|---|---|---|"]
        for model, r in u.get("models", {}).items():
            for mode in ("sharded", "gathered"):
                d = r[mode]
                formula = 0 if mode == "sharded" else 3 * (r["world_size"] - 1) * r["elements"] * 4
                L.append(f"| {model} | {r['elements']:,} | {mode} | {med(d['ms']):.2f} | {min(d['ms']):.2f}–{max(d['ms']):.2f} | "
                         f"{formula / 1e6:.2f} MB | {d['lo_bytes'] / 1e6:.2f} MB |")
            L.append(f"| {model} | | gathered ÷ sharded | {med(r['gathered']['ms']) / max(med(r['sharded']['ms']), 1e-9):.0f}× | | | |")
        L.append("")
    t = z.get("train")
    if t and "error" in t:
        L += [f"ZeRO-3 training timing failed: {t['error'].strip().splitlines()[-1]}", ""]
    elif t:
        one = summarize(runs.get("tiny/tr-dpo-soft", []))
        zs = med(t["step_s"])
        L += [f"Per step, tiny model, TR-DPO soft, 8 pairs per step: ZeRO-3 at 2 ranks (4 pairs each, 1 thread each) "
              f"{zs:.4f} s/step (range of run {min(t['step_s']):.4f}–{max(t['step_s']):.4f}, update {fmt(med(t['update_ms']), '.2f')} ms, "
              f"peak RSS rank 0 {t['peak_rss_mb']:.0f} MB) vs 1 process (8 pairs, {threads} thread(s), median of the rounds) "
              f"{fmt(one['median_s'] if one else None, '.4f')} s/step: ratio {fmt(zs / one['median_s'] if one else None, '.2f')}×.", ""]
    return L


def render_profile(prof: dict) -> list[str]:
    ok = {k: v["profile"] for k, v in prof.items() if "profile" in v}
    if not ok:
        return ["## Profile", "", "failed", ""]
    names = list(ok)
    L = ["## Profile: self CPU time per step by operator (torch.profiler, tiny model)", "",
         "| operator | " + " | ".join(f"{n} ms/step" for n in names) + " |", "|---|" + "---|" * len(names)]
    ops = []
    for n in names:
        for t in ok[n]["top"]:
            if t["op"] not in ops:
                ops.append(t["op"])
    table = {n: {t["op"]: t["self_ms_per_step"] for t in ok[n]["top"]} for n in names}
    for op in ops:
        L.append(f"| {op[:60]} | " + " | ".join(fmt(table[n].get(op), ".2f", "(not in top 15)") for n in names) + " |")
    L.append("| **all operators** | " + " | ".join(f"**{ok[n]['total_ms_per_step']:.1f}**" for n in names) + " |")
    L.append("| wall clock, median step while profiled | " + " | ".join(f"{med(prof[n]['step_s']) * 1e3:.1f}" for n in names) + " |")
    math_ops = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product", "aten::gelu", "aten::native_layer_norm")
    shares = []
    for n in names:
        model_ms = sum(t["self_ms_per_step"] for t in ok[n]["top"] if t["op"].startswith(math_ops))
        shares.append(f"{n}: {model_ms:.1f} of {ok[n]['total_ms_per_step']:.1f} ms "
                      f"({100 * model_ms / max(ok[n]['total_ms_per_step'], 1e-9):.0f} %)")
    L += ["", "Model math (matmuls, attention, GELU, LayerNorm; forward and backward, from the top 15) per step: "
          + "; ".join(shares) + ". The rest is copies, element-wise ops, the loss, metrics and the optimizer."]
    return L + [""]


def fmt_ratio(r, spec=".3f"):
    if not r:
        return "–"
    return f"{format(r[0], spec)} ({format(r[1], spec)}–{format(r[2], spec)})"


def fmt_load(load):
    return "–" if not load else ", ".join(f"{x:.1f}" for x in load)


if __name__ == "__main__":
    main()
