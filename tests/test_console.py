"""What a run says: the run dir's log file holds the console's lines; third-party chatter is quiet; notes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import FAST, TOY

HH = Path(__file__).parent / "fixtures" / "hh"


def cli_run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "trustregion.train", *FAST, *overrides, f"hydra.run.dir={tmp_path}"]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


def test_the_run_dirs_log_file_holds_what_the_console_showed(tmp_path):
    proc = cli_run(tmp_path, *TOY, "trainer.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "train.log").read_text()
    assert "[trustregion][INFO] - 64 train / 16 eval pairs, 2 steps" in log
    assert "one checkpoint ≈" in log and "trainer.keep_last=2 keeps at most 2" in log


def test_third_party_progress_bars_are_quiet_unless_verbose(tmp_path):
    quiet = cli_run(tmp_path / "quiet", *TOY, "trainer.max_steps=1")
    loud = cli_run(tmp_path / "loud", *TOY, "trainer.max_steps=1", "verbose=true")
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-2000:]
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
