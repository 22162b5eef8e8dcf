"""User-facing errors: each prints as one line naming the field (or file and row) and the fix."""

from __future__ import annotations

import errno
import os


class TrustRegionError(Exception):
    """An error in the user's input, reported as one line without a traceback."""


class ConfigError(TrustRegionError):
    """A config value out of range or inconsistent with another."""


class DataError(TrustRegionError):
    """A missing or unreadable data file, or a malformed row."""


class TrainingError(TrustRegionError):
    """Training cannot go on (a non-finite loss, say); what was written so far is kept."""


class StopRequested(Exception):
    """A stop signal arrived while work that checks between batches (an evaluation) was running: its partial
    results are dropped and the run checkpoints what is done. Control flow, not an error of the user's."""


# Faults of the disk, not of the program: one line naming the path, never a traceback.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
# What gloo and NCCL say when another process of the job is gone (killed, crashed, its node lost).
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "communicator was aborted",
             "remote process exited", "Socket Timeout")  # fmt: skip


def lost_peer(error: BaseException, run_dir: object = None) -> str | None:
    """The one line for a collective that failed because another rank of a multi-process job is gone, else None;
    the relaunch it advises resumes ``run_dir`` (the run's own dir)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not isinstance(error, RuntimeError):
        return None
    text = str(error)
    if not any(s in text for s in PEER_LOST):
        return None
    first = text.strip().splitlines()[0][:200]
    return (
        f"rank {os.environ.get('RANK', '?')}: another process of this job was lost mid-run ({first}); every complete "
        f"checkpoint is kept: relaunch the job with trainer.resume={run_dir or 'latest'}"
    )
