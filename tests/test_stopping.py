"""Stopping at any phase and honest records across restarts: a stop signal while starting, during setup, an
evaluation or the export ends with one line and exit 2, having checkpointed what is done, and an evaluation it
interrupted runs on resume; restarts never leave duplicate rows in metrics.jsonl or eval_samples.jsonl; a refused
run leaves the records of the run that holds the dir, or of the run it would continue, alone."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FAST, FAULTS, REPO, TOY, cli, metrics, untimed

BASE = [*FAST, *TOY, "trainer.max_steps=4", "ref_update.tau=1", "ref_update.alpha=0.3"]


def python() -> str:
    """The interpreter as the stop line names it: relative to the repo root, where the tests run the CLI."""
    return os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable


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
        f"continue with {python()} -m trustregion.train trainer.resume={tmp_path}"
    )
    assert not (tmp_path / "policy").exists()
    resumed = cli(f"trainer.resume={tmp_path}")  # the command the stop line prints
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert untimed(metrics(tmp_path)) == untimed(metrics(full))
    assert (tmp_path / "policy" / "model.safetensors").exists()


def test_two_signals_after_the_final_evaluation_keep_its_checkpoint_and_exit_2_then_the_resume_only_exports(
    full, tmp_path
):
    stopped = cli(*BASE, FAULTS, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "term-eval:4"})
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    assert "signal 15 at step 4, before the export (the resume only exports): checkpoint written" in stopped.stderr
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


EVALS = [*BASE, "trainer.eval_every=2", "trainer.save_every=0"]


@pytest.fixture(scope="module")
def full_with_evals(tmp_path_factory):
    """The uninterrupted run with an evaluation at step 2 (and the final one at 4)."""
    run = tmp_path_factory.mktemp("full-evals")
    out = cli(*EVALS, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    return run


def test_a_stop_at_a_step_that_ends_at_an_evaluation_point_runs_that_evaluation_on_resume(full_with_evals, tmp_path):
    stopped = cli(*EVALS, FAULTS, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "term:2"})
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    assert "signal 15 at step 2: checkpoint written" in stopped.stderr.strip().splitlines()[-1]
    resumed = cli(f"trainer.resume={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert untimed(metrics(tmp_path)) == untimed(metrics(full_with_evals))


def test_a_signal_during_an_evaluation_with_no_batch_left_stops_after_it_without_another_step(
    full_with_evals, tmp_path
):
    stopped = cli(*EVALS, FAULTS, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "term-eval:2"})
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith("error: signal 15 at step 2, after its evaluation: checkpoint written"), line
    resumed = cli(f"trainer.resume={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert untimed(metrics(tmp_path)) == untimed(metrics(full_with_evals))


def test_a_signal_during_the_export_stops_with_one_line_and_the_resume_exports(full, tmp_path):
    stopped = cli(*BASE, FAULTS, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "term-export"})
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith("error: signal 15 at step 4, during the export: run stopped; continue with"), line
    resumed = cli(f"trainer.resume={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert untimed(metrics(tmp_path)) == untimed(metrics(full))
    assert (tmp_path / "policy" / "model.safetensors").exists()


def start(*args: str) -> subprocess.Popen:
    """A training run in the background, its console piped."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "trustregion.train", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def caught_mask(pid: int) -> str:
    """The signals process ``pid`` has handlers for (``SigCgt`` of /proc/<pid>/status, hex)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_the_first_instant_ends_with_one_line_and_exit_2(sig, tmp_path):
    run = start(*BASE, f"hydra.run.dir={tmp_path}")
    handles_sigterm = 1 << (signal.SIGTERM - 1)
    deadline = time.monotonic() + 60
    while not int(caught_mask(run.pid), 16) & handles_sigterm and time.monotonic() < deadline:
        time.sleep(0.005)  # the command's first line installs its handlers; torch is imported for seconds after
    run.send_signal(sig)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2, err[-2000:]
    assert err.strip().splitlines() == [
        f"error: signal {int(sig)} ({sig.name}) while starting: nothing trained, nothing to checkpoint; rerun the "
        "command to start"
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_second_signal_during_setup_changes_nothing(sig, tmp_path):
    run = start(*BASE, f"hydra.run.dir={tmp_path}")
    for line in run.stdout:  # setup has begun: the data is read
        if "data: train" in line:
            break
    run.send_signal(sig)
    time.sleep(0.05)
    run.send_signal(sig)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: signal {int(sig)}"), err[-2000:]


def test_a_refused_resume_leaves_the_records_of_the_run_it_would_continue(full, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full, run)
    before = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
    refused = cli(*BASE, "trainer.lr=1e-3", "trainer.max_steps=6", f"hydra.run.dir={run}", "trainer.resume=latest")
    assert refused.returncode == 2
    assert "trainer.lr: 0.0003 -> 0.001" in refused.stderr.strip().splitlines()[-1]
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == before


def test_a_fresh_run_in_a_dir_with_another_runs_checkpoints_is_refused_and_leaves_them(full, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full, run)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    refused = cli(*BASE, "trainer.seed=7", f"hydra.run.dir={run}")
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: the run dir {run} holds checkpoints of a run (step_000004): continue it with")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == kept


def test_a_restart_leaves_no_duplicate_rows_in_eval_samples_jsonl(tmp_path):
    gen = ["eval.generate=true", "eval.prompts=2", "eval.samples_per_prompt=1", "eval.max_new_tokens=4"]
    args = [*BASE, *gen, "trainer.eval_every=1", "trainer.save_every=2", "trainer.max_steps=5", FAULTS]
    killed = cli(*args, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "step:4"})  # step 3's rows are logged
    assert killed.returncode == -9
    resumed = cli(f"trainer.resume={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s for s in range(6) for _ in range(2)]


def test_a_signal_during_a_multi_batch_generation_evaluation_runs_it_again_on_resume(fast_cfg, tmp_path, monkeypatch):
    from trustregion.errors import TrainingError
    from trustregion.evaluation import generation
    from trustregion.train import train

    gen = ["eval.generate=true", "eval.prompts=4", "eval.samples_per_prompt=1", "eval.batch_size=2"]
    args = [*gen, "eval.max_new_tokens=4", "trainer.eval_every=2", "trainer.eval_at_start=false", "trainer.max_steps=4"]
    train(fast_cfg(*args), tmp_path / "full")
    sample, calls = generation.sample, []

    def interrupted(*a, **k):  # a stop signal while the first batch of step 2's samples is drawn
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return sample(*a, **k)

    monkeypatch.setattr(generation, "sample", interrupted)
    with pytest.raises(TrainingError, match="at step 2, during the generation evaluation"):
        train(fast_cfg(*args), tmp_path / "stopped")
    monkeypatch.setattr(generation, "sample", sample)
    train(fast_cfg(*args, "trainer.resume=latest"), tmp_path / "stopped")
    assert untimed(metrics(tmp_path / "stopped")) == untimed(metrics(tmp_path / "full"))
    assert Path(tmp_path / "stopped" / "policy").is_dir()
