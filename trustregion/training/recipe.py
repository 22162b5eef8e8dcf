"""The training recipe: setup in named steps, one loop that reads like the method, cleanup.

    recipe = Recipe(cfg, run_dir)      # or SFTRecipe(cfg, run_dir)
    recipe.setup()                     # runtime, data, model + tokenizer, engine, reference update, state, logger
    last = recipe.train()              # per optimizer step: forward, loss, step, reference update, log, eval, save
    recipe.cleanup()

``run()`` does all three and returns the last logged metrics. Optional work (timers, generation evaluation,
export, a user's extensions) is done by hooks (``trustregion.training.hooks``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import torch
from omegaconf import DictConfig, OmegaConf

from trustregion.config import validate
from trustregion.console import quiet_third_party, say
from trustregion.data import load_preferences
from trustregion.data.batches import BatchStream, to_device
from trustregion.data.rows import truncated, truncation_warning
from trustregion.engines.base import Engine, OptimSettings
from trustregion.engines.launch import init_distributed, launched_rank, launched_world_size
from trustregion.engines.local import LocalEngine
from trustregion.engines.zero import DeepSpeedEngine, ZeroSettings
from trustregion.errors import ConfigError, StopRequested, TrainingError
from trustregion.metrics import MetricBuffer
from trustregion.models.flops import flops_per_token
from trustregion.models.loading import check_model_path, load_policy, make_reference
from trustregion.models.logps import logps_function
from trustregion.models.lora import wrap_policy
from trustregion.objectives.objective import SFT, Objective, build_objective, evaluate_objective, reference_logps
from trustregion.reference.adapter import build_reference
from trustregion.reference.rules import Frozen, Rule, build_rule
from trustregion.reference.select import make_applier
from trustregion.reference.update import ReferenceUpdate
from trustregion.training import checkpoint, hooks
from trustregion.training.guard import Diverged, DivergenceGuard
from trustregion.training.logger import RunLogger
from trustregion.training.preemption import Preempted, agreed_signal, preemption_signals, requeue_on_slurm
from trustregion.training.rundir import lock_run_dir
from trustregion.training.sft_logps import SFTLogpsCache
from trustregion.training.state import StepMetrics, TrainState, seed_everything
from trustregion.training.steps import total_optimizer_steps


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


@contextmanager
def evaluation_mode(model: torch.nn.Module):
    """``model`` in eval mode (no dropout) inside the block, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Recipe:
    """Preference alignment (DPO, IPO, KTO, ...) against a frozen or moving reference."""

    job_type = "align"
    exports: tuple[str, ...] = ("policy", "reference")
    rows_name = "training pairs"  # what a training row is, in messages

    def __init__(self, cfg: DictConfig, run_dir: Path, extra_hooks: list[hooks.Hook] | None = None) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.buffer = MetricBuffer()  # the metric window since the last log (checkpointed)
        self.run_dir_lock = None  # held by rank 0 from setup to the end of run()
        self.extra_hooks = list(extra_hooks or [])
        self.state = TrainState()
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

    def make_rule(self) -> Rule:
        return build_rule(self.cfg.ref_update)

    def setup_runtime(self) -> None:
        """Checks, threads, seeds, and the process group under DeepSpeed."""
        cfg, t = self.cfg, self.cfg.trainer
        self.rule = self.make_rule()
        validate(cfg, reference_moves=self.rule.moves)
        check_model_path(cfg.model)  # before the data is read
        self.guard = DivergenceGuard(t.divergence_factor)
        quiet_third_party(bool(cfg.verbose))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if launched_rank() == 0:  # one run's ranks share the dir; another run may not
            self.run_dir_lock = lock_run_dir(self.run_dir)
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

    def make_objective(self, data) -> Objective:
        return build_objective(self.cfg.method, data.kind, self.cfg.dataset.name, logps_function(self.cfg.model))

    def setup_data(self) -> None:
        self.data = load_preferences(self.cfg.dataset)
        self.objective = self.make_objective(self.data)

    def setup_model(self) -> None:
        """The policy and its tokenizer (trained on the data for the tiny model), then the tokenized rows."""
        cfg, d = self.cfg, self.cfg.dataset
        texts = self.data.texts() if cfg.model.path is None else None
        self.policy, self.tokenizer = load_policy(cfg.model, texts, cfg.trainer.seed)
        if self.lora:
            self.policy = wrap_policy(self.policy, cfg.peft)
        self.train_rows, self.truncation = self.objective.tokenize(
            self.objective.rows(self.data, "train"), self.tokenizer, d
        )
        eval_split = self.objective.rows(self.data, "eval")
        self.eval_rows, eval_truncation = (
            (None, None) if eval_split is None else self.objective.tokenize(eval_split, self.tokenizer, d)
        )
        self.collator = self.objective.collator(self.tokenizer.pad_token_id)
        if launched_rank() == 0:  # kept, skipped and truncated rows per split; a warning when truncation is common
            for line in self.data_summary(eval_truncation):
                say(line)

    def data_summary(self, eval_truncation) -> list[str]:
        """Console lines: the rows each split kept, skipped and truncated."""
        return self.data.report.summary_lines(self.truncation, eval_truncation)

    def setup_engine(self) -> None:
        """The reference (and the SFT model kept for generation evaluation), the engine, the batch stream."""
        cfg, t = self.cfg, self.cfg.trainer
        # A frozen reference on one process is needed only for its log-probs, which equal the starting policy's:
        # they are cached before training and the reference model is never built (one model's memory saved).
        # A LoRA reference is a view of the policy's own base, nearly free: it is built.
        uses = self.objective.uses_reference
        cached = uses and not self.rule.moves and t.cache_reference and launched_world_size() == 1
        if uses and (self.lora or not cached):
            self.reference = self.make_reference(moving=self.rule.moves)
        if self.wants_generation():
            self.sft_model = self.make_reference(moving=False, name="sft")
        world = launched_world_size() if cfg.deepspeed.stage > 0 else 1
        self.total_steps = total_optimizer_steps(t, len(self.train_rows), world, self.rows_name)
        self.engine = make_engine(cfg, self.policy, self.reference, self.total_steps)
        if self.sft_model is not None:
            self.sft_model = self.engine.prepare_frozen(self.sft_model)
        self.objective.reference_from_cache = cached
        group = OmegaConf.select(cfg.dataset, "group_by_length", default=False)
        self.stream = BatchStream(
            len(self.train_rows),
            t.batch_size,
            self.engine.world_size,
            self.engine.rank,
            t.seed,
            t.shuffle,
            lengths=self.train_rows["length"] if group else None,
        )

    def setup_reference_update(self) -> None:
        """The rule and the way to apply it, where the reference moves."""
        if self.reference is not None and self.rule.moves:
            self.reference_update = ReferenceUpdate(self.rule, make_applier(self.engine), self.engine)

    @property
    def lora(self) -> bool:
        return OmegaConf.select(self.cfg, "peft.name", default="none") == "lora"

    def make_reference(self, moving: bool, name: str = "reference"):
        """A frozen copy of the policy; under LoRA a view of the policy's own base (``AdapterReference``)."""
        if self.lora:
            return build_reference(self.policy, self.cfg.peft, moving, name, sharded=self.cfg.deepspeed.stage == 3)
        return make_reference(self.policy)

    def wants_generation(self) -> bool:
        if self.cfg.eval.generate and self.data.task is None and launched_rank() == 0:
            say(
                f"note: generation-based evaluation skipped: dataset={self.cfg.dataset.name} has no "
                "gold judge (held-out preference metrics still run); set eval.generate=false to say so"
            )
        return bool(self.cfg.eval.generate) and self.data.task is not None

    def setup_state(self) -> None:
        """Resume from ``trainer.resume``, or cache the SFT model's log-probs of a fresh run."""
        t = self.cfg.trainer
        if not self.resume(checkpoint.resume_candidates(t.resume, self.run_dir)) and self.objective.uses_reference:
            # the SFT model: the reference, or the policy itself before its first step when no reference is built
            model = self.engine.reference if self.reference is not None else self.engine.policy
            self.state.sft_train, self.state.sft_eval = self.sft_logps(model)

    def sft_logps(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The SFT model's log-probs of the training and held-out rows: scored here, or read from
        ``trainer.sft_logps_cache`` where an earlier run of the same model, rows and settings left them."""
        cfg, t = self.cfg, self.cfg.trainer
        cache = None
        if t.sft_logps_cache:
            settings = {
                "chunks": ",".join(self.collator.chunks),
                "average": self.objective.average,
                "logps": f"{cfg.model.logps}/{cfg.model.logits_chunk_tokens}/{cfg.model.share_prompt}",
                "precision": t.precision,
                "batch_size": t.batch_size,
                "device": self.engine.device.type,
            }
            cache = SFTLogpsCache(t.sft_logps_cache, model, self.train_rows, self.eval_rows, settings)
            if (cached := cache.load()) is not None:
                return cached
        average, fn = self.objective.average, self.objective.logps
        with evaluation_mode(model), self.engine.autocast():
            train = reference_logps(self.engine, model, self.train_rows, self.collator, t.batch_size, average, fn)
            held = reference_logps(self.engine, model, self.eval_rows, self.collator, t.batch_size, average, fn)
        if cache is not None:
            cache.save(train, held)
        return train, held

    def resume(self, candidates: list[Path]) -> bool:
        """Load the first sound checkpoint of ``candidates``; a damaged one falls back to the next with a warning (on
        several ranks, when every rank saw the damage alike). False when there is none to resume."""
        for i, path in enumerate(candidates):
            try:
                step, shared, mine = checkpoint.load(
                    path, self.engine, self.identity(), self.merge_rank_states, self.cfg
                )
            except checkpoint.DamagedCheckpoint as e:
                alike = isinstance(e, checkpoint.SeenByAllRanks) or self.engine.world_size == 1
                if i + 1 == len(candidates) or not alike:
                    raise
                say(f"warning: {e}; trying {candidates[i + 1].name}")
                continue
            self.load_state_dict(step, shared, mine)
            if self.engine.is_main:
                say(f"resuming {path} at step {step}")
            return True
        return False

    def setup_logger(self) -> None:
        engine, cfg = self.engine, self.cfg
        resume_step = self.state.step if self.state.resumed else None
        self.logger = RunLogger(
            self.run_dir, cfg, enabled=engine.is_main, job_type=self.job_type, resume_step=resume_step
        )
        if engine.is_main:
            OmegaConf.save(cfg, self.run_dir / "config.yaml", resolve=True)
            say(self.banner())
            say(self.checkpoint_note())

    def setup_hooks(self) -> None:
        self.hooks = self.default_hooks() + hooks.user_hooks(list(self.cfg.hooks)) + self.extra_hooks
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
                reference_forward=self.reference is not None and not self.objective.reference_from_cache,
            ),
            stop_requested=self.stop_requested,
            total_steps=self.total_steps,
        )

    def banner(self) -> str:
        return (
            f"{len(self.train_rows)} train / {len(self.eval_rows)} eval pairs, {self.total_steps} "
            f"steps, {self.engine.policy_numel() / 1e6:.2f}M params, run dir {self.run_dir}"
        )

    def checkpoint_note(self) -> str:
        """What one checkpoint will cost on disk (policy, reference and optimizer state), so keep_last is a choice."""
        t = self.cfg.trainer
        weights = self.engine.policy_bytes()
        reference = 0
        if self.reference is not None:  # LoRA: the reference's state is its delta alone
            reference = sum(b.numel() * b.element_size() for b in self.reference.buffers()) if self.lora else weights
        size = weights + reference + 8 * self.engine.policy_numel(trainable=True)  # + Adam's two fp32 moments
        what = "policy, reference, optimizer" if self.reference is not None else "policy, optimizer"
        when = [f"every {t.save_every} steps"] if t.save_every else []
        when += ["at the end"] if t.save_final else []
        if not when:
            return f"no checkpoints (trainer.save_every=0, trainer.save_final=false); one ≈ {_bytes(size)} ({what})"
        return (
            f"one checkpoint ≈ {_bytes(size)} ({what}), written "
            f"{' and '.join(when)}; trainer.keep_last={t.keep_last} keeps at most {t.keep_last}"
        )

    def default_hooks(self) -> list[hooks.Hook]:
        # Export first: a reference exported at the start is written before the step timers start.
        exports = self.exports if self.cfg.trainer.save_models else ()
        found: list[hooks.Hook] = [hooks.ExportHook(exports)]
        if self.lora:  # the policy adapter by save_pretrained; the reference adapter and merged models by the next
            found = [hooks.ExportHook(("policy",) if exports else ()), hooks.AdapterExportHook(exports)]
        found += [hooks.ThroughputHook(), hooks.EpochHook()]
        if self.sft_model is not None:
            found.append(hooks.GenerationEvalHook())
        return found + [hooks.ProgressHook(hooks.progress_interval(self.cfg.trainer.progress_every_s))]

    # --- state ------------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with its checkpoint (``checkpoint.check_compatible`` ignores the model's
        execution-only settings)."""
        model = OmegaConf.to_container(self.cfg.model, resolve=True)
        if self.lora:  # the adapters' shape and the reference's kind (full fine-tuning checkpoints have no entry)
            p = self.cfg.peft
            model["peft"] = {k: str(p[k]) for k in ("rank", "alpha", "target_modules", "adapter_path", "reference")}
        return {
            "model": model,
            "method": self.objective.name if isinstance(self.objective, SFT) else str(self.cfg.method.name),
            "world_size": self.engine.world_size,
            "deepspeed_stage": int(self.cfg.deepspeed.stage),
            "global_batch": int(self.cfg.trainer.batch_size) * self.engine.world_size,
        }

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state shared by every rank, this rank's own state) for ``checkpoint.save``."""
        shared = {
            "guard": self.guard.state_dict(),
            "stream": self.stream.state_dict(),
            "sft_train": self.state.sft_train,
            "sft_eval": self.state.sft_eval,
            "finished": self.state.finished,
            "last": self.state.last,  # the final metrics of a finished run, for its summary on a resume
        }
        mine = {"metrics": self.buffer.state_dict(), "tokens": self.state.tokens.cpu()}
        if self.reference_update is not None:
            mine["updater"] = self.reference_update.state_dict()
        return shared, mine

    def merge_rank_states(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """This rank's state from every saved rank's, on a resume at another world size: its own RNG where the saved
        run had this rank (else rank 0's), the merged metric window, the token count on rank 0, the update's
        fp32 masters re-sharded like the reference."""
        rank = self.engine.rank
        mine = dict(states[rank] if rank < len(states) else states[0])
        if "metrics" in mine:
            mine["metrics"] = MetricBuffer.merge([s["metrics"] for s in states])
            tokens = sum(s["tokens"] for s in states)
            mine["tokens"] = tokens if rank == 0 else torch.zeros_like(tokens)
        if self.reference_update is not None:
            updater = dict(states[0]["updater"])
            if "masters" in updater:
                updater["masters"] = self.engine.reshard([s["updater"]["masters"] for s in states])
            mine["updater"] = updater
        return mine

    def load_state_dict(self, step: int, shared: dict[str, Any], mine: dict[str, Any]) -> None:
        self.state.step, self.state.resumed = step, True
        self.stream.load_state_dict(shared["stream"])
        if "guard" in shared:  # checkpoints from before the guard have none
            self.guard.load_state_dict(shared["guard"])
        self.state.sft_train, self.state.sft_eval = shared["sft_train"], shared["sft_eval"]
        self.state.finished, self.state.last = shared.get("finished", False), dict(shared.get("last", {}))
        if self.reference_update is not None:
            self.reference_update.load_state_dict(mine["updater"])
        if "metrics" in mine:  # the metric window since the last log (checkpoints from before it had none)
            self.buffer.load_state_dict(mine["metrics"], self.engine.device)
            self.state.tokens = mine["tokens"]

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
            self.log_data_report()
            if t.eval_at_start:
                state.last = self.evaluate()
        self.fire("on_train_start")
        while state.step < self.total_steps:
            micro_batches, loss = self.forward_backward()
            grad_norm = engine.step()
            self.buffer.add({"grad_norm": grad_norm})
            state.step += 1
            self.guard.observe(state.step, loss, grad_norm)
            if self.reference_update is not None:
                stats = StepMetrics(state.step, micro_batches, engine, self.total_steps)
                self.reference_update.after_step(stats)
            self.fire("on_step_end")
            if state.step % t.log_every == 0 or state.step == self.total_steps:
                self.log()
            if self.stop_requested() and state.step < self.total_steps:
                self.stop_for_preemption()
            if t.eval_every and state.step % t.eval_every == 0 and state.step < self.total_steps:
                state.last.update(self.evaluate())
            if t.save_every and state.step % t.save_every == 0 and state.step < self.total_steps:
                self.save()
        state.last.update(self.evaluate())
        state.finished = True
        if self.stop_requested():
            self.stop_for_preemption(phase="before the export (trainer.resume=latest exports)")
        if t.save_final:
            self.save()
        self.fire("on_train_end")
        self.logger.summary(state.last)
        return state.last

    def finish_again(self) -> dict[str, Any]:
        """A resume of a run whose final evaluation is checkpointed: no new rows; the models are exported again."""
        if self.engine.is_main:
            say(
                f"the run finished at step {self.state.step} (final evaluation logged): exporting again, nothing to train"
            )
        self.fire("on_train_end")
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
            batch = to_device(self.collator([self.train_rows[i] for i in idx]), engine.device)
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

    def log_data_report(self) -> None:
        """The step-0 row of a fresh run: world size, training rows, skipped and truncated rows."""
        trunc = self.truncation
        self.logger.log(
            0,
            {
                "world_size": self.engine.world_size,
                "data/train_pairs": len(self.train_rows),
                "data/skipped_rows": self.data.report.skipped,
                "data/truncated_prompts": trunc.truncated_prompts,
                "data/truncated_responses": trunc.truncated_responses,
                "data/truncated_rows": trunc.truncated_rows,
                **({"data/notes": " | ".join(self.data.report.notes)} if self.data.report.notes else {}),
            },
        )

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
        """Stop with one line when a step since the last check diverged, naming the checkpoint to resume from."""
        try:
            self.guard.check(self.engine)
        except Diverged as e:
            hint = "trainer.lr" if isinstance(self.objective, SFT) else "trainer.lr or method.beta"
            kept = checkpoint.complete_checkpoints(self.run_dir)
            where = f"resume from {kept[-1].name} (trainer.resume=latest)" if kept else "start again"
            raise TrainingError(f"{e}; lower {hint} and {where}; metrics so far are in {self.run_dir}") from e

    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics of the objective, plus what the hooks add (generation); logged as one row."""
        engine, state = self.engine, self.state
        engine.policy.eval()
        try:
            with engine.autocast():
                metrics: dict[str, Any] = {}
                if self.eval_rows is not None:
                    metrics = evaluate_objective(
                        engine,
                        self.objective,
                        self.eval_rows,
                        self.collator,
                        state.sft_eval,
                        self.cfg.trainer.batch_size,
                        self.stop_requested,
                    )
                self.fire("on_eval", metrics)
        except StopRequested as e:  # a signal between batches: drop the partial evaluation, keep the steps
            self.stop_for_preemption(phase=f"during the {e} (not logged)")
        finally:
            engine.policy.train()
        if metrics:
            self.logger.log(state.step, metrics)
        return metrics

    def save(self) -> None:
        """A checkpoint of this step (``trustregion.training.checkpoint``), written only when every step so far passed
        the divergence guard and the weights are finite; hooks may add to it (``on_save``)."""
        self.check_divergence()
        if not self.engine.weights_finite():
            raise TrainingError(
                f"the policy's weights are not finite after step {self.state.step}: no checkpoint written; lower "
                f"trainer.lr and resume from the last checkpoint (trainer.resume=latest) in {self.run_dir}"
            )
        step = self.state.step
        shared, mine = self.state_dict()
        checkpoint.save(
            self.run_dir,
            self.engine,
            checkpoint.Snapshot(step, shared, mine, self.identity()),
            self.cfg,
            after_engine=lambda directory: self.fire("on_save", directory),
            optimizer=self.cfg.trainer.final_optimizer_state or step < self.total_steps,
        )

    def stop_for_preemption(self, phase: str = "") -> NoReturn:
        """Checkpoint the step just finished and stop; ``trainer.resume=latest`` (or a requeue) continues from it.
        ``phase`` says what was running when the signal came, where it was not a training step."""
        at = f"at step {self.state.step}" + (f", {phase}" if phase else "")
        if self.state.step == 0:  # nothing trained: the step-0 evaluation runs again on the next start
            raise Preempted(f"signal {self.state.preempted} {at}: nothing trained yet, nothing to checkpoint")
        self.save()
        stopped = f"signal {self.state.preempted} {at}: checkpoint written, run stopped"
        requeued = requeue_on_slurm(self.state.preempted, stopped) if self.engine.is_main else ""
        raise Preempted(f"{stopped}{requeued}; continue with trainer.resume=latest")

    def fire(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self.context, *args)

    def cleanup(self) -> None:
        self.logger.finish()


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class SFTRecipe(Recipe):
    """Supervised fine-tuning on the data source's SFT corpus; saves ``run_dir/policy``."""

    job_type = "sft"
    exports = ("policy",)
    rows_name = "SFT examples"

    def make_rule(self) -> Rule:
        return Frozen(None)  # no reference

    def make_objective(self, data) -> Objective:
        return SFT(None, logps_function(self.cfg.model))

    def wants_generation(self) -> bool:
        return False

    def banner(self) -> str:
        return f"SFT: {len(self.train_rows)} examples, {self.total_steps} steps, run dir {self.run_dir}"

    def default_hooks(self) -> list[hooks.Hook]:
        found = [hooks.StepTimeHook(), hooks.ExportHook(self.exports)]
        found += [hooks.AdapterExportHook(self.exports)] if self.lora else []
        every = hooks.progress_interval(self.cfg.trainer.progress_every_s)
        return found + [hooks.ProgressHook(every, loss_key="sft/loss")]

    def data_summary(self, eval_truncation) -> list[str]:
        """Console lines: the SFT examples and how many were truncated, the source rows skipped."""
        warning = truncation_warning("SFT", self.truncation)
        head = f"data: SFT {len(self.train_rows)} examples, {truncated(self.truncation)}"
        return [head, *self.data.report.skipped_lines(), *([warning] if warning else [])]

    def log_data_report(self) -> None:
        """The step-0 row of a fresh SFT run: examples, skipped source rows, truncated examples."""
        self.logger.log(
            0,
            {
                "data/sft_examples": len(self.train_rows),
                "data/skipped_rows": self.data.report.skipped,
                "data/truncated_rows": self.truncation.truncated_rows,
            },
        )
