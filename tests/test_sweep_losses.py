"""`make sweep-losses` in its quick mode: a few losses, frozen against a moving reference over two seeds, the report's
paired verdicts, and a cut study that continues without running a finished run again."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # about a minute: an SFT model and 8 short runs, twice through the script

QUICK = {"LOSSES": "hinge bco_pair", "SEEDS": "1,2", "ALPHAS": "0.1", "STEPS": "6", "EVAL_EVERY": "3", "PROMPTS": "8",
         "SAMPLES": "1", "SFT_STEPS": "10", "JOBS": "2"}  # fmt: skip


def sweep(out) -> subprocess.CompletedProcess:
    env = {**os.environ, **QUICK, "OUT": str(out), "WANDB_MODE": "disabled", "PY": f"{REPO}/.venv/bin/python"}
    return subprocess.run(["bash", "scripts/sweep_losses.sh"], cwd=REPO, env=env, capture_output=True, text=True)


def test_the_quick_study_reports_every_loss_paired_and_a_cut_study_continues(tmp_path):
    first = sweep(tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    for family in ("hinge β=0.5 soft α=0.1 τ=1 | 2", "bco_pair β=0.5 soft α=0.1 τ=1 | 2"):
        assert family in report  # a paired row over both seeds
    runs = sorted(tmp_path.glob("*/*/seed*"))
    assert len(runs) == 8 and all((r / ".done").exists() for r in runs)
    written = {r: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs}
    cut = runs[3]
    (cut / ".done").unlink()  # as if the study had stopped during this run
    again = sweep(tmp_path)
    assert again.returncode == 0, again.stdout[-2000:]
    assert [r for r in runs if (r / "metrics.jsonl").stat().st_mtime_ns != written[r]] == [cut]
    assert (cut / ".done").exists() and (tmp_path / "sft" / ".done").exists()
