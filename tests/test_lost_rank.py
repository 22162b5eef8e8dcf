"""A rank lost under a bare multi-process launch (srun-style: no torchrun agent to end the others): the survivor
stops with one line and exit code 2, and the checkpoints written before stay whole."""

import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import FAST, FAULTS, REPO, TOY
from trustregion.training.checkpoint import complete_checkpoints


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, fault: str) -> tuple[list[subprocess.Popen], list[tuple[str, str]]]:
    """Two bare ZeRO-3 processes (no agent), rank 1 killed by ``fault``; their outputs."""
    args = [*FAST, *TOY, FAULTS, "deepspeed=zero3", "trainer.max_steps=6", "trainer.save_every=2"]
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "TRUSTREGION_FAULT": fault,
        }
        cmd = [sys.executable, "-m", "trustregion.train", *args, f"hydra.run.dir={tmp_path}"]
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return procs, [p.communicate(timeout=300) for p in procs]


def test_the_survivor_of_a_lost_rank_says_so_in_one_line_and_keeps_the_checkpoints(tmp_path):
    procs, (survivor, _) = launch(tmp_path, "step:3@rank1")
    assert procs[1].returncode == -9
    assert procs[0].returncode == 2, survivor[1][-3000:]
    last = survivor[1].strip().splitlines()[-1]
    assert last.startswith("error: rank 0: another process of this job was lost mid-run ("), survivor[1][-3000:]
    assert last.endswith(f"every complete checkpoint is kept: relaunch the job with trainer.resume={tmp_path}")
    assert (tmp_path / "checkpoints" / "step_000002" / "COMPLETE").exists()


@pytest.mark.slow
def test_a_rank_lost_while_a_checkpoint_is_written_is_named_as_such_not_as_a_full_disk(tmp_path):
    procs, (survivor, _) = launch(tmp_path, "save:4@rank1")
    assert procs[1].returncode == -9
    assert procs[0].returncode == 2, survivor[1][-3000:]
    last = survivor[1].strip().splitlines()[-1]
    assert last.startswith("error: rank 0: another process of this job was lost while checkpoint step_000004 was"), last
    assert "free space" not in last
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_000002"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*")), "the partial checkpoint is removed"
