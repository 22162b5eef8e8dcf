"""A run's identity: one family per set of result-changing settings (seed apart), labelled by the method and the rule
themselves; the wandb group, the run name and identity.json all come from it."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, REPO, TOY, cli
from trustregion.training.identity import identity_of, ignored_settings, may_change_on_resume

USER_RULES = f"hydra.searchpath=[file://{REPO}/tests/fixtures/conf]"


def test_runs_that_differ_only_in_seed_are_one_family(fast_cfg):
    one, two = identity_of(fast_cfg("trainer.seed=1")), identity_of(fast_cfg("trainer.seed=2"))
    assert one.family == two.family and (one.seed, two.seed) == (1, 2)


def test_a_setting_that_follows_the_seed_is_part_of_the_seed(fast_cfg):
    one, two = fast_cfg("trainer.seed=1"), fast_cfg("trainer.seed=2")
    assert (one.dataset.pair_seed, two.dataset.pair_seed) == (1, 2)  # ${oc.select:trainer.seed,0}
    assert "dataset.pair_seed" not in identity_of(one).settings


@pytest.mark.parametrize(
    "a, b",
    [
        (("ref_update=kl_budget", "ref_update.budget=0.1"), ("ref_update=kl_budget", "ref_update.budget=0.05")),
        (("ref_update=schedule", "ref_update.shape=cosine"), ("ref_update=schedule", "ref_update.shape=linear")),
        (("trainer.lr=1e-3",), ("trainer.lr=3e-4",)),
        (("model.path=null",), ("dataset.num_pairs=32",)),
    ],
)
def test_runs_of_different_settings_never_share_a_family_or_a_group(fast_cfg, a, b):
    one, two = identity_of(fast_cfg(*a)), identity_of(fast_cfg(*b))
    assert one.family != two.family and one.group != two.group
    assert one.differences(two)


def test_execution_settings_are_not_part_of_the_identity(fast_cfg):
    plain = identity_of(fast_cfg())
    for override in ("trainer.log_every=3", "model.gradient_checkpointing=true", "trainer.progress_every_s=5"):
        assert identity_of(fast_cfg(override)).family == plain.family, override


def test_a_moving_rule_with_tau_null_is_not_labelled_frozen(fast_cfg):
    user = identity_of(fast_cfg(USER_RULES, "ref_update=drift"))
    frozen = identity_of(fast_cfg("ref_update=none"))
    assert user.label == "dpo β=0.1 drift α=0.5 τ=null threshold=0.002" and user.moves
    assert frozen.label == "dpo β=0.1 frozen" and not frozen.moves and user.group != frozen.group


def test_a_frozen_rule_ignores_alpha_so_those_runs_are_duplicates_and_say_so(fast_cfg):
    plain, odd = fast_cfg("ref_update=none"), fast_cfg("ref_update=none", "ref_update.alpha=0.3")
    assert identity_of(plain).family == identity_of(odd).family
    assert ignored_settings(odd) == ["ref_update.alpha=0.3 does nothing here: the rule (frozen) reads no alpha"]
    assert ignored_settings(plain) == []


def test_a_moving_family_and_its_frozen_baseline_share_the_baseline_key(fast_cfg):
    soft, frozen = identity_of(fast_cfg("ref_update=soft")), identity_of(fast_cfg("ref_update=none"))
    lora_exact = identity_of(fast_cfg("peft=lora", "peft.reference=exact"))
    lora_frozen = identity_of(fast_cfg("peft=lora", "ref_update=none"))
    assert soft.baseline == frozen.baseline != lora_frozen.baseline == lora_exact.baseline


def test_a_resume_may_change_length_and_execution_but_not_the_method(fast_cfg):
    assert may_change_on_resume("trainer.max_steps") and may_change_on_resume("trainer.progress_every_s")
    assert may_change_on_resume("logger.project") and not may_change_on_resume("method.beta")
    assert not may_change_on_resume("trainer.lr") and not may_change_on_resume("deepspeed.stage")


def test_a_user_rule_without_tau_runs_with_the_default_wandb_logger_and_records_its_identity(tmp_path):
    run = tmp_path / "run"
    out = cli(
        *FAST, *TOY, "trainer.max_steps=2", "logger=wandb", USER_RULES, "ref_update=drift_plain",
        f"hydra.run.dir={run}", env={"WANDB_MODE": "offline"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    recorded = json.loads((run / "identity.json").read_text())
    assert recorded["label"] == "dpo β=0.1 drift α=0.5 τ=null threshold=0.002" and recorded["moves"]
    assert recorded["settings"]["ref_update.tau"] is None  # the rule's schema default, filled in
    assert list((run / "wandb").glob("offline-run-*"))
