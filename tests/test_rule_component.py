"""The update rule as a component: a rule written outside the package runs from the command line, on one process
and on two ZeRO-3 ranks alike; execution-only model settings may change on resume."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import FAST, REPO, TOY, cli, logged, losses, torchrun, train_rows
from trustregion.training.recipe import Recipe
from trustregion.training.stages import PreferenceStage

# The user's rule and its YAML live outside the package (tests/fixtures/user_rule.py, tests/fixtures/conf/).
DRIFT = [f"hydra.searchpath=[file://{REPO}/tests/fixtures/conf]", "ref_update=drift"]
SMALL = [*FAST, *TOY, "trainer.max_steps=6"]


@pytest.fixture(scope="module")
def drift_one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("one")
    out = cli(*SMALL, *DRIFT, "trainer.batch_size=16", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    return run


def test_a_rule_written_outside_the_package_runs_from_the_command_line(drift_one_process):
    updates = logged(drift_one_process, "ref_updates")
    assert logged(drift_one_process, "ref/drift")  # the rule's own log field
    assert 0 < updates[-1] < len(updates), "the rule decides from the data: some steps update, some do not"


@pytest.mark.slow
def test_a_rule_written_outside_the_package_on_two_zero3_ranks_matches_one_process(drift_one_process, tmp_path):
    torchrun(*SMALL, *DRIFT, "deepspeed=zero3", "trainer.batch_size=8", f"hydra.run.dir={tmp_path}")
    assert logged(tmp_path, "ref_updates") == logged(drift_one_process, "ref_updates")
    assert losses(tmp_path) == pytest.approx(losses(drift_one_process), abs=1e-5)
    assert logged(tmp_path, "ref/drift") == pytest.approx(logged(drift_one_process, "ref/drift"), abs=1e-5)


def test_a_rule_on_the_weight_distance_updates_exactly_when_the_distance_reaches_its_budget(tmp_path):
    distance = [f"hydra.searchpath=[file://{REPO}/tests/fixtures/conf]", "ref_update=distance"]
    out = cli(*SMALL, *distance, "trainer.max_steps=12", "ref_update.budget=0.004", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = train_rows(tmp_path)
    updated = [b["ref_updates"] > a["ref_updates"] for a, b in zip([{"ref_updates": 0}, *rows], rows)]
    assert updated == [r["ref/seen_distance"] >= 0.004 for r in rows]
    assert 0 < sum(updated) < len(rows)
    assert all(r["ref/distance"] == 0.0 for r, u in zip(rows, updated) if u)  # alpha 1: the reference is the policy


def test_a_misspelt_setting_of_a_users_rule_is_one_line(tmp_path):
    out = cli(*SMALL, *DRIFT, "ref_update.treshold=1", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "ref_update.treshold" in out.stderr


def test_resume_may_turn_on_gradient_checkpointing_and_chunked_logps(fast_cfg, tmp_path):
    from trustregion.train import train

    common = ["ref_update=soft", "ref_update.alpha=0.3", "ref_update.tau=1", "trainer.max_steps=8"]
    train(fast_cfg(*common), tmp_path / "full")
    train(fast_cfg(*common, "trainer.max_steps=4"), tmp_path / "cut")  # stands in for a run cut at step 4
    execution = ["model.gradient_checkpointing=true", "model.logps=chunked"]
    train(fast_cfg(*common, *execution, "trainer.resume=latest"), tmp_path / "cut")
    full, cut = train_rows(tmp_path / "full"), train_rows(tmp_path / "cut")
    assert [r["step"] for r in cut] == list(range(1, 9))
    assert [r["loss"] for r in cut] == pytest.approx([r["loss"] for r in full], abs=1e-5)
    assert [r["ref/distance"] for r in cut] == pytest.approx([r["ref/distance"] for r in full], abs=1e-5)


def test_resume_refuses_another_model_naming_the_key(fast_cfg, tmp_path):
    from trustregion.errors import ConfigError
    from trustregion.train import train

    train(fast_cfg("trainer.max_steps=2"), tmp_path)
    with pytest.raises(ConfigError, match=r"model differs \(model\.hidden_size: 32 -> 48\)"):
        train(fast_cfg("trainer.max_steps=4", "model.hidden_size=48", "trainer.resume=latest"), tmp_path)


def test_a_frozen_reference_under_deepspeed_on_one_process_is_never_built(fast_cfg, tmp_path):
    recipe = Recipe(fast_cfg("ref_update=none", "deepspeed=zero3"), tmp_path, PreferenceStage())
    recipe.run()
    assert recipe.engine.reference is None and recipe.objective.reference_from_cache
    assert torch.load(tmp_path / "checkpoints" / "step_000004" / "reference_rank0.pt", weights_only=True) == []
