"""One writer per run dir: rank 0 of a run holds an exclusive lock on ``<run dir>/.lock`` while it runs, so a
second run pointed at the same dir stops with one line instead of interleaving checkpoints and metrics."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from trustregion.errors import ConfigError


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Take the run dir's lock (released when the returned file is closed or the process ends)."""
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
    return handle
