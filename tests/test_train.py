"""The training recipe end to end on the tiny model and toy data, in-process and from the command line."""

import json

import pytest
import torch

from tests.helpers import FAST, FAULTS, REPO, TOY, cli, metrics, train_rows, untimed, weights
from trustregion.errors import ConfigError, DataError, TrainingError
from trustregion.train import train


@pytest.mark.parametrize("method", ["dpo", "ipo", "kto"])
@pytest.mark.parametrize("ref_update", ["none", "soft", "hard"])
def test_every_method_trains_with_every_reference_update(fast_cfg, tmp_path, method, ref_update):
    cfg = fast_cfg(f"method={method}", f"ref_update={ref_update}", "ref_update.tau=2" if ref_update == "hard" else "")
    last = train(cfg, tmp_path)
    assert torch.isfinite(torch.tensor(last["loss"]))
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    expected_updates = {"none": None, "soft": 4, "hard": 2}[ref_update]  # frozen: no reference model, no updater
    assert rows[-1].get("ref_updates") == expected_updates


STANDSTILL = "the policy barely moved from its reference"


def said(capsys, caplog) -> str:
    return capsys.readouterr().out + caplog.text


def test_a_run_whose_loss_never_leaves_its_start_says_it_learned_nothing(fast_cfg, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="trustregion")
    train(fast_cfg("trainer.lr=1e-12", "trainer.max_steps=60", "trainer.log_every=10", "ref_update=none"), tmp_path)
    lines = [x for x in said(capsys, caplog).splitlines() if STANDSTILL in x]
    assert len(lines) == 1 and "over 60 steps" in lines[0] and "raise trainer.lr (now 1e-12" in lines[0]


@pytest.mark.parametrize("overrides", [("ref_update=none",), ("ref_update=hard", "ref_update.tau=1")])
def test_a_learning_run_and_a_reference_that_follows_the_policy_say_nothing_of_a_standstill(
    fast_cfg, tmp_path, capsys, caplog, overrides
):
    caplog.set_level("INFO", logger="trustregion")
    train(fast_cfg("trainer.max_steps=60", "trainer.log_every=10", *overrides), tmp_path)
    assert "done: step 60" in said(capsys, caplog) and STANDSTILL not in caplog.text


def test_run_dir_holds_config_metrics_models_and_tokenizer(fast_cfg, tmp_path):
    train(fast_cfg(), tmp_path)
    assert (tmp_path / "config.yaml").exists()
    keys = set().union(*[m.keys() for m in metrics(tmp_path)])
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "ref/logps/chosen",
        "ref/logps/rejected",
        "logratio/policy_ref",
        "grad_norm",
        "lr",
        "tokens_per_s",
        "ref_updates",
        "ref/distance",
        "rewards_sft/chosen",
        "rewards_sft/rejected",
        "rewards_sft/margins",
        "rewards_sft/accuracies",
        "eval/loss",
    ]:
        assert key in keys, key
    for which in ("policy", "reference"):
        assert (tmp_path / which / "config.json").exists()
    assert (tmp_path / "policy" / "tokenizer.json").exists()


def test_frozen_reference_stays_bit_identical_to_the_start(fast_cfg, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(fast_cfg("ref_update=none"), a)
    train(fast_cfg("ref_update=none", "trainer.max_steps=1", "trainer.lr=1e-12"), b)
    ref_a, ref_b = weights(a, "reference"), weights(b, "reference")
    assert all(torch.equal(ref_a[k], ref_b[k]) for k in ref_a)
    pol = weights(a, "policy")
    assert any(not torch.equal(pol[k], ref_a[k]) for k in pol)


def test_frozen_reference_from_cache_matches_running_the_reference(fast_cfg, tmp_path):
    train(fast_cfg("ref_update=none"), tmp_path / "cached")
    train(fast_cfg("ref_update=none", "trainer.cache_reference=false"), tmp_path / "run")
    a, b = train_rows(tmp_path / "cached"), train_rows(tmp_path / "run")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-5)
    evals = [[r for r in metrics(d) if "eval/loss" in r] for d in (tmp_path / "cached", tmp_path / "run")]
    assert [r["eval/loss"] for r in evals[0]] == pytest.approx([r["eval/loss"] for r in evals[1]], abs=1e-5)


def test_frozen_reference_with_cached_logps_is_never_built_yet_exported(fast_cfg, tmp_path):
    from trustregion.training.recipe import Recipe
    from trustregion.training.stages import PreferenceStage

    recipe = Recipe(fast_cfg("ref_update=none"), tmp_path / "cached", PreferenceStage())
    recipe.run()
    assert recipe.reference is None and recipe.engine.reference is None
    train(fast_cfg("ref_update=none", "trainer.cache_reference=false"), tmp_path / "built")
    exported, built = weights(tmp_path / "cached", "reference"), weights(tmp_path / "built", "reference")
    assert set(exported) == set(built) and all(torch.equal(exported[k], built[k]) for k in built)


def test_hard_update_leaves_reference_equal_to_policy_after_a_multiple_of_tau(fast_cfg, tmp_path):
    train(fast_cfg("ref_update=hard", "ref_update.tau=2"), tmp_path)
    pol, ref = weights(tmp_path, "policy"), weights(tmp_path, "reference")
    assert all(torch.equal(pol[k], ref[k]) for k in pol)


def test_hard_update_does_not_touch_reference_between_updates(fast_cfg, tmp_path):
    train(fast_cfg("ref_update=hard", "ref_update.tau=3"), tmp_path)
    rows = train_rows(tmp_path)
    assert [r["ref_updates"] for r in rows] == [0, 0, 1, 1]
    pol, ref = weights(tmp_path, "policy"), weights(tmp_path, "reference")
    assert any(not torch.equal(pol[k], ref[k]) for k in pol)


def test_soft_update_with_alpha_one_equals_the_hard_update(fast_cfg, tmp_path):
    train(fast_cfg("ref_update=soft", "ref_update.alpha=1.0", "ref_update.tau=2"), tmp_path / "soft")
    train(fast_cfg("ref_update=hard", "ref_update.tau=2"), tmp_path / "hard")
    soft, hard = train_rows(tmp_path / "soft"), train_rows(tmp_path / "hard")
    assert [r["loss"] for r in soft] == [r["loss"] for r in hard]


def test_rewards_against_sft_differ_from_rewards_against_a_moving_reference(fast_cfg, tmp_path):
    train(fast_cfg("ref_update=soft", "ref_update.alpha=1.0", "ref_update.tau=1", "trainer.max_steps=3"), tmp_path)
    last = train_rows(tmp_path)[-1]
    assert last["rewards_sft/margins"] != pytest.approx(last["rewards/margins"])


def test_gradient_accumulation_counts_optimizer_steps(fast_cfg, tmp_path):
    train(fast_cfg("trainer.grad_accum=2", "ref_update=hard", "ref_update.tau=2"), tmp_path)
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["ref_updates"] == 2
    assert rows[-1]["epoch"] == pytest.approx(1.0)  # 4 steps x 2 micro-batches x 8 pairs = the 64 toy pairs


def test_resume_continues_exactly(fast_cfg, tmp_path):
    full = tmp_path / "full"
    train(fast_cfg("trainer.save_every=2", "trainer.keep_last=5"), full)
    part = tmp_path / "part"
    train(fast_cfg(f"trainer.resume={full}/checkpoints/step_000002"), part)
    assert [r["loss"] for r in train_rows(part)] == [r["loss"] for r in train_rows(full)[2:]]
    assert all(
        torch.equal(a, b) for a, b in zip(weights(full, "reference").values(), weights(part, "reference").values())
    )


def test_checkpoints_are_pruned_to_keep_last(fast_cfg, tmp_path):
    train(fast_cfg("trainer.save_every=1", "trainer.keep_last=2"), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000003", "step_000004"]


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override,field",
    [
        ("ref_update.alpha=0", "ref_update.alpha"),
        ("ref_update.alpha=1.5", "ref_update.alpha"),
        ("ref_update.tau=0", "ref_update.tau"),
        ("method.beta=0", "method.beta"),
        ("method.beta=-1", "method.beta"),
        ("trainer.lr=0", "trainer.lr"),
        ("dataset.max_prompt_length=40", "dataset.max_prompt_length"),
    ],
)
def test_out_of_range_values_name_the_field(fast_cfg, tmp_path, override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        train(fast_cfg(override), tmp_path)


def test_batch_larger_than_the_dataset_is_an_error(fast_cfg, tmp_path):
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        train(fast_cfg("trainer.batch_size=100"), tmp_path)


def test_missing_data_file_is_an_error(fast_cfg, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        train(fast_cfg("dataset=jsonl", f"dataset.path={tmp_path}/nope.jsonl"), tmp_path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = [{"prompt": f"q{i} what is {i}?", "chosen": f" it is {i}", "rejected": f" no idea {i}"} for i in range(40)]


def test_row_missing_a_field_names_file_and_row(fast_cfg, tmp_path):
    bad = GOOD[:5] + [{"prompt": "x", "chosen": "y"}] + GOOD[5:]
    path = write_jsonl(tmp_path / "pairs.jsonl", bad)
    with pytest.raises(DataError, match=r"pairs\.jsonl line 6: missing field 'rejected'"):
        train(fast_cfg("dataset=jsonl", f"dataset.path={path}"), tmp_path)


def test_empty_response_is_skipped_and_counted_with_on_bad_row_skip(fast_cfg, tmp_path):
    bad = GOOD[:3] + [{"prompt": "x", "chosen": "  ", "rejected": "y"}] + GOOD[3:]
    path = write_jsonl(tmp_path / "pairs.jsonl", bad)
    train(fast_cfg("dataset=jsonl", f"dataset.path={path}", "dataset.on_bad_row=skip"), tmp_path / "run")
    first = metrics(tmp_path / "run")[0]
    assert first["data/skipped_rows"] == 1


def test_prompt_longer_than_the_limit_is_truncated_from_the_left_and_counted(fast_cfg, tmp_path):
    rows = [dict(r, prompt="word " * 100 + r["prompt"]) for r in GOOD]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    train(fast_cfg("dataset=jsonl", f"dataset.path={path}"), tmp_path / "run")
    assert metrics(tmp_path / "run")[0]["data/truncated_prompts"] == 32  # the 40 rows less 8 held out


def test_non_finite_loss_stops_the_run_and_keeps_what_was_written(fast_cfg, tmp_path):
    with pytest.raises(TrainingError, match="non-finite loss at step"):
        train(
            fast_cfg("trainer.lr=1e30", "trainer.max_grad_norm=null", "trainer.max_steps=6", "trainer.log_every=3"),
            tmp_path,
        )
    assert (tmp_path / "metrics.jsonl").exists()
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").glob("step_*"))


# --- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override,expected",
    [
        ("ref_update.alpha=2", "error: ref_update.alpha=2.0 is invalid: set ref_update.alpha to a number in (0, 1]"),
        ("method.beta=0", "error: method.beta=0.0 is invalid"),
    ],
)
def test_cli_reports_bad_values_in_one_line_without_traceback(override, expected, tmp_path):
    out = cli(override, f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert expected in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.startswith("error:")]) == 1


def test_cli_rejects_unknown_keys_at_start_up(tmp_path):
    out = cli("method.betaa=0.1", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0
    assert "betaa" in out.stderr and "Traceback" not in out.stderr


def test_cli_rejects_non_integer_tau(tmp_path):
    out = cli("ref_update.tau=1.5", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0
    assert "ref_update.tau" in out.stderr and "Traceback" not in out.stderr


def test_cli_lists_only_the_methods_as_options_of_method(tmp_path):
    out = cli("method=dpoo", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})  # Hydra's own report
    assert out.returncode != 0
    listed = out.stderr.split("Available options in 'method':")[1].split("Config search path")[0].split()
    assert listed == sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))  # the presets, no schema
    assert {"dpo", "ipo", "kto", "hinge", "mpo"} <= set(listed)


def test_cli_multirun_gives_each_alpha_its_own_run_dir(tmp_path):
    out = cli(
        "--multirun",
        "ref_update=soft",
        "ref_update.alpha=0.1,0.5",
        *FAST,
        *TOY,
        "trainer.max_steps=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    alphas = sorted(
        float(__import__("yaml").safe_load((d / "config.yaml").read_text())["ref_update"]["alpha"])
        for d in tmp_path.iterdir()
        if (d / "config.yaml").exists()
    )
    assert alphas == [0.1, 0.5]
    # each job's dir says what varies across the sweep, not the overrides every job shares
    assert sorted(d.name for d in tmp_path.iterdir() if d.is_dir()) == [
        "0_ref_update.alpha=0.1",
        "1_ref_update.alpha=0.5",
    ]


def test_killed_run_resumes_to_the_same_metrics(fast_cfg, tmp_path):
    base = [*FAST, *TOY, "trainer.max_steps=8", "trainer.save_every=2", "ref_update.tau=1", "ref_update.alpha=0.3"]
    train(fast_cfg(*base[len(FAST) + len(TOY) :]), tmp_path / "full")
    run = tmp_path / "killed"
    env = {"TRUSTREGION_FAULT": "step:5"}
    killed = cli(*base, FAULTS, f"hydra.run.dir={run}", env=env)
    assert killed.returncode == -9
    resumed = cli(*base, f"hydra.run.dir={run}", "trainer.resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["loss"] for r in train_rows(run)] == [r["loss"] for r in train_rows(tmp_path / "full")]
    assert all(
        torch.equal(a, b)
        for a, b in zip(weights(run, "reference").values(), weights(tmp_path / "full", "reference").values())
    )


def test_checkpoint_cut_short_by_a_crash_is_never_resumed_from(fast_cfg, tmp_path):
    base = [*FAST, *TOY, "trainer.max_steps=6", "trainer.save_every=2"]
    killed = cli(*base, FAULTS, f"hydra.run.dir={tmp_path}", env={"TRUSTREGION_FAULT": "save:4"})
    assert killed.returncode == -9
    assert (tmp_path / "checkpoints" / ".tmp-step_000004").exists()
    from trustregion.training.checkpoint import complete_checkpoints

    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_000002"]


def test_kto_with_the_paired_reference_point_trains(fast_cfg, tmp_path):
    last = train(fast_cfg("method=kto", "method.reference_point=paired"), tmp_path)
    assert torch.isfinite(torch.tensor(last["loss"]))


def test_wandb_offline_run_lands_in_the_run_dir_named_by_alpha_and_tau(fast_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = fast_cfg("logger=wandb", "ref_update=soft", "ref_update.alpha=0.3", "ref_update.tau=4")
    train(cfg, tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("run-*.wandb"))
    from trustregion.training.logger import run_name

    assert run_name(cfg) == "tiny_toy_dpo-b0.1-soft-a0.3-t4-s0"


def test_resume_from_a_missing_dir_is_an_error(fast_cfg, tmp_path):
    with pytest.raises(ConfigError, match="trainer.resume=.*no such checkpoint directory"):
        train(fast_cfg(f"trainer.resume={tmp_path}/nope"), tmp_path / "run")


def test_resume_from_an_incomplete_checkpoint_is_an_error(fast_cfg, tmp_path):
    broken = tmp_path / "checkpoints" / "step_000002"
    broken.mkdir(parents=True)
    (broken / "meta.json").write_text("{}")
    with pytest.raises(ConfigError, match="incomplete or corrupt checkpoint"):
        train(fast_cfg(f"trainer.resume={broken}"), tmp_path / "run")


def test_resume_with_another_method_is_an_error(fast_cfg, tmp_path):
    train(fast_cfg("trainer.max_steps=2"), tmp_path / "dpo")
    with pytest.raises(ConfigError, match="method=dpo but this run has method=ipo"):
        train(fast_cfg("method=ipo", f"trainer.resume={tmp_path / 'dpo'}"), tmp_path / "ipo")


def test_sigterm_checkpoints_the_step_and_the_resumed_run_logs_every_row_as_if_uninterrupted(fast_cfg, tmp_path):
    base = [*FAST, *TOY, "trainer.max_steps=12", "trainer.log_every=5", "ref_update.tau=1", "ref_update.alpha=0.3"]
    full = cli(*base, f"hydra.run.dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-2000:]
    run = tmp_path / "stopped"
    stopped = cli(
        *base, FAULTS, f"hydra.run.dir={run}", env={"TRUSTREGION_FAULT": "term:7"}
    )  # mid-window: logs at 5, 10
    assert stopped.returncode == 2
    assert (
        stopped.stderr.strip()
        .splitlines()[-1]
        .startswith("error: signal 15 at step 7: checkpoint written, run stopped; continue with ")
    )
    resumed = cli(*base, f"hydra.run.dir={run}", "trainer.resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert untimed(metrics(run)) == untimed(
        metrics(tmp_path / "full")
    )  # the step-10 row averages steps 6-10 across the stop
    assert all(
        torch.equal(a, b)
        for a, b in zip(weights(run, "reference").values(), weights(tmp_path / "full", "reference").values())
    )
