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
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from trustregion.console import error_line, say
from trustregion.errors import TrainingError

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
WARNINGS = (signal.SIGUSR1, signal.SIGUSR2)  # the time limit is near: checkpoint, then requeue
MAX_REQUEUES = 3  # self-requeues of a plain sbatch job (SLURM_RESTART_COUNT); submitit's own bound is its own
_displaced: dict[int, Any] = {}  # the handlers the loop's handler replaced (submitit's, under the launcher)
_decided = [0]  # the first stop signal this process received: it decides, later ones change nothing
_after_run = [False]  # whether a run of this process has ended (what a signal outside a run interrupts)


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


def exit_now(message: str) -> NoReturn:
    """End the process at once with ``error: <message>`` (stderr and the run's log file) and exit code 2, cleaning up
    nothing: where nothing is trained yet, like a ``kill -9``, which a run survives by design (an exception raised
    from a signal handler surfaces anywhere, and a library's ``except``, or a ``__del__``, may swallow it)."""
    error_line(message)
    os._exit(2)


def stop_at_once(signum: int, frame: Any) -> None:
    """The handler outside a run's own (imports, config, Hydra's set-up; after the run): the first signal ends the
    process with one line and exit code 2 (``exit_now``); later ones change nothing."""
    if _decided[0]:
        return
    _decided[0] = signum
    name = signal.Signals(signum).name
    if _after_run[0]:
        exit_now(f"signal {signum} ({name}) after the run ended: what it wrote stays as it is")
    exit_now(
        f"signal {signum} ({name}) while starting: nothing trained, nothing to checkpoint; rerun the command to start"
    )


def ignore_further_signals() -> None:
    """Once a stop is decided, later stop signals are ignored by the process itself (``SIG_IGN``): a Python handler
    would be reset to the default one, which kills, while the interpreter shuts down."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def handle_from_start(module: str) -> None:
    """Give stop signals ``stop_at_once`` from the first line of an entry point run as a command (``python -m``, a
    console script), before its heavy imports; not when ``module`` is merely imported (by tests, by another
    program), whose signals stay theirs."""
    command = module == "__main__" or Path(sys.argv[0]).name.startswith("trustregion-")
    if command and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, stop_at_once)


@contextlib.contextmanager
def preemption_signals(state):
    """While a run runs, SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 set ``state.preempted`` (``state``: the recipe's
    TrainState); the loop then checkpoints at the end of the step, or between evaluation batches, and stops. During
    setup (``state.in_setup``) nothing is trained yet: a signal ends a command's process at once (``exit_now``; a
    program that runs the recipe itself gets ``Preempted``). Later signals change nothing: the first decides, and the run still ends with its checkpoint and exit code 2 (after the run too, through
    ``stop_at_once`` where it was the handler before)."""

    def note(signum, frame) -> None:
        first = not _decided[0]
        _decided[0] = _decided[0] or signum
        if state.in_setup:
            if not first:
                return
            line = f"signal {signum} during setup: no step taken, nothing to checkpoint; rerun to go on"
            if command:
                exit_now(line)
            state.preempted = signum
            raise Preempted(line)  # a program that runs the recipe itself keeps its process
        state.preempted = state.preempted or signum  # the first signal decides (a SIGTERM may follow a warning)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    _decided[0] = 0
    previous = {s: signal.signal(s, note) for s in SIGNALS}
    command = previous[signal.SIGINT] is stop_at_once  # a command's process (``handle_from_start``; submitit's own
    # handlers for SIGTERM and SIGUSR2 may stand between)
    _displaced.clear()
    _displaced.update(previous)
    try:
        yield
    finally:  # a signal from here on, while the run unwinds or ends, is the process-wide handler's
        _after_run[0] = True
        for s, handler in previous.items():
            signal.signal(s, handler)
        if _decided[0] and command:  # a command that is stopping: no second stop
            ignore_further_signals()
        _displaced.clear()
