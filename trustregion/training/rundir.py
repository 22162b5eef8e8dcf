"""One writer per run dir: rank 0 of a run holds an exclusive lock on ``<run dir>/.lock`` while it runs, so a
second run pointed at the same dir stops with one line instead of interleaving checkpoints and metrics.

The lock is re-entrant within a process: the command line takes it before Hydra's records are written, and the
recipe, which takes it too (for runs started from Python), shares it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

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
