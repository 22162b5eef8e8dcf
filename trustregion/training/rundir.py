"""One writer per run dir: rank 0 of a run holds an exclusive lock on ``<run dir>/.lock`` while it runs, so a
second run pointed at the same dir stops with one line instead of interleaving checkpoints and metrics.

The lock is re-entrant within a process: the command line takes it before Hydra's records are written, and the
recipe, which takes it too (for runs started from Python), shares it."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import IO, Any

from trustregion.errors import ConfigError

_held: dict[Path, tuple[IO[str], int]] = {}  # run dir -> (lock file, holders in this process)


class RunDirLock:
    """One holder's share of a run dir's lock; the lock is released when the last holder closes."""

    def __init__(self, run_dir: Path) -> None:
        self.key, self.open = run_dir.resolve(), True

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        handle, holders = _held.pop(self.key)
        if holders > 1:
            _held[self.key] = (handle, holders - 1)
        else:
            handle.close()


def holds_only_a_start(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds nothing but what starting a run writes before it runs (the lock, Hydra's log and
    records): a start that was refused leaves no run there, so the dir is no record of one."""
    return run_dir.is_dir() and all(p.name in (".lock", ".hydra") or p.suffix == ".log" for p in run_dir.iterdir())


def lock_run_dir(run_dir: Path) -> RunDirLock:
    """Take the run dir's lock (released when every returned lock is closed, or the process ends)."""
    key = run_dir.resolve()
    if key in _held:
        handle, holders = _held[key]
        _held[key] = (handle, holders + 1)
        return RunDirLock(run_dir)
    handle = open(run_dir / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"the run dir {run_dir} is in use by {holder}; wait for it to end, or set hydra.run.dir to another dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    _held[key] = (handle, 1)
    return RunDirLock(run_dir)


def _shown(path: str | Path) -> str:
    """``path`` as the user would type it from here: relative when it is under the working directory."""
    absolute = Path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def resume_command(run_dir: Path, module: str) -> str:
    """The exact command that continues the run in ``run_dir`` (its saved overrides, in the same dir): for one
    process ``<python> -m <module> trainer.resume=<run dir>``; for a multi-process job, its own launch command (torchrun,
    srun, a Slurm sweep) with that override."""
    import shlex

    resume = f"trainer.resume={shlex.quote(_shown(run_dir))}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "SUBMITIT_FOLDER" in os.environ:
        return f"the job's launch command and {resume}"
    return f"{shlex.quote(_shown(sys.executable))} -m {module} {resume}"


def write_hydra_records(run_dir: Path, cfg: Any) -> None:
    """Hydra's records of this job in ``<run dir>/.hydra`` (config.yaml, hydra.yaml, overrides.yaml): what the run
    was started with, which ``trainer.resume=<run dir>`` reads back. Nothing outside a Hydra job (a run from
    Python)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    records = run_dir / ".hydra"
    records.mkdir(exist_ok=True)
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(cfg, records / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), records / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, records / "overrides.yaml")
