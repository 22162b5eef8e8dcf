"""Disk faults end a run with one line naming the path, and leave nothing partial where a later step would trust it (a
real tmpfs, as root: full, or mounted read-only; skipped, saying why, where it cannot be mounted)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import FAST, FAULTS, TOY, cli, fill_disk
from trustregion.training.checkpoint import complete_checkpoints, verify_checksums

HH = [
    "dataset=hh",
    "dataset.path=null",
    "dataset.data_files={train:tests/fixtures/hh/train.jsonl,test:tests/fixtures/hh/test.jsonl}",
]


@pytest.fixture
def tmpfs(tmp_path) -> Callable[..., Path]:
    """``tmpfs(name, size)``: a fresh tmpfs of ``size`` mounted at ``tmp_path/name`` (unmounted after the test)."""
    mounted: list[Path] = []

    def mount(name: str = "disk", size: str = "2m") -> Path:
        disk = tmp_path / name
        disk.mkdir()
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True, text=True
        )
        if out.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs here ({out.stderr.strip() or 'mount failed'}): needs root")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def last_line(out: subprocess.CompletedProcess) -> str:
    return out.stderr.strip().splitlines()[-1]


def test_a_full_disk_stops_with_one_line_and_keeps_the_complete_checkpoints(tmpfs):
    small_disk = tmpfs()
    args = [*FAST, *TOY, "trainer.max_steps=40", "trainer.save_every=1", "trainer.keep_last=100", "trainer.log_every=1"]
    out = cli(*args, "trainer.save_models=false", f"hydra.run.dir={small_disk}")
    assert out.returncode == 2, out.stderr[-2000:]
    line = last_line(out)
    assert "no space left" in line.lower() and str(small_disk) in line, line
    assert not list((small_disk / "checkpoints").glob(".tmp-*")), "the partial checkpoint is removed"
    kept = complete_checkpoints(small_disk)
    assert kept and all(verify_checksums(k) is None for k in kept)


def test_a_full_disk_during_the_export_is_one_line_and_leaves_no_partial_model(tmpfs):
    disk = tmpfs()
    args = [*FAST, *TOY, FAULTS, "trainer.save_final=false", f"hydra.run.dir={disk}"]
    out = cli(*args, env={"TRUSTREGION_FAULT": "fill:4:48"})  # after the last step: room for rows, not for a model
    assert out.returncode == 2, out.stderr[-2000:]
    line = last_line(out)
    assert line.startswith(f"error: cannot export {disk}/"), line
    assert "No space left" in line, line
    partial = {"policy", "reference", ".tmp-policy", ".tmp-reference"} & {p.name for p in disk.iterdir()}
    assert not partial, f"a partial export is left: {partial}"


def test_a_full_sft_logps_cache_is_said_and_the_run_goes_on(tmpfs, tmp_path):
    cache = tmpfs("cache", "1m")
    fill_disk(cache)
    out = cli(*FAST, *TOY, f"trainer.sft_logps_cache={cache}", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"warning: trainer.sft_logps_cache: could not write {cache}/sft-logps-" in out.stdout + out.stderr
    assert [p.name for p in cache.iterdir()] == ["filler"], "no temporary file is left behind"


def test_a_full_disk_at_the_start_names_the_run_dir(tmpfs):
    disk = tmpfs("disk", "1m")
    fill_disk(disk)
    out = cli(*FAST, *TOY, f"hydra.run.dir={disk}/run")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: the run dir {disk}/run cannot be written: no space left on its device (0 KiB free); free space or "
        "set hydra.run.dir to another disk"
    ]


def test_a_full_dataset_cache_dir_is_named(tmpfs, tmp_path):
    cache = tmpfs("cache", "1m")
    fill_disk(cache)
    out = cli(*FAST, *HH, f"dataset.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: No space left on device: {cache}; free space or fix the permissions, then rerun"
    ]


def test_a_new_run_dir_on_a_read_only_disk_is_one_line_naming_it(tmpfs):
    disk = tmpfs()
    read_only(disk)
    out = cli(*FAST, *TOY, f"hydra.run.dir={disk}/run")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: the run dir {disk}/run cannot be written ({disk} is on a read-only file system): set hydra.run.dir "
        "to a dir you can write"
    ]


@pytest.mark.slow
def test_resuming_a_run_dir_now_read_only_is_one_line_naming_it(tmpfs):
    disk = tmpfs()
    first = cli(*FAST, *TOY, "trainer.save_models=false", f"hydra.run.dir={disk}")
    assert first.returncode == 0, first.stderr[-2000:]
    read_only(disk)
    out = cli("trainer.max_steps=6", f"trainer.resume={disk}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: the run dir {disk} cannot be written (it is on a read-only file system): set hydra.run.dir to a dir "
        "you can write"
    ]
