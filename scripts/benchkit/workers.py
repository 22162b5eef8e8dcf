"""The bench's workers, each run in its own process: our loop (timed by a recipe hook), TRL's DPOTrainer,
the reference update alone, the optimizer step alone."""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

from benchkit.plans import BATCH, BIG, CONFIGS, MODELS, TINY_VOCAB, compose, loop_overrides, quiet
from trustregion.training.hooks import BaseHook


class StopBench(Exception):
    """Raised from the step hook after the last timed step: ends train() without its teardown."""


class LoopTimer(BaseHook):
    """A recipe hook: a wall-clock stamp per optimizer step (after the reference update), the update's own
    time, response tokens per step (the loop's own count, as in ``tokens_per_s``), and the ``perf/mfu`` and
    ``perf/tflops`` the ThroughputHook logs (runs with ``trainer.log_every=1`` get one per step)."""

    def __init__(self, total_steps: int, profile_after: int | None = None) -> None:
        self.total = total_steps
        self.profile_after = profile_after
        self.profiler = None
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []  # process CPU time (all threads): robust to other jobs on the cores
        self.update_ms: list[float] = []
        self.tokens: list = []  # 0-d tensors (no host sync in the loop)
        self.first_threads = None
        self.params = self.vocab = None
        self._update = None
        self._tokens_before = None
        self._stop_on_log = False
        self.memory = StepMemory()
        self.perf: list[tuple[int, float, float]] = []  # (step, perf/mfu, perf/tflops) of each logged row

    def on_train_start(self, ctx) -> None:
        self.params = ctx.engine.policy_numel()
        self.vocab = ctx.engine.unwrap("policy").config.vocab_size
        self._update = ctx.reference_update
        self._tokens_before = ctx.state.tokens.clone()
        # logging every step: stop after the last step's row, so the perf rows cover exactly the timed steps
        self._stop_on_log = ctx.cfg.trainer.log_every == 1

    def on_step_end(self, ctx) -> None:
        import torch

        if torch.cuda.is_available():  # on a GPU, time the work, not its launch
            torch.cuda.synchronize()
        now = time.perf_counter()
        update = self._update
        if update is not None and update.updated:
            self.update_ms.append(update.update_ms)
        # The loop's token count since the last step; the ThroughputHook zeroes it at log steps (in on_log).
        tokens = ctx.state.tokens
        self.tokens.append(tokens - self._tokens_before)
        self._tokens_before = tokens.clone()
        self.stamps.append(now)
        self.cpu_stamps.append(time.process_time())
        self.memory.stamp()
        if self.first_threads is None:
            self.first_threads = torch.get_num_threads()
        if self.profile_after is not None and len(self.stamps) == self.profile_after:
            self.profiler = start_profiler()
        if len(self.stamps) >= self.total and not self._stop_on_log:
            raise StopBench()

    def on_log(self, ctx, metrics: dict) -> None:
        self._tokens_before = self._tokens_before * 0  # the ThroughputHook zeroed the count before this hook
        if "perf/mfu" in metrics:
            self.perf.append((ctx.state.step, float(metrics["perf/mfu"]), float(metrics["perf/tflops"])))
        if len(self.stamps) >= self.total:
            raise StopBench()

    def result(self, warmup: int) -> dict:
        deltas = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        timed = deltas[max(0, warmup - 1) :]  # deltas[i] is step i+2
        cpu = [b - a for a, b in zip(self.cpu_stamps, self.cpu_stamps[1:])][max(0, warmup - 1) :]
        toks = [int(t) for t in self.tokens]
        perf = [p for p in self.perf if p[0] > warmup]  # a row covers the steps since the previous one
        mfu = (
            {"mfu": statistics.median(p[1] for p in perf), "tflops": statistics.median(p[2] for p in perf)}
            if perf
            else {}
        )
        return {
            **mfu,
            "step_s": timed,
            "cpu_step_s": cpu,
            "tokens_per_step": statistics.median(toks) if toks else 0,
            "update_ms": self.update_ms,
            "threads": self.first_threads,
            "steps_seen": len(self.stamps),
            **self.memory.result(warmup),
        }


def run_loop(cfg, run_dir: Path, timer: LoopTimer) -> None:
    """Our real loop (``trustregion.training.recipe.Recipe``) with the timer as an extra hook, until it stops the run."""
    from trustregion.training.recipe import Recipe
    from trustregion.training.stages import PreferenceStage

    recipe = Recipe(cfg, run_dir, PreferenceStage(), extra_hooks=[timer])
    recipe.setup()
    try:
        recipe.train()
    except StopBench:
        pass
    finally:
        recipe.logger.finish()


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
    return {
        "steps": steps,
        "total_ms_per_step": total / 1e3 / steps,
        "top": [
            {"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps, "calls_per_step": e.count / steps}
            for e in rows[:15]
        ],
    }


class StepMemory:
    """Resident memory per optimizer step, from /proc/self/status: the level after each step (between steps:
    models, gradients, optimizer state) and the high-water mark during it (reset at every stamp)."""

    def __init__(self) -> None:
        self.after: list[float] = []  # MB, VmRSS right after each step
        self.high: list[float] = []  # MB, VmHWM since the previous stamp

    @staticmethod
    def _read() -> dict[str, float]:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}

    def stamp(self) -> None:
        now = self._read()
        self.high.append(now["VmHWM"])
        self.after.append(now["VmRSS"])
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here

    @property
    def peak_mb(self) -> float:
        return max(self.high, default=0.0)

    def result(self, warmup: int) -> dict:
        """Timed steps only: the between-steps level and the largest rise above it within a step."""
        timed = range(max(1, warmup), len(self.after))
        if not timed:
            return {}
        return {
            "between_steps_mb": statistics.median(self.after[i - 1] for i in timed),
            "step_peak_above_mb": max(self.high[i] - self.after[i - 1] for i in timed),
        }


def peak_memory(memory: StepMemory | None = None) -> dict:
    """Peak RSS of the whole run (the per-step marks too, since they reset the kernel's high-water mark)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"peak_rss_mb": max(peak, memory.peak_mb if memory is not None else 0.0)}
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except Exception:
        pass
    return out


def worker_ours(spec: dict) -> dict:
    quiet()
    t0 = time.perf_counter()
    import torch

    total = spec["warmup"] + spec["steps"] + 1
    cfg = compose(
        *loop_overrides(spec["model"], total, spec["threads"]), *CONFIGS[spec["config"]], *spec.get("overrides", [])
    )
    timer = LoopTimer(total, spec["warmup"] if spec.get("profile") else None)
    with tempfile.TemporaryDirectory(prefix="bench-") as run_dir:
        run_loop(cfg, Path(run_dir), timer)
    out = timer.result(spec["warmup"])
    if timer.profiler is not None:
        out["profile"] = profile_summary(timer.profiler, total - spec["warmup"])
    out.update(
        peak_memory(timer.memory),
        params=timer.params,
        vocab=timer.vocab,
        setup_s=timer.stamps[0] - t0 if timer.stamps else None,
        torch_threads=torch.get_num_threads(),
        lr=float(cfg.trainer.lr),
        max_grad_norm=cfg.trainer.max_grad_norm,
        schedule=str(cfg.trainer.schedule.value),
    )
    return out


def worker_trl(spec: dict) -> dict:
    """TRL's DPOTrainer on the same GPT-NeoX, tokenizer and toy pairs as our tiny runs."""
    quiet()
    import torch

    from trustregion.data import load_preferences
    from trustregion.models.loading import load_policy, make_reference

    torch.set_num_threads(spec["threads"])
    total = spec["warmup"] + spec["steps"] + 1
    cfg = compose(*loop_overrides(spec["model"], total, spec["threads"]), *CONFIGS["dpo-frozen"])
    torch.manual_seed(cfg.trainer.seed)
    data = load_preferences(cfg.dataset)
    policy, tokenizer = load_policy(cfg.model, data.texts(), cfg.trainer.seed)  # the same GPT-NeoX and tokenizer
    return run_trl(spec, cfg, policy, make_reference(policy), tokenizer, data.train, BATCH)


def run_trl(spec: dict, cfg, policy, reference, tokenizer, train_dataset, batch: int) -> dict:
    """Time TRL's DPOTrainer with our loop's optimisation settings (``cfg.trainer``), a stamp per optimizer step."""
    t0 = time.perf_counter()
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.callbacks import SyncRefModelCallback

    total = spec["warmup"] + spec["steps"] + 1
    t = cfg.trainer
    stamps: list[float] = []
    cpu_stamps: list[float] = []
    sync_ms: list[float] = []
    tokens: list = []
    memory = StepMemory()

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
            memory.stamp()
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
            output_dir=out_dir,
            per_device_train_batch_size=batch,
            max_steps=total + 10,
            learning_rate=t.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=t.weight_decay,
            adam_beta1=t.adam_betas[0],
            adam_beta2=t.adam_betas[1],
            max_grad_norm=t.max_grad_norm,
            beta=cfg.method.beta,
            loss_type=["sigmoid"],
            max_length=cfg.dataset.max_length,
            gradient_checkpointing=False,
            bf16=bool(spec.get("bf16", False)),  # gpu_check.py: TRL in bf16 beside our bf16-mixed
            fp16=False,
            use_cpu=not torch.cuda.is_available(),
            logging_steps=t.log_every,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=t.seed,
            **spec["trl"],
        )
        trainer = CountingDPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            callbacks=[Stamp()],
        )
        threads = torch.get_num_threads()
        trainer.train()
        optimizer = type(
            trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        ).__name__
        defaults = getattr(trainer.optimizer, "defaults", {})
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]
    toks = [int(x) for x in tokens]
    cpu = [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:])]
    return {
        **({"profile": profiler[1]} if len(profiler) > 1 else {}),
        "step_s": deltas[max(0, spec["warmup"] - 1) :],
        "cpu_step_s": cpu[max(0, spec["warmup"] - 1) :],
        "tokens_per_step": statistics.median(toks) if toks else 0,
        "update_ms": sync_ms,
        "threads": threads,
        "steps_seen": len(stamps),
        **peak_memory(memory),
        **memory.result(spec["warmup"]),
        "params": sum(p.numel() for p in policy.parameters()),
        "vocab": policy.config.vocab_size,
        "setup_s": stamps[0] - t0 if stamps else None,
        "optimizer": f"{optimizer} (fused={defaults.get('fused')}, foreach={defaults.get('foreach')})",
        "args": {
            k: str(getattr(args, k))
            for k in (
                "optim",
                "bf16",
                "gradient_checkpointing",
                "max_length",
                "learning_rate",
                "lr_scheduler_type",
                "warmup_steps",
                "max_grad_norm",
                "weight_decay",
            )
        },
        "lr_seen": trainer.lr_scheduler.get_last_lr()[0] if trainer.lr_scheduler else None,
    }


def worker_update(spec: dict) -> dict:
    """Time one reference update alone: fused (DenseApplier), per-parameter loops, and a plain copy."""
    quiet()
    import torch
    from omegaconf import OmegaConf

    from trustregion.models.loading import make_reference, tiny_model
    from trustregion.reference.dense import DenseApplier, mixable_tensors

    torch.set_num_threads(spec["threads"])
    results = {}
    for name, shape, reps in (
        ("tiny", {**MODELS["tiny"], "vocab": TINY_VOCAB}, spec["tiny_reps"]),
        ("pythia-160m-shape", BIG, spec["big_reps"]),
    ):
        mcfg = OmegaConf.create(
            {
                "dtype": "float32",
                "attn_implementation": None,
                "max_position_embeddings": 256,
                **{k: v for k, v in shape.items() if k != "vocab"},
            }
        )
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
        applier = DenseApplier(pol, ref)

        def naive(reference=reference, policy=policy, alpha=alpha):  # TRL's / the authors' loop: parameters only
            for r, p in zip(reference.parameters(), policy.parameters()):
                r.data.mul_(1.0 - alpha).add_(p.data, alpha=alpha)

        def loop_lerp(ref=ref, pol=pol, alpha=alpha):
            for r, p in zip(ref, pol):
                r.lerp_(p, alpha)

        methods = {
            "copy (torch._foreach_copy_)": (lambda ref=ref, pol=pol: torch._foreach_copy_(ref, pol), 8),
            "fused soft (DenseApplier, _foreach_lerp_)": (lambda a=applier, x=alpha: a.apply(x), 12),
            "fused hard (DenseApplier, alpha=1)": (lambda a=applier: a.apply(1.0), 8),
            "naive loop (mul_(1-a).add_(p, alpha=a))": (naive, 20),
            "loop of lerp_ per tensor": (loop_lerp, 12),
        }
        times = {m: [] for m in methods}
        with torch.no_grad():
            for rep in range(reps + 2):
                order = list(methods)[rep % len(methods) :] + list(methods)[: rep % len(methods)]
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
        results[name] = {
            "params": n,
            "tensors": len(pol),
            "elements": elems,
            "reps": reps,
            "methods": {m: {"ms": [x * 1e3 for x in times[m]], "bytes_per_elem": methods[m][1]} for m in methods},
        }
        del policy, reference, pol, ref, applier
    results.update(peak_memory())
    return results


def worker_head(spec: dict) -> dict:
    """AdamW's step alone, as engine.py builds it (foreach=True) and fused (trainer.fused_optimizer=true)."""
    quiet()
    import torch
    from omegaconf import OmegaConf

    from trustregion.models.loading import tiny_model

    torch.set_num_threads(spec["threads"])
    optim = {}
    for name in MODELS:
        mcfg = OmegaConf.create(
            {"dtype": "float32", "attn_implementation": None, "max_position_embeddings": 256, **MODELS[name]}
        )
        params = list(tiny_model(mcfg, TINY_VOCAB, seed=0).parameters())
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opts = {
            "foreach=True (default)": torch.optim.AdamW(params, lr=1e-4, foreach=True),
            "fused=True": torch.optim.AdamW(params, lr=1e-4, fused=True),
        }
        times = {k: [] for k in opts}
        for rep in range(spec["reps"] * 4 + 3):
            for k, opt in opts.items():
                tic = time.perf_counter()
                opt.step()
                if rep >= 3:
                    times[k].append((time.perf_counter() - tic) * 1e3)
        optim[name] = {"params": sum(p.numel() for p in params), "ms": times}
    return {"optim": optim}


WORKERS = {"ours": worker_ours, "trl": worker_trl, "update": worker_update, "head": worker_head}
