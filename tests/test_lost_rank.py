"""A rank lost under a bare multi-process launch (srun-style: no torchrun agent to end the others): the survivor
stops with one line and exit code 2, and the checkpoints written before stay whole."""

import os
import socket
import subprocess
import sys

from tests.helpers import FAST, FAULTS, REPO, TOY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_survivor_of_a_lost_rank_says_so_in_one_line_and_keeps_the_checkpoints(tmp_path):
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
            "TRUSTREGION_FAULT": "step:3@rank1",
        }
        cmd = [sys.executable, "-m", "trustregion.train", *args, f"hydra.run.dir={tmp_path}"]
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    survivor, lost = (p.communicate(timeout=300) for p in procs)
    assert procs[1].returncode == -9
    assert procs[0].returncode == 2, survivor[1][-3000:]
    last = survivor[1].strip().splitlines()[-1]
    assert last.startswith("error: rank 0: another process of this job was lost mid-run ("), survivor[1][-3000:]
    assert last.endswith("every complete checkpoint is kept: relaunch the job with trainer.resume=latest")
    assert (tmp_path / "checkpoints" / "step_000002" / "COMPLETE").exists()
