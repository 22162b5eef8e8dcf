"""Stopping at any phase and honest records across restarts: a stop signal during an evaluation or before the
export checkpoints what is done and exits 2; restarts never leave duplicate rows in metrics.jsonl; a refused run
leaves the records of the run that holds the dir alone."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import FAST, FAULTS, REPO, TOY, cli, metrics, untimed

BASE = [*FAST, *TOY, "trainer.max_steps=4", "ref_update.tau=1", "ref_update.alpha=0.3"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run the stopped ones are compared with."""
    run = tmp_path_factory.mktemp("full")
    out = cli(*BASE, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    return run


def test_a_signal_pending_at_the_final_evaluation_stops_it_and_the_resume_evaluates_once(full, tmp_path):
    stopped = cli(*BASE, FAULTS, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "term:4"})
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        "error: signal 15 at step 4, during the held-out evaluation (not logged): checkpoint written, run stopped; "
        "continue with trainer.resume=latest"
    )
    assert not (tmp_path / "policy").exists()
    resumed = cli(*BASE, f"hydra.run.dir={tmp_path}", "trainer.resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert untimed(metrics(tmp_path)) == untimed(metrics(full))
    assert (tmp_path / "policy" / "model.safetensors").exists()


def test_two_signals_after_the_final_evaluation_keep_its_checkpoint_and_exit_2_then_the_resume_only_exports(
    full, tmp_path
):
    stopped = cli(*BASE, FAULTS, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "term-eval:4"})
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    assert "signal 15 at step 4, before the export (trainer.resume=latest exports): checkpoint written" in (
        stopped.stderr
    )
    assert not (tmp_path / "policy").exists()
    resumed = cli(*BASE, f"hydra.run.dir={tmp_path}", "trainer.resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "the run finished at step 4 (final evaluation logged): exporting again" in resumed.stderr + resumed.stdout
    assert untimed(metrics(tmp_path)) == untimed(metrics(full))  # no second final row
    assert (tmp_path / "policy" / "model.safetensors").exists()


def test_resuming_a_finished_run_appends_no_rows(full, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full, run)
    before = (run / "metrics.jsonl").read_text()
    resumed = cli(*BASE, f"hydra.run.dir={run}", "trainer.resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / "metrics.jsonl").read_text() == before


def test_a_restart_before_the_first_checkpoint_sets_the_first_attempts_rows_aside(full, tmp_path):
    killed = cli(*BASE, FAULTS, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "step:2"})
    assert killed.returncode == -9
    first_attempt = (tmp_path / "metrics.jsonl").read_text()
    assert first_attempt.count('"step": 0') >= 1
    restarted = cli(*BASE, f"hydra.run.dir={tmp_path}", "trainer.resume=latest")
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert untimed(metrics(tmp_path)) == untimed(metrics(full))
    assert (tmp_path / "metrics.superseded.jsonl").read_text() == first_attempt


def test_a_run_refused_for_a_dir_in_use_leaves_that_runs_records_alone(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "TRUSTREGION_FAULT": "slow:2"}
    holder = subprocess.Popen(
        [sys.executable, "-m", "trustregion.train", *BASE, FAULTS, "trainer.max_steps=40", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        records = tmp_path / ".hydra" / "overrides.yaml"
        deadline = time.monotonic() + 120
        while not records.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert records.exists(), "the first run never wrote its records"
        before = {p.name: p.read_text() for p in (tmp_path / ".hydra").iterdir()}
        refused = cli(*BASE, "method.beta=0.9", f"hydra.run.dir={tmp_path}")
        assert refused.returncode == 2
        assert "is in use by pid" in refused.stderr.strip().splitlines()[-1]
        assert {p.name: p.read_text() for p in (tmp_path / ".hydra").iterdir()} == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
