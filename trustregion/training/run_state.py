"""What a checkpoint holds of a run besides the engine's models and optimizer, and resuming from one.

``RunState`` gathers the loop's state (step, cached SFT log-probs, the final metrics), the batch stream, the
divergence guard, the metric window and the reference update: ``state_dict`` splits it into the state every rank
shares and each rank's own, ``merge_rank_states`` rebuilds a rank's own at another world size, ``resume`` loads the
first sound checkpoint of a list. ``identity`` is what a resume must match (``meta.json``); ``checkpoint_note`` says
what one checkpoint costs on disk. The format itself is ``trustregion.training.checkpoint``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trustregion.console import say
from trustregion.data.batches import BatchStream
from trustregion.engines.base import Engine
from trustregion.metrics import MetricBuffer
from trustregion.reference.update import ReferenceUpdate
from trustregion.training import checkpoint
from trustregion.training.guard import DivergenceGuard
from trustregion.training.state import TrainState


def identity(cfg: DictConfig, world_size: int, method: str, lora: bool) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint (``checkpoint.check_compatible`` ignores the model's
    execution-only settings)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if lora:  # the adapters' shape and the reference's kind (full fine-tuning checkpoints have no entry)
        p = cfg.peft
        model["peft"] = {k: str(p[k]) for k in ("rank", "alpha", "target_modules", "adapter_path", "reference")}
    return {
        "model": model,
        "method": method,
        "world_size": world_size,
        "deepspeed_stage": int(cfg.deepspeed.stage),
        "global_batch": int(cfg.trainer.batch_size) * world_size,
    }


@dataclass
class RunState:
    """The parts of a run a checkpoint restores beside the engine's state, and the identity it is saved under."""

    engine: Engine
    state: TrainState
    stream: BatchStream
    guard: DivergenceGuard
    buffer: MetricBuffer  # the metric window since the last log
    reference_update: ReferenceUpdate | None
    identity: dict[str, Any]  # meta.json: what a resume must match
    objective: Any = None  # an Objective whose state_dict() carries a running statistic (BCO's delta), or None

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state shared by every rank, this rank's own state) for ``checkpoint.save``."""
        shared = {
            "guard": self.guard.state_dict(),
            "stream": self.stream.state_dict(),
            "sft_train": self.state.sft_train,
            "sft_eval": self.state.sft_eval,
            "finished": self.state.finished,
            "last": self.state.last,  # the final metrics of a finished run, for its summary on a resume
            "evaluation": self.state.evaluation,  # what an update rule reads of the latest evaluation
            "eval_pending": self.state.eval_pending,  # this step's evaluation runs first on resume
        }
        if self.objective is not None and (carried := self.objective.state_dict()):
            shared["objective"] = carried  # alike on every rank
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
        self.state.evaluation = dict(shared.get("evaluation", {}))
        self.state.eval_pending = bool(shared.get("eval_pending", False))
        if self.objective is not None and "objective" in shared:
            self.objective.load_state_dict(shared["objective"])
        if self.reference_update is not None:
            self.reference_update.load_state_dict(mine["updater"])
        if "metrics" in mine:  # the metric window since the last log (checkpoints from before it had none)
            self.buffer.load_state_dict(mine["metrics"], self.engine.device)
            self.state.tokens = mine["tokens"]

    def resume(self, candidates: list[Path], cfg: DictConfig) -> bool:
        """Load the first sound checkpoint of ``candidates``; a damaged one falls back to the next with a warning (on
        several ranks, when every rank saw the damage alike). False when there is none to resume."""
        for i, path in enumerate(candidates):
            try:
                step, shared, mine = checkpoint.load(path, self.engine, self.identity, self.merge_rank_states, cfg)
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

    def save(
        self, run_dir: Path, cfg: DictConfig, after_engine: Callable[[Path], None], optimizer: bool = True
    ) -> None:
        """A checkpoint of the current step in ``run_dir`` (``checkpoint.save``: every rank takes part)."""
        shared, mine = self.state_dict()
        snapshot = checkpoint.Snapshot(self.state.step, shared, mine, self.identity)
        checkpoint.save(run_dir, self.engine, snapshot, cfg, after_engine=after_engine, optimizer=optimizer)


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def checkpoint_note(t: DictConfig, engine: Engine, reference: torch.nn.Module | None, lora: bool) -> str:
    """What one checkpoint will cost on disk (policy, reference and optimizer state), so keep_last is a choice;
    ``t``: the ``trainer`` settings."""
    weights = engine.policy_bytes()
    reference_bytes = 0
    if reference is not None:  # LoRA: the reference's state is its delta alone
        reference_bytes = sum(b.numel() * b.element_size() for b in reference.buffers()) if lora else weights
    size = weights + reference_bytes + 8 * engine.policy_numel(trainable=True)  # + Adam's two fp32 moments
    what = "policy, reference, optimizer" if reference is not None else "policy, optimizer"
    when = [f"every {t.save_every} steps"] if t.save_every else []
    when += ["at the end"] if t.save_final else []
    if not when:
        return f"no checkpoints (trainer.save_every=0, trainer.save_final=false); one ≈ {_bytes(size)} ({what})"
    return (
        f"one checkpoint ≈ {_bytes(size)} ({what}), written "
        f"{' and '.join(when)}; trainer.keep_last={t.keep_last} keeps at most {t.keep_last}"
    )
