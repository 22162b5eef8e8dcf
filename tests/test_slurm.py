"""The Slurm path end to end on a real one-node cluster (``make test-slurm`` brings it up with
scripts/slurm/cluster.sh): sweeps through sbatch, a 2-task ZeRO-3 job, requeue, time limit and scancel.

Skipped, with the reason, where no cluster answers. Each job is the tiny model for a few hundred steps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import FAST, FAULTS, REPO, TOY, compose, untimed
from trustregion.train import train

pytestmark = pytest.mark.slurm

# FAST with wandb (offline): the Slurm path must carry the wandb run across requeues.
SMALL = [o for o in FAST if o != "logger=none"] + TOY + ["trainer.num_threads=1"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """The one-node cluster answers and its node takes jobs; else every test here is skipped, saying why."""
    if shutil.which("sinfo") is None:
        pytest.skip("no Slurm here (sinfo not found): run `make test-slurm`, which starts scripts/slurm/cluster.sh")
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True)
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        reason = out.stderr.strip() or f"node states {states}"
        pytest.skip(f"Slurm does not answer or has no usable node ({reason}): run scripts/slurm/cluster.sh up")


def sweep(sweep_dir: Path, *overrides: str, background: bool = False, slow: float = 0.0):
    """``trustregion.train --multirun hydra/launcher=slurm_cpu`` with these overrides, as a user runs it;
    ``slow``: seconds each step sleeps (TRUSTREGION_FAULT=slow:S), so steps outlast a signal's timing."""
    cmd = [
        sys.executable,
        "-m",
        "trustregion.train",
        "--multirun",
        "hydra/launcher=slurm_cpu",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    if slow:
        env["TRUSTREGION_FAULT"] = f"slow:{slow}"  # sbatch exports the environment to the job
        cmd.insert(-1, FAULTS)
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def untimed_rows(run_dir: Path) -> list[dict]:
    return untimed(rows(run_dir))


def weights(run_dir: Path, which: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / which / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    return all(torch.equal(weights(a, w)[k], weights(b, w)[k]) for w in ("policy", "reference") for k in weights(a, w))


def wandb_ids(run_dir: Path) -> set[str]:
    """The run ids of the offline wandb runs in a run dir (one dir per start)."""
    return {p.name.split("-", 3)[3] for p in (run_dir / "wandb").glob("offline-run-*")}  # offline-run-<time>-<id>


def job_of(sweep_dir: Path, timeout: float = 120) -> str:
    """The Slurm job id of a one-point sweep, once submitit has written it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.is_dir() and p.name.isdigit()]
        if jobs:
            return jobs[0]
        time.sleep(0.5)
    raise AssertionError(f"no job submitted under {sweep_dir}")


def job_field(job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    return re.search(rf"\b{field}=(\S+)", out).group(1)


def wait_for_step(run_dir: Path, step: int, timeout: float = 180) -> None:
    """Until metrics.jsonl has a row at ``step`` or later (the job is training)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and any(r.get("step", 0) >= step for r in rows(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} did not reach step {step} in {timeout} s")


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_alpha_sweep_through_sbatch_gives_every_point_its_run_dir_metrics_and_wandb_run(tmp_path):
    out = sweep(tmp_path, *SMALL, "ref_update=soft", "ref_update.alpha=0.1,0.5,0.9")
    assert out.returncode == 0, out.stderr[-3000:]
    for job, alpha in enumerate((0.1, 0.5, 0.9)):
        run = tmp_path / f"{job}_ref_update.alpha={alpha}"  # a job dir names what varies
        assert rows(run)[-1]["step"] == 4
        assert f"ref_update.alpha={alpha}" in (run / ".hydra" / "overrides.yaml").read_text()
        (wandb_id,) = wandb_ids(run)
        assert (next((run / "wandb").glob("offline-run-*")) / f"run-{wandb_id}.wandb").stat().st_size > 0
    # quiet: one line about sacct for the whole sweep, no compiler probes in the run logs
    log = out.stdout + out.stderr
    assert log.count("sacct") == 1, log[-3000:]
    assert not any("-laio" in (run / "train.log").read_text() for run in tmp_path.glob("?_ref_update.alpha=*"))


@pytest.mark.slow
def test_a_two_task_zero3_job_ends_where_one_process_ends(tmp_path):
    common = [*SMALL, "logger=none", "ref_update=soft", "ref_update.alpha=0.5", "ref_update.tau=2"]
    out = sweep(
        tmp_path / "sweep", *common, "hydra.launcher.tasks_per_node=2", "deepspeed=zero3", "trainer.batch_size=8"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    one = tmp_path / "one"
    train(compose(*common, "trainer.batch_size=16"), one)
    two = tmp_path / "sweep" / "0"
    assert rows(two)[0]["world_size"] == 2
    losses = [[r["loss"] for r in rows(d) if "loss" in r] for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    for which in ("policy", "reference"):
        a, b = weights(one, which), weights(two, which)
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0)


LONG = [*SMALL, "ref_update=soft", "trainer.max_steps=200", "trainer.log_every=10", "trainer.resume=latest"]


def test_scontrol_requeue_checkpoints_on_the_signal_and_the_requeued_job_ends_as_if_uninterrupted(tmp_path):
    proc = sweep(tmp_path / "sweep", *LONG, background=True, slow=0.02)  # >= 4 s of steps after step 20
    run = tmp_path / "sweep" / "0"
    job = job_of(tmp_path / "sweep")
    wait_for_step(run, 20)
    subprocess.run(["scontrol", "requeue", job], check=True)
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    err = (tmp_path / "sweep" / ".submitit" / job / f"{job}_0_log.err").read_text()
    stop = re.search(r"error: signal 15 at step (\d+): checkpoint written, run stopped; job \d+ does not requeue", err)
    assert stop, err[-3000:]  # checkpointed on Slurm's SIGTERM; Slurm, not the job, requeued it
    assert job_field(job, "Restarts") == "1"
    full = tmp_path / "full"
    train(compose(*LONG, "logger=none"), full)
    assert untimed_rows(run) == untimed_rows(full)
    assert same_weights(run, full)
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2  # one per start
    assert len(wandb_ids(run)) == 1  # the requeued start continued the same wandb run


WARNED = r"signal 12 at step (\d+): checkpoint written, run stopped; the time limit is near: submitit requeues"


@pytest.mark.slow
def test_time_limit_warning_checkpoints_requeues_the_job_and_it_finishes(tmp_path):
    # A 1-minute job warned 10 s ahead: Slurm checks time limits every 30 s, so the warning comes 20-50 s into the
    # job, after at most ~380 of the 450 steps (0.1 s each). In the loop, the warning checkpoints the step and hands
    # over to submitit, which requeues the job; while the job is still starting (a loaded machine) it is submitit's
    # alone, which requeues with nothing to save. Once a start has checkpointed on the warning, the test gives the
    # job 5 minutes, so its next start surely finishes; the bound on requeues is the next test's.
    limit = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10", "hydra.launcher.max_num_timeout=3"]
    proc = sweep(tmp_path, *LONG, "trainer.max_steps=450", "trainer.log_every=50", *limit, background=True, slow=0.1)
    job, log = job_of(tmp_path), tmp_path / "0" / "train.log"
    deadline = time.time() + 400
    while not (log.exists() and re.search(WARNED, log.read_text())) and proc.poll() is None:
        assert time.time() < deadline, "no start of the job checkpointed on the time-limit warning"
        time.sleep(1)
    while job_field(job, "JobState") != "PENDING" and proc.poll() is None:
        assert time.time() < deadline, "the job did not requeue itself after checkpointing"
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=5"], check=True)
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    text = log.read_text()
    stop = re.search(WARNED, text)
    assert stop and "Requeued job" in text, text[-3000:]
    assert checkpoints(tmp_path / "0") == [f"step_{int(stop.group(1)):06d}", "step_000450"]
    steps = [r["step"] for r in rows(tmp_path / "0") if "loss" in r]
    assert steps == list(range(50, 451, 50))  # the next start continued from the checkpoint
    assert 1 <= int(job_field(job, "Restarts")) <= 3


@pytest.mark.slow
def test_time_limit_requeues_are_bounded_by_max_num_timeout(tmp_path):
    limit = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10", "hydra.launcher.max_num_timeout=0"]
    out = sweep(tmp_path, *LONG, "trainer.max_steps=100000", "trainer.log_every=50", *limit, slow=0.1)
    assert out.returncode != 0
    assert "timed-out too many times" in out.stdout + out.stderr
    job = job_of(tmp_path)
    assert job_field(job, "Restarts") == "0"
    stop = re.search(r"signal 12 at step (\d+): checkpoint written", (tmp_path / "0" / "train.log").read_text())
    if stop:  # the warning reached the loop (not the job's start-up): the step was saved before the job ended
        assert checkpoints(tmp_path / "0") == [f"step_{int(stop.group(1)):06d}"]


def test_scancel_stops_the_job_without_requeue_and_leaves_its_last_checkpoint_whole(tmp_path):
    proc = sweep(tmp_path, *LONG, "trainer.save_every=10", background=True, slow=0.02)
    run = tmp_path / "0"
    job = job_of(tmp_path)
    wait_for_step(run, 20)
    subprocess.run(["scancel", job], check=True)
    code, out = finish(proc)
    assert code != 0 and "state: CANCELLED" in out, out[-3000:]  # the sweep ends, naming the job's state
    assert job_field(job, "JobState") == "CANCELLED" and job_field(job, "Restarts") == "0"
    last = checkpoints(run)[-1]
    assert not last.startswith(".tmp") and (run / "checkpoints" / last / "COMPLETE").exists()
    assert json.loads((run / "checkpoints" / last / "meta.json").read_text())["step"] == int(last.split("_")[1])
    train(compose(*LONG, "logger=none", "trainer.save_every=10"), run)  # the user's next step: resume from it
    assert rows(run)[-1]["step"] == 200
