"""Resume from the command line as docs/guides/reliability.md shows it: the stop line prints the exact command that
continues the run, and ``trainer.resume=<run dir>`` continues *in* that dir with the overrides it was started with
(display settings may change); ``trainer.resume=latest`` with no run dir to look in is one line saying how to point at
the run."""

from __future__ import annotations

import shlex
import subprocess

import pytest
import yaml

from tests.helpers import FAST, FAULTS, REPO, TOY, cli, metrics, untimed

BASE = [*FAST, *TOY, "trainer.max_steps=4", "trainer.eval_every=2"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("full")
    out = cli(*BASE, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    return run


@pytest.fixture
def stopped(tmp_path):
    """A run stopped by SIGTERM after step 2, and its stop line."""
    out = cli(*BASE, FAULTS, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "term:2"})
    assert out.returncode == 2, out.stderr[-2000:]
    return tmp_path, out.stderr.strip().splitlines()[-1]


def test_the_command_the_stop_line_prints_continues_the_run_in_its_own_dir(full, stopped):
    run, line = stopped
    command = line.split("; continue with ", 1)[1]
    assert command.endswith(f" -m trustregion.train trainer.resume={run}"), line
    resumed = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {run}/checkpoints/step_000002 at step 2" in resumed.stdout + resumed.stderr
    assert untimed(metrics(run)) == untimed(metrics(full))  # one run's rows, in one dir
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert overrides[: len(BASE)] == BASE and overrides[-1] == "trainer.resume=latest"  # the saved ones, continued


def test_the_stop_line_is_in_train_log_too(stopped):
    run, line = stopped
    assert line in (run / "train.log").read_text()


def test_a_resume_of_a_run_dir_may_change_a_display_setting(full, stopped):
    run, _ = stopped
    resumed = cli(f"trainer.resume={run}", "trainer.progress_every_s=5")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "note: resuming step_000002 with trainer.progress_every_s: None -> 5.0" in resumed.stdout + resumed.stderr
    assert untimed(metrics(run)) == untimed(metrics(full))


@pytest.mark.slow
def test_a_resume_of_one_of_its_checkpoints_continues_in_the_run_dir_too(full, stopped):
    run, _ = stopped
    resumed = cli(f"trainer.resume={run}/checkpoints/step_000002")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert untimed(metrics(run)) == untimed(metrics(full))


def test_resume_latest_without_a_run_dir_is_one_line_saying_how_to_point_at_the_run():
    out = cli(*BASE, "trainer.resume=latest")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: trainer.resume=latest looks for checkpoints in this run's own dir, and without hydra.run.dir every run "
        "starts in a new one, which has none: continue a run with trainer.resume=<its run dir> (the stop line prints "
        "the command), or set hydra.run.dir=<its run dir>"
    ]


def test_resume_latest_in_a_given_dir_with_nothing_to_resume_says_so_and_starts(tmp_path):
    out = cli(*BASE, "trainer.max_steps=1", f"hydra.run.dir={tmp_path}", "trainer.resume=latest")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"note: trainer.resume=latest: {tmp_path} has no checkpoint yet; the run starts at step 0" in out.stdout
