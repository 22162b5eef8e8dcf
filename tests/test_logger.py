"""wandb naming: runs of one model, dataset and family (every result-changing setting but the seed) share a group."""

from __future__ import annotations

from trustregion.training.logger import run_group, run_name


def test_runs_that_differ_only_in_seed_share_a_wandb_group(fast_cfg):
    one, two = fast_cfg("trainer.seed=1"), fast_cfg("trainer.seed=2")
    assert run_group(one) == run_group(two) and run_group(one).startswith("tiny_toy_dpo-b0.1-soft-a0.6-t1_")
    assert (run_name(one), run_name(two)) == ("tiny_toy_dpo-b0.1-soft-a0.6-t1-s1", "tiny_toy_dpo-b0.1-soft-a0.6-t1-s2")


def test_beta_and_the_update_rule_make_different_groups_named_by_them(fast_cfg):
    groups = [run_group(fast_cfg(*o)) for o in [(), ("method.beta=0.5",), ("ref_update=none",), ("ref_update=hard",)]]
    assert len(set(groups)) == 4
    assert [g.rsplit("_", 1)[0] for g in groups] == [
        "tiny_toy_dpo-b0.1-soft-a0.6-t1",
        "tiny_toy_dpo-b0.5-soft-a0.6-t1",
        "tiny_toy_dpo-b0.1-frozen",
        "tiny_toy_dpo-b0.1-hard-t512",
    ]


def test_lora_runs_group_apart_from_full_fine_tuning_and_by_reference_mode(fast_cfg):
    groups = [
        run_group(fast_cfg(*o))
        for o in [
            ("peft=lora", "ref_update=none"),
            ("peft=lora", "peft.reference=exact"),
            ("peft=lora", "peft.reference=factors"),
        ]
    ]
    assert [g.rsplit("_", 1)[0] for g in groups] == [
        "tiny_toy_dpo-b0.1-lora-frozen",
        "tiny_toy_dpo-b0.1-lora-exact-soft-a0.6-t1",
        "tiny_toy_dpo-b0.1-lora-factors-soft-a0.6-t1",
    ]


def test_runs_on_two_models_and_datasets_carry_them_in_wandb_name_group_and_tags(tmp_path, monkeypatch):
    from tests.helpers import compose
    from trustregion.training.logger import wandb_init_args

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config's own mode: offline
    toy = wandb_init_args(compose("experiment=toy_overopt", "ref_update=none"), tmp_path / "toy")
    real = wandb_init_args(compose("experiment=smollm2_align", "method.beta=0.1", "ref_update=none"), tmp_path / "hh")
    assert toy["name"] == "tiny_toy_dpo-b0.1-frozen-s0" and toy["group"].startswith("tiny_toy_dpo-b0.1-frozen_")
    assert real["name"] == "smollm2-135m_hh_dpo-b0.1-frozen-s0"
    assert real["group"].startswith("smollm2-135m_hh_dpo-b0.1-frozen_")
    assert {"model=tiny", "dataset=toy"} <= set(toy["tags"]) and {"model=smollm2-135m", "dataset=hh"} <= set(
        real["tags"]
    )
    assert (real["config"]["model"]["name"], real["config"]["dataset"]["name"]) == ("smollm2-135m", "hh")
    assert toy["mode"] == real["mode"] == "offline" and real["dir"] == str(tmp_path / "hh")  # <dir>/wandb/offline-run-*


def test_an_explicit_group_wins(fast_cfg):
    assert run_group(fast_cfg("logger.group=mine")) == "mine"


def test_every_start_of_one_run_dir_continues_the_same_wandb_run(tmp_path):
    from trustregion.training.logger import run_id

    assert run_id(tmp_path / "run") == run_id(tmp_path / "run" / ".." / "run") != run_id(tmp_path / "other")

    assert run_id(tmp_path / "run") == run_id(tmp_path / "run" / ".." / "run") != run_id(tmp_path / "other")


def test_a_resumed_run_continues_its_offline_wandb_run(fast_cfg, tmp_path, monkeypatch):
    from trustregion.train import train
    from trustregion.training.logger import run_id

    monkeypatch.setenv("WANDB_MODE", "offline")
    train(fast_cfg("logger=wandb", "trainer.max_steps=2", "trainer.save_every=1"), tmp_path)
    train(fast_cfg("logger=wandb", "trainer.max_steps=4", "trainer.resume=latest"), tmp_path)
    import re

    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<id>, with "-1" added by wandb when both starts fall in the same second
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-(tr-[0-9a-f]{16})(-\d+)?", name).group(1) for name in runs}
    assert len(runs) == 2 and ids == {run_id(tmp_path)}  # two starts, one run id
