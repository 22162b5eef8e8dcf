"""The rules beyond a fixed (α, τ), on scripted step metrics: kl_budget updates exactly where its estimate crosses the
budget, keeps its spacing, asks one metric per step and resumes from its state; schedule gives the written α."""

from __future__ import annotations

import math

import pytest

from tests.helpers import compose
from trustregion.errors import ConfigError
from trustregion.reference.kl_budget import KLBudget
from trustregion.reference.rules import build_rule
from trustregion.reference.schedule import AlphaSchedule

pytestmark = pytest.mark.unit


class ScriptedStats:
    """StepStats whose ``logratio/policy_ref`` is scripted; records what the rule asks."""

    def __init__(self, step: int, kl: float, total_steps: int = 100) -> None:
        self.step, self.total_steps, self.kl, self.asked = step, total_steps, kl, []

    def mean(self, key: str) -> float:
        self.asked.append(key)
        return self.kl


def rule(name: str, **settings):
    overrides = [f"ref_update={name}", *(f"ref_update.{k}={v}" for k, v in settings.items())]
    return build_rule(compose(*overrides).ref_update)


def update_steps(r, drifts: list[float], first_step: int = 1) -> list[int]:
    """The steps at which ``r`` updates when the estimate's input (−logratio/policy_ref) follows ``drifts``."""
    return [s for s, d in enumerate(drifts, start=first_step) if r.alpha(ScriptedStats(s, -d)) > 0]


def test_kl_budget_updates_exactly_at_the_steps_whose_estimate_reaches_the_budget():
    r = rule("kl_budget", budget=0.1, smoothing=1.0, tau=1)
    assert update_steps(r, [0.05, 0.12, 0.02, 0.2, 0.3, 0.09, 0.1]) == [2, 4, 5, 7]


def test_kl_budget_keeps_the_minimum_spacing_between_updates():
    r = rule("kl_budget", budget=0.1, smoothing=1.0, tau=2)
    assert update_steps(r, [0.05, 0.12, 0.02, 0.2, 0.3, 0.09, 0.1]) == [2, 4, 7]  # 5 is one step after 4


def test_kl_budget_smooths_with_a_bias_corrected_ema_restarted_at_each_update():
    # smoothing 0.5: estimates 0.02, 0.0467, 0.0771 (update: restart), 0.14 (too soon), 0.1667
    r = rule("kl_budget", budget=0.05, smoothing=0.5, tau=2, alpha=0.5)
    alphas = [r.alpha(ScriptedStats(s, -d)) for s, d in enumerate([0.02, 0.06, 0.10, 0.14, 0.18], start=1)]
    assert alphas == [0.0, 0.0, 0.5, 0.0, 0.5]  # the step-2 value crossed 0.05, its estimate had not
    assert r.metrics()["ref/kl_estimate"] == 0.0 and r.metrics()["ref/last_update_step"] == 5.0
    r.alpha(ScriptedStats(6, -0.3))
    assert r.metrics()["ref/kl_estimate"] == pytest.approx(0.3)


def test_kl_budget_asks_for_one_metric_per_step_so_every_rank_asks_alike():
    r = rule("kl_budget")
    stats = [ScriptedStats(s, -0.5) for s in range(1, 20)]
    for st in stats:
        r.alpha(st)
    assert all(st.asked == ["logratio/policy_ref"] for st in stats)


def test_kl_budget_resumed_from_its_state_decides_like_the_uninterrupted_rule():
    drifts = [0.01 * ((7 * s) % 11) for s in range(1, 41)]
    whole = rule("kl_budget", budget=0.05, smoothing=0.3, tau=3)
    expected = update_steps(whole, drifts)
    first = rule("kl_budget", budget=0.05, smoothing=0.3, tau=3)
    before = update_steps(first, drifts[:17])
    state = first.state_dict()
    second = rule("kl_budget", budget=0.05, smoothing=0.3, tau=3)
    second.load_state_dict(state)
    assert before + update_steps(second, drifts[17:], first_step=18) == expected
    assert len(expected) > 3


@pytest.mark.parametrize(
    "setting, fix",
    [("budget=0", "ref_update.budget"), ("smoothing=0", "ref_update.smoothing"), ("tau=0", "ref_update.tau")],
)
def test_a_bad_kl_budget_setting_is_one_error_naming_it(setting, fix):
    key, value = setting.split("=")
    with pytest.raises(ConfigError, match=fix):
        rule("kl_budget", **{key: value})


@pytest.mark.parametrize(
    "shape, step, expected",
    [
        ("constant", 50, 0.1),
        ("linear", 50, 0.06),
        ("linear", 100, 0.02),
        ("cosine", 25, 0.02 + 0.08 * (1 + math.cos(math.pi / 4)) / 2),
        ("cosine", 50, 0.06),
        ("cosine", 100, 0.02),
    ],
)
def test_schedule_gives_the_written_alpha_at_a_step(shape, step, expected):
    r = rule("schedule", alpha=0.1, alpha_end=0.02, shape=shape, tau=5)
    assert r.alpha(ScriptedStats(step, 0.0, total_steps=100)) == pytest.approx(expected)
    assert r.metrics()["ref/alpha"] == pytest.approx(expected)


def test_schedule_updates_only_every_tau_steps():
    r = rule("schedule", alpha=0.1, alpha_end=0.02, shape="linear", tau=5)
    assert [s for s in range(1, 21) if r.alpha(ScriptedStats(s, 0.0, total_steps=20)) > 0] == [5, 10, 15, 20]


def test_a_schedule_that_never_moves_is_one_error():
    with pytest.raises(ConfigError, match="ref_update.alpha=0 never moves"):
        rule("schedule", alpha=0, shape="constant")
    with pytest.raises(ConfigError, match="ref_update.alpha_end"):
        rule("schedule", alpha_end=1.5)


def test_the_new_rules_presets_build_their_classes_with_their_schemas():
    assert isinstance(rule("kl_budget"), KLBudget) and isinstance(rule("schedule"), AlphaSchedule)
