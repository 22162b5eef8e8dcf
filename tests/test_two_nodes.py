"""Two nodes simulated on this machine: two torchrun agents (``--nnodes 2``, one process each) meet at a rendezvous
on 127.0.0.1, as the agents of a real 2-node job meet at the first node. Each process is local rank 0 of its
node, so only the global rank may decide who writes; the run dir comes from the agreed start time, not from a
path given on the command line."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import FAST, FAULTS, REPO, TOY, compose
from trustregion.train import train

COMMON = [*FAST, *TOY, "ref_update=soft", "ref_update.alpha=0.5", "ref_update.tau=2", "trainer.num_threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent(node_rank: int, port: int, cwd, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    """One node's torchrun agent: one process, node ``node_rank`` of 2, master at 127.0.0.1:``port``."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        f"--node_rank={node_rank}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "trustregion.train",
        *overrides,
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


@pytest.fixture
def agents():
    """Started agents, each in its own process group, killed with their workers if the test ends early."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.slow
def test_two_nodes_share_one_run_dir_with_one_writer_and_train_as_one_process(tmp_path, agents):
    port = free_port()
    overrides = [*COMMON, "deepspeed=zero3", "trainer.batch_size=8", "trainer.save_every=2"]
    nodes = [agent(n, port, tmp_path, *overrides) for n in (0, 1)]
    agents.extend(nodes)
    outputs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n---\n".join(o[-2000:] for o in outputs)

    (run,) = (tmp_path / "outputs" / "runs").glob("*/*")  # both nodes chose the same dir from rank 0's start time
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["world_size"] == 2
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4]  # one writer: a second would repeat every row
    assert sorted(p.name for p in (run / "checkpoints" / "step_000004").glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
    assert (run / ".hydra" / "config.yaml").exists()

    one = tmp_path / "one"
    train(compose(*COMMON, "trainer.batch_size=16"), one)
    one_rows = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx(
        [r["loss"] for r in one_rows if "loss" in r], abs=1e-5
    )
    for which in ("policy", "reference"):
        a, b = load_file(str(one / which / "model.safetensors")), load_file(str(run / which / "model.safetensors"))
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0)


def test_a_sigterm_to_one_node_stops_both_ranks_at_the_same_step_with_one_whole_checkpoint(tmp_path, agents):
    # Slurm signals a job's tasks one by one; here only node 1's process gets SIGTERM. Both ranks must agree on
    # the step to stop at, else rank 0 would wait in the next step's collectives while rank 1 checkpoints.
    port = free_port()
    overrides = [*COMMON, FAULTS, "deepspeed=zero3", "trainer.batch_size=8", "trainer.max_steps=60"]
    slow = {"TRUSTREGION_FAULT": "slow:0.2"}  # steps outlast the signal's delivery
    nodes = [agent(n, port, tmp_path, *overrides, env=slow) for n in (0, 1)]
    agents.extend(nodes)
    deadline = time.time() + 240
    while time.time() < deadline:
        runs = list((tmp_path / "outputs" / "runs").glob("*/*/metrics.jsonl"))
        if runs and sum(1 for x in runs[0].read_text().splitlines() if '"loss"' in x) >= 3:
            break
        time.sleep(0.2)
    (worker,) = subprocess.run(["pgrep", "-P", str(nodes[1].pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(worker), signal.SIGTERM)
    outputs = [p.communicate(timeout=120)[0] for p in nodes]
    stops = [re.findall(r"error: signal 15 at step (\d+): checkpoint written", o) for o in outputs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, "\n---\n".join(o[-2000:] for o in outputs)
    step = int(stops[0][0])
    assert 3 <= step < 60
    (run,) = (tmp_path / "outputs" / "runs").glob("*/*")
    (checkpoint,) = (run / "checkpoints").iterdir()
    assert checkpoint.name == f"step_{step:06d}" and (checkpoint / "COMPLETE").exists()
    assert sorted(p.name for p in checkpoint.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
