"""Methods and data sources as components: a loss and a data source written outside the package run from the command
line with the default logger, their settings checked against their own schemas in one line, like a rule's."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, REPO, TOY, cli, logged, train_rows

USER = f"hydra.searchpath=[file://{REPO}/tests/fixtures/conf]"  # tests/fixtures/conf/{method,dataset}/*.yaml
SMALL = [*FAST, "trainer.max_steps=3"]


def test_a_loss_written_outside_the_package_runs_with_the_default_logger_and_records_its_identity(tmp_path):
    run = tmp_path / "run"
    out = cli(*SMALL, *TOY, "logger=wandb", USER, "method=squared_hinge", f"hydra.run.dir={run}",
              env={"WANDB_MODE": "offline"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    recorded = json.loads((run / "identity.json").read_text())
    assert recorded["label"] == "squared_hinge β=0.2 margin=0.5 soft α=0.6 τ=1"
    assert recorded["settings"]["method.average_logps"] is False  # the schema's default, filled in
    assert len(train_rows(run)) == 3 and list((run / "wandb").glob("offline-run-*"))


def test_a_data_source_written_outside_the_package_runs_with_the_default_logger(tmp_path):
    run = tmp_path / "run"
    out = cli(*SMALL, "logger=wandb", USER, "dataset=counting", "method=hinge", f"hydra.run.dir={run}",
              env={"WANDB_MODE": "offline"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    recorded = json.loads((run / "identity.json").read_text())
    assert recorded["setting"] == "tiny_counting" and recorded["settings"]["dataset.longest"] == 6  # default filled
    assert logged(run, "data/train_pairs") == [48]
    assert len(train_rows(run)) == 3 and list((run / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.margn=1", "method.margn is not a key of method: did you mean method.margin?"),
        ("+method.colour=red", "method.colour is not a setting of SquaredHinge"),
        ("method.margin=-1", "method.margin=-1.0 is invalid: set method.margin to a number > 0"),
        ("method._target_=tests.fixtures.user_loss.SquaredHingeConfig", "is not a subclass of"),
        ("+dataset.colour=red", "dataset.colour is not a setting of Counting"),
        ("dataset.pairs=0", "dataset.pairs=0 is invalid: set dataset.pairs to an integer >= 1"),
    ],
)
def test_a_users_setting_out_of_its_schema_is_one_line_before_any_run(tmp_path, override, message):
    group = "method=squared_hinge" if "method." in override else "dataset=counting"
    out = cli(*SMALL, USER, group, override, f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert message in out.stderr and not (tmp_path / "metrics.jsonl").exists()


def test_a_reference_free_baseline_runs_frozen_and_a_moving_reference_with_it_is_one_line(tmp_path):
    out = cli(*SMALL, *TOY, USER, "method=simpo", "ref_update=soft", f"hydra.run.dir={tmp_path / 'moving'}")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "method=simpo uses no reference model, so ref_update=soft would move" in out.stderr
    out = cli(*SMALL, *TOY, USER, "method=simpo", "ref_update=none", f"hydra.run.dir={tmp_path / 'frozen'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(train_rows(tmp_path / "frozen")) == 3
