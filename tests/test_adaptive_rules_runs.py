"""The rules beyond a fixed (α, τ) in training runs: kl_budget decides alike on 2 ZeRO-3 ranks and on one process;
both rules resume exactly after SIGTERM; a search over a rule returns its objective to Optuna's storage and repeats
itself for a seed."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import FAST, FAULTS, TOY, cli, logged, losses, metrics, torchrun, untimed, weights
from trustregion.training.preemption import Preempted

SMALL = [*FAST, *TOY, "trainer.max_steps=12"]
# Hard resets when the per-token drift reaches 0.001: on this tiny run, roughly every other step.
KL_BUDGET = ["ref_update=kl_budget", "ref_update.budget=0.001", "ref_update.tau=1", "ref_update.smoothing=0.5"]


@pytest.fixture(scope="module")
def kl_budget_one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("one")
    out = cli(*SMALL, *KL_BUDGET, "trainer.batch_size=16", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    return run


def test_kl_budget_logs_its_estimate_and_updates_on_some_steps_only(kl_budget_one_process):
    updates = logged(kl_budget_one_process, "ref_updates")
    assert len(logged(kl_budget_one_process, "ref/kl_estimate")) == 12
    assert 0 < updates[-1] < 12


@pytest.mark.slow
def test_kl_budget_on_two_zero3_ranks_updates_at_the_steps_of_one_process(kl_budget_one_process, tmp_path):
    torchrun(*SMALL, *KL_BUDGET, "deepspeed=zero3", "trainer.batch_size=8", f"hydra.run.dir={tmp_path}")
    assert logged(tmp_path, "ref_updates") == logged(kl_budget_one_process, "ref_updates")
    estimates = logged(tmp_path, "ref/kl_estimate")
    assert estimates == pytest.approx(logged(kl_budget_one_process, "ref/kl_estimate"), abs=1e-6)
    assert losses(tmp_path) == pytest.approx(losses(kl_budget_one_process), abs=1e-5)


@pytest.mark.parametrize(
    "rule",
    [
        KL_BUDGET,
        ["ref_update=schedule", "ref_update.alpha=0.5", "ref_update.alpha_end=0.05", "ref_update.tau=2"],
    ],
    ids=["kl_budget", "schedule"],
)
def test_a_rule_resumed_after_sigterm_logs_and_moves_the_reference_as_if_uninterrupted(
    rule, fast_cfg, tmp_path, monkeypatch
):
    from trustregion.train import train

    common = [*rule, "trainer.max_steps=12", "trainer.log_every=5", "trainer.save_models=true"]
    train(fast_cfg(*common), tmp_path / "full")
    monkeypatch.setenv("TRUSTREGION_FAULT", "term:7")  # mid-window: logs at 5, 10
    with pytest.raises(Preempted):
        train(fast_cfg(*common, FAULTS), tmp_path / "stopped")
    monkeypatch.delenv("TRUSTREGION_FAULT")
    train(fast_cfg(*common, "trainer.resume=latest"), tmp_path / "stopped")
    assert untimed(metrics(tmp_path / "stopped")) == untimed(metrics(tmp_path / "full"))
    full, resumed = weights(tmp_path / "full", "reference"), weights(tmp_path / "stopped", "reference")
    assert all(torch.equal(resumed[k], full[k]) for k in full)


SEARCH = [
    "--multirun",
    "logger=none",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.intermediate_size=64",
    "trainer.batch_size=8",
    "trainer.max_steps=6",
    "trainer.eval_every=3",
    "eval.prompts=8",
    "eval.samples_per_prompt=1",
    *TOY,
    "ref_update=kl_budget",
    "ref_update.budget=tag(log, interval(0.0001, 0.01))",
    "ref_update.alpha=tag(log, interval(0.1, 1.0))",
    "search.seeds=[1,2]",
    "search.objective=gold_at_kl",
    "search.kl=0.01",
    "hydra.sweeper.n_trials=3",
    "hydra.sweeper.study_name=test",
]


@pytest.mark.slow
def test_a_three_trial_search_stores_each_trials_objective_and_repeats_for_a_seed(tmp_path):
    optuna = pytest.importorskip("optuna")

    def search(name: str) -> list:
        db = tmp_path / f"{name}.db"
        out = cli(
            *SEARCH,
            f"hydra.sweeper.storage=sqlite:///{db}",
            f"hydra.sweep.dir={tmp_path / name}",
            module="trustregion.search",
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        trials = optuna.load_study(study_name="test", storage=f"sqlite:///{db}").trials
        returned = [json.loads((tmp_path / name / str(t.number) / "objective.json").read_text()) for t in trials]
        assert [t.value for t in trials] == [r["value"] for r in returned]  # what the entry point returned
        assert all(len(r["per_seed"]) == 2 for r in returned)
        return [(t.state.name, t.params, t.value) for t in trials]

    first = search("a")
    assert len(first) == 3 and all(state == "COMPLETE" for state, _, _ in first)
    assert search("b") == first
