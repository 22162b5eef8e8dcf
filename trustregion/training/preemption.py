"""Stopping cleanly when a cluster asks: the loop checkpoints at the end of the step and stops.

SIGTERM means Slurm or a user is ending the job (preemption, ``scontrol requeue``, ``scancel``, the hard time
limit); the job cannot tell these apart (``scontrol show job`` reads COMPLETING in every case), so it never
requeues itself on SIGTERM: Slurm requeues what it preempts or is told to requeue, and a cancelled job stays
cancelled. SIGINT (Ctrl-C) stops like SIGTERM. SIGUSR1 (``sbatch --signal=USR1@<s>``) and SIGUSR2 (submitit's ``--signal=USR2@<signal_delay_s>``)
warn of the job's own time limit: after the checkpoint the job requeues itself, under submitit through
submitit's handler (bounded by ``max_num_timeout``), else with ``scontrol requeue`` (bounded by MAX_REQUEUES).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from typing import Any

from trustregion.console import say
from trustregion.errors import TrainingError

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
WARNINGS = (signal.SIGUSR1, signal.SIGUSR2)  # the time limit is near: checkpoint, then requeue
MAX_REQUEUES = 3  # self-requeues of a plain sbatch job (SLURM_RESTART_COUNT); submitit's own bound is its own
_displaced: dict[int, Any] = {}  # the handlers the loop's handler replaced (submitit's, under the launcher)


class Preempted(TrainingError):
    """The run was asked to stop (SIGTERM, SIGUSR1, SIGUSR2) and stopped after checkpointing its last step."""


def _slurm_job() -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or ""
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return job


def requeue_on_slurm(signum: int, stopped: str) -> str:
    """After the checkpoint for ``signum``: requeue the job when its time limit is near; what was done, for the
    stop line ``stopped``. Under submitit this hands over to submitit's handler, which requeues and exits (or,
    past ``max_num_timeout``, ends the job with an error)."""
    job = _slurm_job()
    if not job:
        return ""
    if signum not in WARNINGS:
        return f"; job {job} does not requeue itself on SIGTERM (Slurm requeues a preempted job, not a cancelled one)"
    handler = _displaced.get(signum)
    if callable(handler):
        say(f"{stopped}; the time limit is near: submitit requeues job {job} unless it timed out max_num_timeout times")
        handler(signum, None)  # submitit: requeue with its countdown, then sys.exit
        return ""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if restarts >= MAX_REQUEUES:
        return f"; Slurm job {job} not requeued: it has been restarted {restarts} times (at most {MAX_REQUEUES})"
    if shutil.which("scontrol") is None:
        return f"; Slurm job {job} not requeued: scontrol not found"
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True).returncode == 0
    return f"; Slurm job {job} requeued" if done else f"; scontrol requeue {job} failed"


def agreed_signal(state, engine) -> int:
    """The signal every rank stops for at this step, 0 for none (``state.preempted`` is set to it). Slurm signals
    the ranks of a job one by one, so they can notice it at different steps, and a rank that stopped alone would
    leave the others waiting in the next step's collectives (the checkpoint is collective too). Across ranks one
    all-reduce per step, so every rank sees the same answer; a SIGTERM anywhere wins (the job is being ended)."""
    if engine.world_size == 1:
        return state.preempted
    import torch

    order = (signal.SIGTERM, signal.SIGUSR2, signal.SIGUSR1)
    seen = engine.reduce_sum(torch.tensor([float(state.preempted == s) for s in order], device=engine.device))
    state.preempted = next((int(s) for s, n in zip(order, seen.tolist()) if n > 0), 0)
    return state.preempted


@contextlib.contextmanager
def preemption_signals(state):
    """While a run runs, SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 set ``state.preempted`` (``state``: the recipe's
    TrainState); the loop then checkpoints at the end of the step, or between evaluation batches, and stops. During
    setup (``state.in_setup``) nothing is trained yet: a signal stops the run at once. Later signals change
    nothing: the first decides, and the run still ends with its checkpoint and exit code 2."""

    def note(signum, frame) -> None:
        if state.in_setup and not state.preempted:
            state.preempted = signum
            raise Preempted(f"signal {signum} during setup: no step taken, nothing new to checkpoint; rerun to go on")
        state.preempted = state.preempted or signum  # the first signal decides (a SIGTERM may follow a warning)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {s: signal.signal(s, note) for s in SIGNALS}
    _displaced.clear()
    _displaced.update(previous)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _displaced.clear()
