"""Step hooks: what runs around the training loop without being the loop.

The recipe calls, in order: ``on_train_start`` once, right before the first step (after the step-0
evaluation, so timers start with the steps); per optimizer step ``on_step_end``, then on log
steps ``on_log`` (each hook adds its fields to the row), on evaluation points ``on_eval`` (each hook
adds its metrics), on checkpoint points ``on_save``; ``on_train_end`` once. The reference update,
generation evaluation, checkpointing, export and the timers are hooks; so are test-only faults.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from trustregion import checkpoint
from trustregion.console import say

if TYPE_CHECKING:
    from trustregion.recipe import Recipe


class Hook(Protocol):
    def on_train_start(self, recipe: Recipe) -> None: ...

    def on_step_end(self, recipe: Recipe) -> None: ...

    def on_log(self, recipe: Recipe, metrics: dict[str, Any]) -> None: ...

    def on_eval(self, recipe: Recipe, metrics: dict[str, Any]) -> None: ...

    def on_save(self, recipe: Recipe) -> None: ...

    def on_train_end(self, recipe: Recipe) -> None: ...


class BaseHook:
    """A hook that does nothing at every event: subclass it and override the events you need."""

    def on_train_start(self, recipe: Recipe) -> None:
        pass

    def on_step_end(self, recipe: Recipe) -> None:
        pass

    def on_log(self, recipe: Recipe, metrics: dict[str, Any]) -> None:
        pass

    def on_eval(self, recipe: Recipe, metrics: dict[str, Any]) -> None:
        pass

    def on_save(self, recipe: Recipe) -> None:
        pass

    def on_train_end(self, recipe: Recipe) -> None:
        pass


def fault(point: str, step: int) -> None:
    """Testing hook: TRUSTREGION_FAULT=step:N (or save:N) SIGKILLs this process there, as a crash would;
    TRUSTREGION_FAULT=term:N sends it SIGTERM after step N, as a cluster's preemption would;
    TRUSTREGION_FAULT=slow:S sleeps S seconds after every step, so a test can time Slurm's signals against steps."""
    wanted = os.environ.get("TRUSTREGION_FAULT")
    if point == "step" and wanted and wanted.startswith("slow:"):
        time.sleep(float(wanted.split(":", 1)[1]))
    if wanted == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "step" and wanted == f"term:{step}":
        os.kill(os.getpid(), signal.SIGTERM)


class ReferenceUpdateHook(BaseHook):
    """Applies the (alpha, tau) rule after each optimizer step; logs updates, distance and update time."""

    def __init__(self) -> None:
        self.update_ms = 0.0
        self.updated = False

    def on_step_end(self, recipe: Recipe) -> None:
        tic = time.perf_counter()
        self.updated = recipe.updater.maybe_update(recipe.state.step)
        self.update_ms = (time.perf_counter() - tic) * 1e3

    def on_log(self, recipe: Recipe, metrics: dict[str, Any]) -> None:
        updater, engine = recipe.updater, recipe.engine
        diff_sq, norm_sq = updater.distance()
        stacked = engine.reduce_sum(torch.stack([diff_sq, norm_sq]).to(engine.device)).cpu()
        metrics["ref_updates"] = updater.num_updates
        metrics["ref/distance"] = float((stacked[0] / stacked[1].clamp(min=1e-30)).sqrt())
        metrics["ref/update_ms"] = self.update_ms if self.updated else 0.0
        metrics.update(updater.metrics())


class FaultHook(BaseHook):
    """Kills the process after the optimizer step named by TRUSTREGION_FAULT=step:N (tests of resume)."""

    def on_step_end(self, recipe: Recipe) -> None:
        fault("step", recipe.state.step)


class ThroughputHook(BaseHook):
    """Response tokens per second since the last log (all ranks)."""

    def __init__(self) -> None:
        self.clock = time.perf_counter()

    def on_train_start(self, recipe: Recipe) -> None:
        self.clock = time.perf_counter()

    def on_log(self, recipe: Recipe, metrics: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - self.clock
        metrics["tokens_per_s"] = float(recipe.engine.reduce_sum(recipe.state.tokens)) / max(elapsed, 1e-9)
        recipe.state.tokens.zero_()
        self.clock = time.perf_counter()


class StepTimeHook(BaseHook):
    """Seconds per optimizer step over the steps run since the last log."""

    def __init__(self) -> None:
        self.clock, self.since = time.perf_counter(), 0

    def on_train_start(self, recipe: Recipe) -> None:
        self.clock, self.since = time.perf_counter(), recipe.state.step

    def on_log(self, recipe: Recipe, metrics: dict[str, Any]) -> None:
        steps = max(1, recipe.state.step - self.since)
        metrics["s_per_step"] = (time.perf_counter() - self.clock) / steps
        self.clock, self.since = time.perf_counter(), recipe.state.step


class EpochHook(BaseHook):
    """Fractional epochs of the training data consumed."""

    def on_log(self, recipe: Recipe, metrics: dict[str, Any]) -> None:
        stream = recipe.stream
        metrics["epoch"] = stream.epoch + stream.position / max(1, stream.batches_per_epoch)


class GenerationEvalHook(BaseHook):
    """Samples from the policy at every evaluation and scores them with the task's gold judge (``eval/*``)."""

    def on_eval(self, recipe: Recipe, metrics: dict[str, Any]) -> None:
        from trustregion.evaluation.generation import EvalContext, evaluate_generation

        r = recipe
        context = EvalContext(r.engine, r.cfg, r.data, r.tokenizer, r.sft_model, r.logger, r.run_dir)
        metrics.update(evaluate_generation(context, r.state.step))


class CheckpointHook(BaseHook):
    """Writes the recipe's state as a checkpoint at every checkpoint point (``checkpoint.save``)."""

    def on_save(self, recipe: Recipe) -> None:
        step = recipe.state.step
        shared, mine = recipe.state_dict()
        checkpoint.save(
            recipe.run_dir,
            recipe.engine,
            checkpoint.Snapshot(step, shared, mine, recipe.identity()),
            recipe.cfg,
            after_engine=lambda: fault("save", step),
            optimizer=recipe.cfg.trainer.final_optimizer_state or step < recipe.total_steps,
        )


class ExportHook(BaseHook):
    """``save_pretrained`` of the given models (policy, reference) with the tokenizer beside each, at the end."""

    def __init__(self, which: tuple[str, ...]) -> None:
        self.which = which

    def on_train_start(self, recipe: Recipe) -> None:
        # A frozen reference that was never built (its log-probs cached) is the starting policy: export it now.
        if "reference" in self.which and recipe.reference is None and not recipe.state.resumed:
            self.export(recipe, "policy", recipe.run_dir / "reference")

    def on_train_end(self, recipe: Recipe) -> None:
        for which in self.which:
            if which == "reference" and recipe.reference is None:
                if not (recipe.run_dir / which).exists():
                    say(f"note: {which}/ not written: the frozen reference is the model this run started from")
                continue
            self.export(recipe, which, recipe.run_dir / which)

    @staticmethod
    def export(recipe: Recipe, which: str, directory: Path) -> None:
        recipe.engine.export(which, directory)
        if recipe.engine.is_main:
            recipe.tokenizer.save_pretrained(directory)
        recipe.engine.barrier()


class AdapterExportHook(BaseHook):
    """Under LoRA: the reference as a PEFT adapter (``reference/``; every rank takes part under ZeRO-3, where its
    factors are gathered), ``base/`` when the base was built here (the tiny model) so the adapters load again, and
    with ``peft.export_merged`` whole models ``policy_merged/``, ``reference_merged/`` (the last two not under ZeRO-3)."""

    def __init__(self, which: tuple[str, ...]) -> None:
        self.which = which

    def on_train_end(self, recipe: Recipe) -> None:
        from trustregion.lora import adapted_layers, save_merged

        engine, cfg, run = recipe.engine, recipe.cfg, recipe.run_dir
        written = []
        if "reference" in self.which:
            engine.unwrap("reference").save_pretrained(run / "reference", write=engine.is_main)
            written.append("reference")
        if engine.is_main and cfg.deepspeed.stage < 3:
            policy = engine.unwrap("policy")
            if cfg.model.path is None:
                save_merged(policy, run / "base", [])  # W0 alone
                written.append("base")
            if cfg.peft.export_merged:
                save_merged(policy, run / "policy_merged", [x.delta() for x in adapted_layers(policy)])
                written.append("policy_merged")
                if "reference" in self.which:
                    engine.unwrap("reference").save_pretrained(run / "reference_merged", merged=True)
                    written.append("reference_merged")
        if engine.is_main:
            for name in written:
                recipe.tokenizer.save_pretrained(run / name)
        engine.barrier()
