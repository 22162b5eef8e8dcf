"""wandb naming: runs of one family (method, beta, update rule) share a group across seeds."""

from __future__ import annotations

from trustregion.logger import run_group, run_name


def test_runs_that_differ_only_in_seed_share_a_wandb_group(fast_cfg):
    one, two = fast_cfg("trainer.seed=1"), fast_cfg("trainer.seed=2")
    assert run_group(one) == run_group(two) == "dpo-b0.1-soft-a0.6-t1"
    assert run_name(one) != run_name(two)


def test_beta_and_the_update_rule_make_different_groups(fast_cfg):
    groups = {run_group(fast_cfg(*o)) for o in [(), ("method.beta=0.5",), ("ref_update=none",), ("ref_update=hard",)]}
    assert groups == {"dpo-b0.1-soft-a0.6-t1", "dpo-b0.5-soft-a0.6-t1", "dpo-b0.1-frozen", "dpo-b0.1-hard-a1-t512"}


def test_an_explicit_group_wins(fast_cfg):
    assert run_group(fast_cfg("logger.group=mine")) == "mine"
