"""Step hooks: what is optional around the loop (timers, generation evaluation, export, a user's extensions).

The loop itself (``trustregion.training.recipe``) calls forward, loss, step, reference update, log, evaluation
and checkpoint; hooks are told, in order: ``on_train_start`` once, right before the first step (after the step-0
evaluation, so timers start with the steps); per optimizer step ``on_step_end`` (after the reference update), then
on log steps ``on_log`` (each hook adds its fields to the row), on evaluations ``on_eval`` (each adds its metrics),
on checkpoints ``on_save`` (after the engine's state is written, before the checkpoint is committed);
``on_train_end`` once. Each receives a ``HookContext``: what a hook may read, not the recipe.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from safetensors import SafetensorError

from trustregion.console import say
from trustregion.data import PreferenceData
from trustregion.data.batches import BatchStream
from trustregion.engines.base import Engine
from trustregion.errors import ConfigError, StopRequested, TrainingError
from trustregion.models.flops import matmul_peak
from trustregion.reference.update import ReferenceUpdate
from trustregion.training.identity import identity_of
from trustregion.training.logger import RunLogger
from trustregion.training.state import TrainState


@dataclass
class HookContext:
    """What hooks see of a run: its settings, where it writes, the engine and the loop's state."""

    cfg: DictConfig
    run_dir: Path
    engine: Engine
    state: TrainState
    stream: BatchStream
    logger: RunLogger
    tokenizer: Any
    data: PreferenceData
    reference_update: ReferenceUpdate | None  # None: the reference never moves (or there is none)
    reference_built: bool  # False where a frozen reference's log-probs are cached and no model was built
    sft_model: Any = None  # the starting model, kept for generation evaluation
    flops_per_token: tuple[float, float] = (0.0, 0.0)  # model FLOPs per (sequence token, scored token) of a step
    # Whether every rank agrees a stop signal arrived (collective: ask on every rank at the same point). Work that
    # runs long (an evaluation) asks between batches and raises errors.StopRequested; the run then checkpoints.
    stop_requested: Callable[[], bool] = lambda: False
    total_steps: int = 0  # the optimizer steps the run makes in all
    continue_with: str = "trainer.resume=latest"  # the command that continues the run (in one-line errors)


class Hook(Protocol):
    def on_train_start(self, ctx: HookContext) -> None: ...

    def on_step_end(self, ctx: HookContext) -> None: ...

    def on_log(self, ctx: HookContext, metrics: dict[str, Any]) -> None: ...

    def on_eval(self, ctx: HookContext, metrics: dict[str, Any]) -> None: ...

    def on_save(self, ctx: HookContext, directory: Path) -> None: ...

    def on_train_end(self, ctx: HookContext) -> None: ...


class BaseHook:
    """A hook that does nothing at every event: subclass it and override the events you need."""

    def on_train_start(self, ctx: HookContext) -> None:
        pass

    def on_step_end(self, ctx: HookContext) -> None:
        pass

    def on_log(self, ctx: HookContext, metrics: dict[str, Any]) -> None:
        pass

    def on_eval(self, ctx: HookContext, metrics: dict[str, Any]) -> None:
        pass

    def on_save(self, ctx: HookContext, directory: Path) -> None:
        pass

    def on_train_end(self, ctx: HookContext) -> None:
        pass


def user_hooks(paths: list[str]) -> list[Hook]:
    """The hooks that ``hooks=[<module>.<Class>, ...]`` names, each built with no argument."""
    found = []
    for path in paths:
        try:
            cls = get_class(path)
        except Exception as e:  # noqa: BLE001 - Hydra wraps import and attribute errors alike
            raise ConfigError(
                f"hooks: {path} cannot be imported; name a class as <module>.<Class> on the Python path"
            ) from e
        if not (isinstance(cls, type) and issubclass(cls, BaseHook)):
            raise ConfigError(f"hooks: {path} is not a subclass of trustregion.training.hooks.BaseHook")
        found.append(cls())
    return found


class ThroughputHook(BaseHook):
    """Since the last log (all ranks): response tokens per second; model TFLOP/s and MFU against this machine's
    matmul peak in the compute dtype (measured once, ``trustregion.models.flops``); this process's peak memory."""

    def __init__(self) -> None:
        self.clock = time.perf_counter()
        self.peak = 0.0

    def on_train_start(self, ctx: HookContext) -> None:
        dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(
            ctx.cfg.trainer.precision, torch.float32
        )
        self.peak = matmul_peak(ctx.engine.device.type, dtype)
        self.clock = time.perf_counter()

    def on_log(self, ctx: HookContext, metrics: dict[str, Any]) -> None:
        elapsed = max(time.perf_counter() - self.clock, 1e-9)
        counts = ctx.engine.reduce_sum(torch.stack([ctx.state.tokens, ctx.state.seq_tokens]).float()).tolist()
        per_seq, per_scored = ctx.flops_per_token
        flops_per_s = (per_seq * counts[1] + per_scored * counts[0]) / elapsed / ctx.engine.world_size
        metrics["tokens_per_s"] = counts[0] / elapsed
        metrics["perf/tflops"] = flops_per_s / 1e12  # per process
        metrics["perf/mfu"] = flops_per_s / self.peak
        metrics["perf/peak_memory_mb"] = peak_memory_mb(ctx.engine.device)
        ctx.state.tokens.zero_()
        ctx.state.seq_tokens.zero_()
        self.clock = time.perf_counter()


def peak_memory_mb(device: torch.device) -> float:
    """The high-water mark of this process: CUDA memory allocated on a GPU, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class StepTimeHook(BaseHook):
    """Seconds per optimizer step over the steps run since the last log."""

    def __init__(self) -> None:
        self.clock, self.since = time.perf_counter(), 0

    def on_train_start(self, ctx: HookContext) -> None:
        self.clock, self.since = time.perf_counter(), ctx.state.step

    def on_log(self, ctx: HookContext, metrics: dict[str, Any]) -> None:
        steps = max(1, ctx.state.step - self.since)
        metrics["s_per_step"] = (time.perf_counter() - self.clock) / steps
        self.clock, self.since = time.perf_counter(), ctx.state.step


class StandstillHook(BaseHook):
    """Says in one line when a run's loss never left its first logged value: a policy that does not move gives the
    same loss on every batch (ln 2 for DPO), so the run finished without having learned anything, most often at a
    learning rate far too small for its model. Exempt: a reference that becomes the policy after every step
    (α 1, τ 1), which holds the loss at its starting value by design."""

    TOLERANCE = 1e-3
    MIN_STEPS = 50

    def __init__(self, loss_key: str = "loss") -> None:
        self.loss_key, self.first, self.spread, self.since = loss_key, None, 0.0, 0

    def on_train_start(self, ctx: HookContext) -> None:
        self.first, self.spread, self.since = None, 0.0, ctx.state.step

    def on_log(self, ctx: HookContext, metrics: dict[str, Any]) -> None:
        if self.loss_key not in metrics:
            return
        value = float(metrics[self.loss_key])  # reduced for the log row already: no extra sync
        if self.first is None:
            self.first = value
        self.spread = max(self.spread, abs(value - self.first))

    def on_train_end(self, ctx: HookContext) -> None:
        steps = ctx.state.step - self.since
        rule = ctx.cfg.get("ref_update") or {}
        follows = ctx.reference_update is not None and rule.get("alpha") == 1 and rule.get("tau") == 1
        if follows or self.first is None or steps < self.MIN_STEPS or self.spread >= self.TOLERANCE:
            return
        if ctx.engine.is_main:
            say(
                f"warning: the loss stayed within {self.TOLERANCE:g} of {self.first:.4f} over {steps} steps: the policy "
                f"barely moved from its reference, so this run learned next to nothing; raise trainer.lr (now "
                f"{ctx.cfg.trainer.lr:g}; experiment=toy_overopt holds the toy task's settings)"
            )


def progress_interval(setting: float | None) -> float | None:
    """Seconds between progress lines: ``trainer.progress_every_s``; null: 15 s on a terminal, none (the final
    line only) when stderr is not a terminal (CI, a batch job's log) or in a Hydra multirun."""
    if setting is not None:
        return float(setting) if setting > 0 else None
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return 15.0 if sys.stderr.isatty() and not multirun else None


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressHook(BaseHook):
    """Progress on the console (rank 0): at log steps at most every ``trainer.progress_every_s`` seconds, a line
    with the step, loss, tokens/s and the time left; a line per evaluation; at the end where models and metrics went.
    It reads the metrics the loop already reduced for the log row: no extra sync."""

    def __init__(self, every_s: float | None, loss_key: str = "loss") -> None:
        self.every_s, self.loss_key = every_s, loss_key
        self.start = self.printed = time.perf_counter()
        self.first_step = 0

    def on_train_start(self, ctx: HookContext) -> None:
        self.start = self.printed = time.perf_counter()
        self.first_step = ctx.state.step

    def on_log(self, ctx: HookContext, metrics: dict[str, Any]) -> None:
        now, step, total = time.perf_counter(), ctx.state.step, ctx.total_steps
        due = self.every_s is not None and (now - self.printed >= self.every_s or step == self.first_step + 1)
        if not ctx.engine.is_main or not due:
            return
        self.printed = now
        per_step = (now - self.start) / max(1, step - self.first_step)
        parts = [f"step {step}/{total} ({step / max(1, total):.0%})"]
        if self.loss_key in metrics:
            parts.append(f"{self.loss_key} {float(metrics[self.loss_key]):.4f}")
        if "tokens_per_s" in metrics:
            parts.append(f"{float(metrics['tokens_per_s']):,.0f} tok/s")
        parts.append(f"{per_step:.2f} s/step, {_duration(per_step * (total - step))} left")
        say(" · ".join(parts))

    def on_eval(self, ctx: HookContext, metrics: dict[str, Any]) -> None:
        if ctx.engine.is_main and self.every_s is not None and metrics:
            shown = ("eval/loss", "eval/rewards/accuracies", "eval/gold_reward", "eval/kl_sft")
            say(f"eval at step {ctx.state.step}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics))

    def on_train_end(self, ctx: HookContext) -> None:
        if not ctx.engine.is_main:
            return
        last = ctx.state.last.get(self.loss_key)
        loss = f", {self.loss_key} {float(last):.4f}" if last is not None else ""
        models = [str(ctx.run_dir / n) for n in ("policy", "reference", "base") if (ctx.run_dir / n).is_dir()]
        where = f"models in {', '.join(models)}; " if models else "no models exported (trainer.save_models=false); "
        say(
            f"done: step {ctx.state.step}{loss} in {_duration(time.perf_counter() - self.start)}; {where}"
            f"metrics in {ctx.run_dir / 'metrics.jsonl'}"
        )


class EpochHook(BaseHook):
    """Fractional epochs of the training data consumed."""

    def on_log(self, ctx: HookContext, metrics: dict[str, Any]) -> None:
        stream = ctx.stream
        metrics["epoch"] = stream.epoch + stream.position / max(1, stream.batches_per_epoch)


def _title(cfg: DictConfig) -> str:
    """``dpo β=0.5 soft α=0.03 τ=1, seed 1 (tiny_toy)``: who a run is, for its figures."""
    who = identity_of(cfg)
    return f"{who.label}, seed {who.seed} ({who.setting})"


class GenerationEvalHook(BaseHook):
    """Samples from the policy at every evaluation and scores them with the task's gold judge (``eval/*``)."""

    def on_eval(self, ctx: HookContext, metrics: dict[str, Any]) -> None:
        from trustregion.evaluation.generation import EvalContext, evaluate_generation

        context = EvalContext(
            ctx.engine,
            ctx.cfg,
            ctx.data,
            ctx.tokenizer,
            ctx.sft_model,
            ctx.logger,
            ctx.run_dir,
            ctx.stop_requested,
            title=_title(ctx.cfg),
        )
        metrics.update(evaluate_generation(context, ctx.state.step))


class ExportHook(BaseHook):
    """``save_pretrained`` of the given models (policy, reference) with the tokenizer beside each, at the end."""

    def __init__(self, which: tuple[str, ...]) -> None:
        self.which = which

    def on_train_start(self, ctx: HookContext) -> None:
        # A frozen reference that was never built (its log-probs cached) is the starting policy: export it now.
        if "reference" in self.which and not ctx.reference_built and not ctx.state.resumed:
            self.export(ctx, "policy", ctx.run_dir / "reference")

    def on_train_end(self, ctx: HookContext) -> None:
        for which in self.which:
            if which == "reference" and not ctx.reference_built:
                if not (ctx.run_dir / which).exists():
                    say(f"note: {which}/ not written: the frozen reference is the model this run started from")
                continue
            if ctx.stop_requested():  # between two models: the resume exports again
                raise StopRequested("export")
            self.export(ctx, which, ctx.run_dir / which)

    @staticmethod
    def export(ctx: HookContext, which: str, directory: Path) -> None:
        with written_whole(ctx, directory) as tmp:
            ctx.engine.export(which, tmp)
            if ctx.engine.is_main:
                ctx.tokenizer.save_pretrained(tmp)


@contextmanager
def written_whole(ctx: HookContext, directory: Path) -> Iterator[Path]:
    """A model dir written whole or not at all: into ``.tmp-<name>`` beside it (every rank takes part, rank 0
    writes), renamed over ``directory`` once complete. A write that fails (a full disk, a read-only dir) removes the
    partial copy and stops the run with one line naming the path; the resume exports again (from the final
    checkpoint, or trains on from the last one)."""
    tmp = directory.with_name(f".tmp-{directory.name}")
    main = ctx.engine.is_main
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        ctx.engine.barrier()
        if main:
            old = directory.with_name(f".old-{directory.name}")
            if directory.exists():
                os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
    except (OSError, RuntimeError, SafetensorError) as e:  # what safetensors and torch raise for a full disk
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        free = shutil.disk_usage(directory.parent).free / 2**20
        raise TrainingError(
            f"cannot export {directory}: {reason} ({free:.1f} MiB free there); the partial copy is removed: free "
            f"space or fix the permissions, then continue with {ctx.continue_with}"
        ) from e


class AdapterExportHook(BaseHook):
    """Under LoRA: the reference as a PEFT adapter (``reference/``; every rank takes part under ZeRO-3, where its
    factors are gathered), ``base/`` when the base was built here (the tiny model) so the adapters load again, and
    with ``peft.export_merged`` whole models ``policy_merged/``, ``reference_merged/`` (the last two not under ZeRO-3)."""

    def __init__(self, which: tuple[str, ...]) -> None:
        self.which = which

    def on_train_end(self, ctx: HookContext) -> None:
        from trustregion.models.lora import adapted_layers, save_merged

        engine, cfg, run = ctx.engine, ctx.cfg, ctx.run_dir
        if ctx.stop_requested():  # after the policy's export: the resume exports again
            raise StopRequested("export")
        tokenizer = ctx.tokenizer.save_pretrained if engine.is_main else (lambda directory: None)
        if "reference" in self.which:
            with written_whole(ctx, run / "reference") as tmp:
                engine.unwrap("reference").save_pretrained(tmp, write=engine.is_main)
                tokenizer(tmp)
        if engine.partitioned:
            return
        policy = engine.unwrap("policy")
        merged = {}
        if cfg.model.path is None:
            merged["base"] = lambda tmp: save_merged(policy, tmp, [])  # W0 alone
        if cfg.peft.export_merged:
            merged["policy_merged"] = lambda tmp: save_merged(policy, tmp, [x.delta() for x in adapted_layers(policy)])
            if "reference" in self.which:
                merged["reference_merged"] = lambda tmp: engine.unwrap("reference").save_pretrained(tmp, merged=True)
        for name, write in merged.items():  # rank 0 alone writes these (not under ZeRO-3)
            with written_whole(ctx, run / name) as tmp:
                if engine.is_main:
                    write(tmp)
                    tokenizer(tmp)
