"""Stopping cleanly when asked: SIGTERM (preemption), SIGUSR1 (Slurm's warning before the time limit,
``--signal=USR1@<seconds>``) or SIGINT (Ctrl-C) marks the run; the recipe checkpoints at the end of the step and
stops with one line."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading

from trustregion.errors import TrainingError

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(TrainingError):
    """The run was asked to stop (SIGTERM, SIGUSR1) and stopped after checkpointing its last step."""


def requeue_on_slurm() -> str:
    """Under Slurm, put this job back in the queue (``scontrol requeue``); what was done, for the stop line."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job or shutil.which("scontrol") is None:
        return ""
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True).returncode == 0
    return f" and Slurm job {job} requeued" if done else f" (scontrol requeue {job} failed)"


@contextlib.contextmanager
def preemption_signals(state):
    """While the loop runs, SIGTERM and SIGUSR1 set ``state.preempted`` (``state``: the recipe's TrainState);
    the loop then checkpoints at the end of the step and stops."""

    def note(signum, frame) -> None:
        state.preempted = signum

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {s: signal.signal(s, note) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
