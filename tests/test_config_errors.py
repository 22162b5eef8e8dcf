"""Composition errors read like the range checks: one line naming the override and the fix, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trustregion.cli.app import compose
from trustregion.cli.preflight import describe, sweep_points


def one_line(*args: str, module: str = "trustregion.train") -> str:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


def error_of(*overrides: str) -> str:
    with pytest.raises(Exception) as e:
        compose(*overrides)
    return describe(e.value, overrides, "config")


def test_an_unknown_group_option_lists_the_options_and_the_nearest():
    assert (
        error_of("deepspeed=zero4")
        == "deepspeed=zero4 is not an option: set deepspeed to one of none, zero2, zero3 (did you mean deepspeed=zero3?)"
    )
    assert error_of("method=dpoo").endswith(
        "hinge, ipo, kto, mpo, nca_pair, robust, rpo, sigmoid_norm, sppo_hard (did you mean method=dpo?)"
    )


def test_an_unknown_key_names_its_group_and_the_nearest_key():
    assert error_of("trainer.lrr=1") == "trainer.lrr is not a key of trainer: did you mean trainer.lr?"


def test_a_value_of_the_wrong_type_names_the_key_and_the_value():
    assert error_of("trainer.lr=abc").startswith("trainer.lr=abc is invalid: Value 'abc' of type 'str' could not be")


def test_a_sweep_is_checked_at_every_point():
    points = sweep_points(["--multirun", "method.beta=0.1,0.5", "ref_update.alpha=0.2,0.4", "hydra.sweep.dir=x"])
    assert points == [
        ["method.beta=0.1", "ref_update.alpha=0.2"],
        ["method.beta=0.1", "ref_update.alpha=0.4"],
        ["method.beta=0.5", "ref_update.alpha=0.2"],
        ["method.beta=0.5", "ref_update.alpha=0.4"],
    ]


def test_a_bad_second_sweep_point_stops_the_sweep_before_its_first_job(tmp_path):
    line = one_line("--multirun", "ref_update.alpha=0.5,2", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert line == (
        "error: ref_update.alpha=2.0 is invalid: set ref_update.alpha to a number in (0, 1] (1 = hard update) "
        "(sweep point 2 of 2: ref_update.alpha=2)"
    )
    assert not (tmp_path / "sweep").exists()


def test_hydra_flags_that_cannot_be_combined_are_one_line():
    assert one_line("--cfg", "hydra", "--multirun").startswith("error: --cfg and --multirun cannot be combined")


def test_an_unknown_launcher_lists_the_launchers():
    assert one_line("hydra/launcher=slurmm") == (
        "error: hydra/launcher=slurmm is not an option: set hydra/launcher to one of basic, local, slurm, slurm_cpu, "
        "submitit_local, submitit_slurm (did you mean hydra/launcher=slurm?)"
    )


def test_a_wrong_model_path_is_named_before_the_data_is_read(tmp_path):
    assert one_line("dataset=local", f"dataset.path={tmp_path}/none.jsonl", f"model.path={tmp_path}/none") == (
        f"error: model.path={tmp_path}/none: no such directory; set model.path to a saved model dir "
        "(e.g. <sft run dir>/policy) or a hub name"
    )


def test_the_command_line_prints_one_line_and_exits_2_for_training_and_sft():
    assert one_line("ref_update=sofft") == (
        "error: ref_update=sofft is not an option: set ref_update to one of hard, kl_budget, none, schedule, soft "
        "(did you mean ref_update=soft?)"
    )
    assert one_line("trainer.lrr=3", module="trustregion.sft") == (
        "error: trainer.lrr is not a key of trainer: did you mean trainer.lr?"
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    "override, line",
    [
        ("trainer.save_every=-1", "trainer.save_every=-1 is invalid: set trainer.save_every to an integer >= 0"),
        ("trainer.eval_every=-1", "trainer.eval_every=-1 is invalid: set trainer.eval_every to an integer >= 0"),
        (
            "trainer.weight_decay=-0.1",
            "trainer.weight_decay=-0.1 is invalid: set trainer.weight_decay to a number >= 0",
        ),
        (
            "trainer.adam_betas=[2.0,0.5]",
            "trainer.adam_betas=[2.0,0.5] is invalid: set trainer.adam_betas to 2 values, each a number in [0, 1)",
        ),
    ],
)
def test_an_out_of_range_trainer_setting_is_refused_by_the_preflight(override, line):
    from trustregion.cli.preflight import check_point
    from trustregion.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        check_point(compose(override), "config")
    assert str(e.value) == line


def test_a_method_specific_range_error_at_a_later_sweep_point_stops_the_sweep_before_its_first_job(tmp_path):
    line = one_line("--multirun", "method=kto", "method.desirable_weight=1,-1", f"hydra.sweep.dir={tmp_path / 's'}")
    assert line == (
        "error: method.desirable_weight=-1.0 is invalid: set method.desirable_weight to a number > 0 (sweep point 2 "
        "of 2: method=kto method.desirable_weight=-1)"
    )
    assert not (tmp_path / "s").exists()
