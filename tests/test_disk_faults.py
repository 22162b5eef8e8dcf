"""Disk faults end a run with one line naming the path, and leave no partial checkpoint (a real tmpfs, as root)."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import FAST, TOY, cli
from trustregion.training.checkpoint import complete_checkpoints, verify_checksums


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_stops_with_one_line_and_keeps_the_complete_checkpoints(small_disk):
    args = [*FAST, *TOY, "trainer.max_steps=40", "trainer.save_every=1", "trainer.keep_last=100", "trainer.log_every=1"]
    out = cli(*args, "trainer.save_models=false", f"hydra.run.dir={small_disk}")
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "no space left" in line.lower() and str(small_disk) in line, line
    assert not list((small_disk / "checkpoints").glob(".tmp-*")), "the partial checkpoint is removed"
    kept = complete_checkpoints(small_disk)
    assert kept and all(verify_checksums(k) is None for k in kept)
