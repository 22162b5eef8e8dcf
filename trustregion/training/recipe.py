"""The training recipe: one run of a stage (preference alignment or SFT), set up in named steps, then one loop.

    recipe = Recipe(cfg, run_dir, PreferenceStage())   # or SFTStage()
    recipe.setup()      # runtime, data, model + tokenizer, engine + reference, reference update, state, logger, hooks
    last = recipe.train()   # per optimizer step: forward, loss, step, reference update, log, eval, save
    recipe.cleanup()

``run()`` does all three and returns the last logged metrics. What tells the stages apart (objective, rule, exports,
data summary, banner, default hooks) is the stage's (``trustregion.training.stages``); which reference a run builds,
``trustregion.reference.build``'s; what a checkpoint holds besides the engine's state, and resuming from one,
``trustregion.training.run_state``'s. Optional work (timers, generation evaluation, export, a user's extensions) is
done by hooks (``trustregion.training.hooks``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import torch
from omegaconf import DictConfig, OmegaConf

from trustregion.config import validate
from trustregion.console import quiet_third_party, say
from trustregion.data import dataset_settings, load_preferences
from trustregion.data.batches import BatchStream, to_device
from trustregion.engines.base import Engine, OptimSettings
from trustregion.engines.launch import init_distributed, launched_rank, launched_world_size
from trustregion.engines.local import LocalEngine
from trustregion.engines.zero import DeepSpeedEngine, ZeroSettings
from trustregion.errors import DISK_ERRORS, ConfigError, StopRequested, TrainingError
from trustregion.metrics import MetricBuffer
from trustregion.models.flops import flops_per_token
from trustregion.models.loading import check_model_path, load_policy
from trustregion.models.lora import wrap_policy
from trustregion.objectives.objective import evaluate_objective
from trustregion.reference.build import ReferencePlan
from trustregion.training import checkpoint, hooks, run_state
from trustregion.training.guard import Diverged, DivergenceGuard, NonFinite
from trustregion.training.logger import RunLogger
from trustregion.training.notices import notices
from trustregion.training.preemption import Preempted, agreed_signal, preemption_signals, requeue_on_slurm
from trustregion.training.rundir import lock_run_dir, resume_command, write_hydra_records
from trustregion.training.sft_logps import sft_logps
from trustregion.training.splits import Splits
from trustregion.training.stages import Stage
from trustregion.training.state import StepMetrics, TrainState, seed_everything
from trustregion.training.steps import total_optimizer_steps


def datasets_cache() -> str:
    """Where ``datasets`` keeps what it reads (HF_DATASETS_CACHE, else its default under the home dir)."""
    import datasets

    return str(datasets.config.HF_DATASETS_CACHE)


@contextmanager
def disk_faults_named(path: str | Path) -> Iterator[None]:
    """A disk fault inside the block that names no file (a write that fails, deep in a library) names ``path``."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_ERRORS and not e.filename:
            raise OSError(e.errno, e.strerror, str(Path(path).expanduser())) from e
        raise


def make_engine(cfg: DictConfig, policy, reference, total_steps: int) -> Engine:
    """DeepSpeed's engine when ``deepspeed.stage > 0``, else one process; each from its explicit settings."""
    t = cfg.trainer
    optim = OptimSettings(
        lr=t.lr,
        total_steps=total_steps,
        weight_decay=t.weight_decay,
        adam_betas=tuple(t.adam_betas),
        schedule=str(t.schedule.value),
        warmup_steps=t.warmup_steps,
        max_grad_norm=t.max_grad_norm,
        fused=t.fused_optimizer,
        grad_accum=t.grad_accum,
        batch_size=t.batch_size,
        device=t.device,
        precision=t.precision,
    )
    if cfg.deepspeed.stage == 0:
        return LocalEngine(policy, reference, optim)
    ds = cfg.deepspeed
    precision = {"bf16-mixed": "bf16", "fp16-mixed": "fp16"}.get(t.precision, "fp32")
    zero = ZeroSettings(
        stage=int(ds.stage),
        offload_optimizer=ds.offload_optimizer,
        offload_params=ds.offload_params,
        param_persistence_threshold=int(ds.param_persistence_threshold),
        precision=precision,
        reference_update=str(ds.reference_update.value),
    )
    return DeepSpeedEngine(policy, reference, optim, zero)


class Recipe:
    """One training run of ``stage``: preference alignment (``PreferenceStage``) or SFT (``SFTStage``)."""

    def __init__(
        self, cfg: DictConfig, run_dir: Path, stage: Stage, extra_hooks: list[hooks.Hook] | None = None
    ) -> None:
        if "dataset" in cfg:  # a source written outside the package: its schema's defaults, for every reader
            cfg.dataset = dataset_settings(cfg.dataset)
        self.cfg, self.run_dir, self.stage = cfg, Path(run_dir), stage
        self.buffer = MetricBuffer()  # the metric window since the last log (checkpointed)
        self.run_dir_lock = None  # held by rank 0 from setup to the end of run()
        self.extra_hooks = list(extra_hooks or [])
        self.state = TrainState()
        self.lora = OmegaConf.select(cfg, "peft.name", default="none") == "lora"
        self.reference = self.sft_model = self.reference_update = None

    # --- setup, in named steps ------------------------------------------------------------------
    def setup(self) -> None:
        self.setup_runtime()
        self.setup_data()
        self.setup_model()
        self.setup_engine()
        self.setup_reference_update()
        self.setup_state()
        self.setup_logger()
        self.setup_hooks()

    def setup_runtime(self) -> None:
        """The stage's rule, checks, threads, seeds, and the process group under DeepSpeed."""
        cfg, t = self.cfg, self.cfg.trainer
        self.rule = self.stage.rule(cfg)
        validate(cfg, reference_moves=self.rule is not None and self.rule.moves)
        check_model_path(cfg.model)  # before the data is read
        self.guard = DivergenceGuard(t.divergence_factor)
        quiet_third_party(bool(cfg.verbose))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if launched_rank() == 0:  # one run's ranks share the dir; another run may not
            self.run_dir_lock = lock_run_dir(self.run_dir)
        self.refuse_another_runs_checkpoints()
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        seed_everything(t.seed)
        if cfg.deepspeed.stage > 0:
            init_distributed(cfg.deepspeed.backend, t.device, t.num_threads)
        elif launched_world_size() > 1:
            raise ConfigError(
                f"{launched_world_size()} processes were launched but deepspeed.stage=0: "
                "set deepspeed=zero2 or deepspeed=zero3, or launch one process"
            )

    def refuse_another_runs_checkpoints(self) -> None:
        """A fresh run (no ``trainer.resume``) in a dir that holds checkpoints would prune them as it commits its
        own, and a later ``latest`` would adopt them: refused, naming them and both ways on."""
        kept = checkpoint.complete_checkpoints(self.run_dir)
        if self.cfg.trainer.resume is None and kept:
            raise ConfigError(
                f"the run dir {self.run_dir} holds checkpoints of a run ({', '.join(p.name for p in kept[-2:])}): "
                f"continue it with {self.continue_with()}, or start this run in a new dir (leave hydra.run.dir out)"
            )

    def setup_data(self) -> None:
        """The data source's rows and the stage's objective; a disk fault in the data's cache names the cache."""
        with disk_faults_named(OmegaConf.select(self.cfg.dataset, "cache_dir", default=None) or datasets_cache()):
            self.data = load_preferences(self.cfg.dataset)
        self.objective = self.stage.objective(self.cfg, self.data)

    def setup_model(self) -> None:
        """The policy and its tokenizer (trained on the data for the tiny model), then the tokenized rows."""
        cfg = self.cfg
        texts = self.data.texts() if cfg.model.path is None else None
        self.policy, self.tokenizer = load_policy(cfg.model, texts, cfg.trainer.seed)
        if self.lora:
            self.policy = wrap_policy(self.policy, cfg.peft)
        with disk_faults_named(OmegaConf.select(cfg.dataset, "cache_dir", default=None) or datasets_cache()):
            self.splits = Splits.tokenize(self.objective, self.data, self.tokenizer, cfg.dataset)
        if launched_rank() == 0:  # kept, skipped and truncated rows per split; a warning when truncation is common
            for line in self.stage.data_summary(self.data, self.splits):
                say(line)

    def setup_engine(self) -> None:
        """The reference and the SFT model that the plan asks for (``ReferencePlan``), the engine, the batch stream."""
        cfg, t = self.cfg, self.cfg.trainer
        self.plan = ReferencePlan.decide(
            uses_reference=self.objective.uses_reference,
            moves=self.rule is not None and self.rule.moves,
            cache=t.cache_reference,
            world_size=launched_world_size(),
            lora=self.lora,
            generate=self.stage.generation(cfg, self.data),
        )
        self.reference, self.sft_model = self.plan.build(
            self.policy, cfg.peft if self.lora else None, sharded=cfg.deepspeed.stage == 3
        )
        world = launched_world_size() if cfg.deepspeed.stage > 0 else 1
        self.total_steps = total_optimizer_steps(t, len(self.splits.train), world, self.stage.rows_name)
        self.engine = make_engine(cfg, self.policy, self.reference, self.total_steps)
        if self.sft_model is not None:
            self.sft_model = self.engine.prepare_frozen(self.sft_model)
        self.objective.reference_from_cache = self.plan.cached
        group = OmegaConf.select(cfg.dataset, "group_by_length", default=False)
        self.stream = BatchStream(
            len(self.splits.train),
            t.batch_size,
            self.engine.world_size,
            self.engine.rank,
            t.seed,
            t.shuffle,
            lengths=self.splits.train["length"] if group else None,
        )

    def setup_reference_update(self) -> None:
        """The rule and the way to apply it, where the reference moves."""
        self.reference_update = self.plan.update(self.rule, self.engine)

    def setup_state(self) -> None:
        """Resume from ``trainer.resume``, or score the SFT model's log-probs of a fresh run."""
        engine = self.engine
        identity = run_state.identity(self.cfg, engine.world_size, self.stage.method(self.cfg), self.lora)
        self.run_state = run_state.RunState(
            engine, self.state, self.stream, self.guard, self.buffer, self.reference_update, identity, self.objective
        )
        candidates = checkpoint.resume_candidates(self.cfg.trainer.resume, self.run_dir)
        if self.cfg.trainer.resume == "latest" and not candidates and engine.is_main:
            say(f"note: trainer.resume=latest: {self.run_dir} has no checkpoint yet; the run starts at step 0")
        if not self.run_state.resume(candidates, self.cfg) and self.objective.uses_reference:
            # the SFT model: the reference, or the policy itself before its first step when no reference is built
            model = engine.reference if self.reference is not None else engine.policy
            self.state.sft_train, self.state.sft_eval = sft_logps(self.cfg, engine, model, self.objective, self.splits)

    def setup_logger(self) -> None:
        engine, cfg = self.engine, self.cfg
        resume_step = self.state.step if self.state.resumed else None
        self.logger = RunLogger(
            self.run_dir, cfg, enabled=engine.is_main, job_type=self.stage.job_type, resume_step=resume_step
        )
        if engine.is_main:  # the records, once the run is known to run (a refused resume leaves the old ones)
            write_hydra_records(self.run_dir, cfg)
            OmegaConf.save(cfg, self.run_dir / "config.yaml", resolve=True)
            say(self.stage.banner(self.splits, self.total_steps, engine, self.run_dir))
            say(run_state.checkpoint_note(cfg.trainer, engine, self.reference, self.lora))
            for line in notices(cfg, self.total_steps):
                say(line)

    def setup_hooks(self) -> None:
        defaults = self.stage.default_hooks(self.cfg, self.lora, generation=self.sft_model is not None)
        self.hooks = defaults + hooks.user_hooks(list(self.cfg.hooks)) + self.extra_hooks
        self.context = hooks.HookContext(
            cfg=self.cfg,
            run_dir=self.run_dir,
            engine=self.engine,
            state=self.state,
            stream=self.stream,
            logger=self.logger,
            tokenizer=self.tokenizer,
            data=self.data,
            reference_update=self.reference_update,
            reference_built=self.reference is not None,
            sft_model=self.sft_model,
            flops_per_token=flops_per_token(
                self.engine.policy_numel(),
                self.engine.unwrap("policy").config,
                reference_forward=self.plan.reference_forward,
            ),
            stop_requested=self.stop_requested,
            total_steps=self.total_steps,
            continue_with=self.continue_with(),
        )

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Setup, train, cleanup, with stop signals noted throughout (``preemption_signals``)."""
        try:
            with preemption_signals(self.state):
                self.setup()
                try:
                    last = self.train()
                except BaseException:
                    self.logger.finish(exit_code=1)
                    raise
                self.cleanup()
                return last
        finally:
            if self.run_dir_lock is not None:
                self.run_dir_lock.close()

    def train(self) -> dict[str, Any]:
        """Forward and loss on each micro-batch, optimizer step, reference update, log, evaluate, checkpoint; at the
        end evaluate, checkpoint and export. Returns the last logged metrics."""
        t, state, engine = self.cfg.trainer, self.state, self.engine
        state.tokens = state.tokens.to(engine.device)
        state.seq_tokens = state.seq_tokens.to(engine.device)
        state.in_setup = False
        if self.stop_requested():  # arrived between setup's end and here
            raise Preempted(f"signal {state.preempted} before step {state.step + 1}: nothing new to checkpoint")
        if state.finished and state.step >= self.total_steps:
            return self.finish_again()
        if state.step == 0:
            self.logger.log(0, self.stage.data_row(self.data, self.splits, engine.world_size))
            if t.eval_at_start:
                state.last = self.evaluate()
        elif state.eval_pending:  # the run stopped at an evaluation point before (or during) its evaluation
            state.last.update(self.evaluate())
            state.eval_pending = False
        self.fire("on_train_start")
        while state.step < self.total_steps:
            self.train_step()
            self.after_step()
        state.last.update(self.evaluate())
        state.finished = True
        if self.stop_requested():
            self.stop_for_preemption(phase="before the export (the resume only exports)")
        if t.save_final:
            self.save()
        self.export()
        self.logger.summary(state.last)
        return state.last

    def train_step(self) -> None:
        """One optimizer step: its micro-batches, the step, the divergence guard's record, the reference update."""
        state, engine = self.state, self.engine
        micro_batches, loss = self.forward_backward()
        grad_norm = engine.step()
        self.buffer.add({"grad_norm": grad_norm})
        state.step += 1
        self.guard.observe(state.step, loss, grad_norm)
        if self.reference_update is not None:
            update = self.reference_update
            stats = StepMetrics(state.step, micro_batches, engine, self.total_steps, state.evaluation, update.distance)
            update.after_step(stats)
        self.fire("on_step_end")

    def after_step(self) -> None:
        """Log, then stop if a signal came (an evaluation due at this step runs on resume), evaluate (stopping after
        it, logged, if a signal came during it), checkpoint."""
        t, state, last = self.cfg.trainer, self.state, self.state.step == self.total_steps
        if state.step % t.log_every == 0 or last:
            self.log()
        evaluate = bool(t.eval_every) and state.step % t.eval_every == 0 and not last
        if self.stop_requested() and not last:
            self.stop_for_preemption(eval_pending=evaluate)
        if evaluate:
            state.last.update(self.evaluate())
            if self.stop_requested():  # during an evaluation with no batch left to stop between: it is logged
                self.stop_for_preemption(phase="after its evaluation")
        if t.save_every and state.step % t.save_every == 0 and not last:
            self.save()

    def export(self) -> None:
        """The models (``on_train_end``: each written whole or not at all), then stop if a signal came meanwhile: the
        final checkpoint is kept and the resume exports again."""
        try:
            self.fire("on_train_end")
            if self.stop_requested():
                raise StopRequested("export")
        except StopRequested:
            raise Preempted(
                f"signal {self.state.preempted} at step {self.state.step}, during the export: run stopped; continue "
                f"with {self.continue_with()} (it only exports)"
            ) from None

    def continue_with(self) -> str:
        """The exact command that continues this run (``rundir.resume_command``)."""
        return resume_command(self.run_dir, self.stage.module)

    def finish_again(self) -> dict[str, Any]:
        """A resume of a run whose final evaluation is checkpointed: no new rows; the models are exported again."""
        if self.engine.is_main:
            say(
                f"the run finished at step {self.state.step} (final evaluation logged): exporting again, nothing to train"
            )
        self.export()
        self.logger.summary(self.state.last)
        return self.state.last

    def stop_requested(self) -> bool:
        """Whether every rank agrees that a stop signal arrived (one all-reduce on several ranks: call it on every
        rank at the same point of the run)."""
        return bool(agreed_signal(self.state, self.engine))

    def forward_backward(self) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """``trainer.grad_accum`` micro-batches: forward, loss, backward. Returns each micro-batch's metrics and the
        step's mean loss, on the device."""
        t, state, engine = self.cfg.trainer, self.state, self.engine
        metrics, loss = [], torch.zeros((), device=engine.device)
        for _ in range(t.grad_accum):
            idx = self.stream.next()
            batch = to_device(self.splits.collator([self.splits.train[i] for i in idx]), engine.device)
            cached = state.sft_train[idx] if state.sft_train is not None else None
            with engine.autocast():
                out = self.objective(engine, batch, cached)
            engine.backward(out.loss / t.grad_accum)
            self.buffer.add(out.metrics, 1.0 / t.grad_accum)
            metrics.append(out.metrics)
            state.tokens = state.tokens + out.tokens
            state.seq_tokens = state.seq_tokens + batch["attention_mask"].sum()
            loss = loss + out.loss.detach().float() / t.grad_accum
        return metrics, loss

    def log(self) -> None:
        metrics = self.buffer.drain(self.engine)
        self.check_divergence()
        metrics["lr"] = self.engine.lr()
        if self.reference_update is not None:
            metrics.update(self.reference_update.log_fields())
        self.fire("on_log", metrics)
        self.logger.log(self.state.step, metrics)
        self.state.last = metrics

    def check_divergence(self) -> None:
        """Stop with one line when a step since the last check diverged, naming the last sound checkpoint and what
        to do (``divergence_advice``)."""
        try:
            self.guard.check(self.engine)
        except Diverged as e:
            raise TrainingError(f"{e}; {self.divergence_advice(rise=not isinstance(e, NonFinite))}") from e

    def divergence_advice(self, rise: bool) -> str:
        """What works after a divergence: a resume would repeat the same steps, and the lr is part of the run's
        identity (a resume may not change it), so a new run with a lower lr; the last sound checkpoint (each one
        passed the guard when it was written) is named; a ``rise`` the user expects may go on with the guard off,
        a setting a resume may change."""
        kept = checkpoint.complete_checkpoints(self.run_dir)
        sound = f"the last sound checkpoint is {kept[-1]}" if kept else "no checkpoint was written"
        lower = f"{float(self.cfg.trainer.lr) / 10:g}"
        advice = (
            f"{sound}, but a resume repeats the same steps and keeps trainer.lr (the run's identity): start a new "
            f"run in a new run dir with a lower {self.stage.divergence_fix} (e.g. trainer.lr={lower})"
        )
        if rise and kept:
            command = resume_command(self.run_dir, self.stage.module)
            advice += f"; if the rise is expected, continue this run without the check: {command} trainer.divergence_factor=null"
        return f"{advice}; metrics so far are in {self.run_dir}"

    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics of the objective, plus what the hooks add (generation); logged as one row."""
        engine, state = self.engine, self.state
        engine.policy.eval()
        try:
            with engine.autocast():
                metrics: dict[str, Any] = {}
                if self.splits.eval is not None:
                    metrics = evaluate_objective(
                        engine,
                        self.objective,
                        self.splits.eval,
                        self.splits.collator,
                        state.sft_eval,
                        self.cfg.trainer.batch_size,
                        self.stop_requested,
                    )
                self.fire("on_eval", metrics)
        except StopRequested as e:  # a signal between batches: drop the partial evaluation, keep the steps
            self.stop_for_preemption(phase=f"during the {e} (not logged)", eval_pending=True)
        finally:
            engine.policy.train()
        if metrics:
            self.logger.log(state.step, metrics)
            state.evaluation = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        return metrics

    def save(self) -> None:
        """A checkpoint of this step (``RunState.save``), written only when every step so far passed
        the divergence guard and the weights are finite; hooks may add to it (``on_save``)."""
        self.check_divergence()
        if not self.engine.weights_finite():
            raise TrainingError(
                f"the policy's weights are not finite after step {self.state.step}: no checkpoint written; "
                f"{self.divergence_advice(rise=False)}"
            )
        self.run_state.save(
            self.run_dir,
            self.cfg,
            after_engine=lambda directory: self.fire("on_save", directory),
            optimizer=self.cfg.trainer.final_optimizer_state or self.state.step < self.total_steps,
        )

    def stop_for_preemption(self, phase: str = "", eval_pending: bool = False) -> NoReturn:
        """Checkpoint the step just finished and stop, printing the command that continues the run (a requeue
        continues it too). ``phase`` says what was running when the signal came, where it was not a training step;
        ``eval_pending``: this step's evaluation did not run (or was dropped), and runs first on resume."""
        at = f"at step {self.state.step}" + (f", {phase}" if phase else "")
        if self.state.step == 0:  # nothing trained: the step-0 evaluation runs again on the next start
            raise Preempted(f"signal {self.state.preempted} {at}: nothing trained yet, nothing to checkpoint")
        self.state.eval_pending = eval_pending and self.state.step < self.total_steps  # the final one: on resume
        self.save()
        stopped = f"signal {self.state.preempted} {at}: checkpoint written, run stopped"
        requeued = requeue_on_slurm(self.state.preempted, stopped) if self.engine.is_main else ""
        raise Preempted(f"{stopped}{requeued}; continue with {self.continue_with()}")

    def fire(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self.context, *args)

    def cleanup(self) -> None:
        self.logger.finish()
