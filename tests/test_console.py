"""What a run says: the run dir's log file holds the console's lines; third-party chatter is quiet; notes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FAST, TOY

HH = Path(__file__).parent / "fixtures" / "hh"


def cli_run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "trustregion.train", *FAST, *overrides, f"hydra.run.dir={tmp_path}"]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-step run with the default console settings and no terminal (stderr a pipe, as in CI): its dir and output."""
    run = tmp_path_factory.mktemp("plain")
    proc = cli_run(run, *TOY, "trainer.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run, proc


def test_the_run_dirs_log_file_holds_what_the_console_showed(plain):
    log = (plain[0] / "train.log").read_text()
    assert "[trustregion][INFO] - 64 train / 16 eval pairs, 2 steps" in log
    assert "one checkpoint ≈" in log and "trainer.keep_last=2 keeps at most 2" in log


def test_third_party_progress_bars_are_quiet_unless_verbose(plain, tmp_path):
    quiet = plain[1]
    loud = cli_run(tmp_path / "loud", *TOY, "trainer.max_steps=1", "verbose=true")
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "tokenizing" not in quiet.stderr + quiet.stdout and "Setting accelerator" not in quiet.stderr + quiet.stdout
    assert "tokenizing" in loud.stderr + loud.stdout


def test_a_note_says_when_generation_evaluation_is_skipped_and_why(tmp_path):
    data = [f"dataset.data_files={{train:{HH}/train.jsonl,test:{HH}/test.jsonl}}", "dataset.eval_samples=4"]
    proc = cli_run(
        tmp_path,
        "dataset=hh",
        "dataset.path=null",
        *data,
        "eval.generate=true",
        "trainer.max_steps=1",
        "trainer.batch_size=4",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "note: generation-based evaluation skipped: dataset=hh has no gold judge (held-out preference metrics "
        "still run); set eval.generate=false to say so"
    ) in (tmp_path / "train.log").read_text()


def test_progress_lines_give_step_loss_rate_and_time_left_then_where_everything_went(tmp_path):
    proc = cli_run(tmp_path, *TOY, "trainer.max_steps=3", "trainer.progress_every_s=0.001")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "train.log").read_text()
    assert re.search(r"step 1/3 \(33%\) · loss \d\.\d{4} · [\d,]+ tok/s · [\d.]+ s/step, \d+s left", log), log
    assert re.search(r"step 3/3 \(100%\) · loss", log)
    assert re.search(r"eval at step 3: eval/loss \d\.\d{4}, eval/rewards/accuracies", log)
    assert f"models in {tmp_path}/policy, {tmp_path}/reference; metrics in {tmp_path}/metrics.jsonl" in log


def test_without_a_terminal_a_run_prints_no_progress_lines_but_its_final_line(plain):
    log = (plain[0] / "train.log").read_text()
    assert "step 1/2" not in log and "eval at step" not in log
    assert re.search(r"done: step 2, loss \d\.\d{4} in \d+s; models in ", log)


def test_sft_says_what_it_kept_of_the_data_and_where_its_policy_went(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    sft_fast = [o for o in FAST[1:] if not o.startswith(("eval.", "trainer.eval_every"))]
    args = [*sft_fast, *TOY, "experiment=toy_sft", "trainer.max_steps=2", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "-m", "trustregion.sft", *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = proc.stdout + proc.stderr
    assert "data: SFT 64 examples, 0 truncated (0%)" in said and "data: train" not in said
    assert re.search(rf"done: step 2, sft/loss \d\.\d{{4}} in \d+s; models in {tmp_path}/policy;", said), said
