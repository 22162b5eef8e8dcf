"""The commands as installed: the console scripts find the shipped configs from any directory, and the package
list ships every subpackage and every config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tests.helpers import FAST, REPO, TOY

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script, extra", [("trustregion-train", []), ("trustregion-sft", ["trainer=sft"])])
def test_a_console_script_runs_from_another_directory(tmp_path, script, extra):
    args = [*FAST, *TOY, "trainer.max_steps=2", *extra, f"hydra.run.dir={tmp_path / 'run'}"]
    if script == "trustregion-sft":  # the SFT stage has no method, update rule or generation settings
        args = [a for a in args if not a.startswith(("eval.", "experiment="))] + ["trainer.batch_size=8"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    out = subprocess.run([BIN / script, *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "policy").is_dir()


def test_runs_started_in_the_same_second_with_default_run_dirs_each_get_their_own(tmp_path):
    args = [*FAST, *TOY, "trainer.max_steps=1", "ref_update=none"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    starts = [
        subprocess.Popen([BIN / "trustregion-train", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in starts]
    assert [p.returncode for p in starts] == [0, 0], errors
    dirs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(dirs) == 2 and all(d.name.endswith("_dpo-b0.1-frozen") for d in dirs)  # named by the family's label


def test_a_start_refused_for_its_data_leaves_no_run_dir_behind(tmp_path):
    args = [*FAST, "dataset=local", f"dataset.path={tmp_path}/missing.jsonl"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    out = subprocess.run([BIN / "trustregion-train", *args], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "missing.jsonl: no such file or directory" in out.stderr
    assert list((tmp_path / "outputs" / "runs").glob("*/*")) == []


@pytest.mark.unit
def test_the_wheel_lists_every_subpackage_and_ships_every_config():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "trustregion").rglob("__init__.py")}
    groups = {".".join(("trustregion", *d.relative_to(REPO).parts)) for d in (REPO / "conf").rglob("*") if d.is_dir()}
    assert set(setuptools["packages"]) == packages | {"trustregion.conf"} | (groups - {"trustregion.conf.__pycache__"})
    from importlib.resources import files

    assert (files("trustregion.conf") / "method" / "dpo.yaml").is_file()  # conf/ is the package trustregion.conf
