"""The sweep report: families from each run's identity, matched-KL readings, intervals over seeds, paired verdicts
against the frozen reference, and the Hydra entry point."""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.helpers import FAST, REPO, TOY, cli, compose, metrics
from trustregion.errors import DataError
from trustregion.report.compare import compare
from trustregion.report.runs import gold_at_kl, load_run, load_runs, read_identity
from trustregion.report.statistics import detectable_effect, t_interval
from trustregion.report.study import Study
from trustregion.report.sweep import build_report
from trustregion.training.identity import identity_of

T_975_2DF = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (from a t-table)
T_80_2DF = 1.060660171779821  # Student's t, 80th percentile, 2 degrees of freedom: 0.6 / sqrt(0.32)
USER_RULES = f"hydra.searchpath=[file://{REPO}/tests/fixtures/conf]"


@functools.cache
def composed(overrides: tuple[str, ...]):
    """The config the CLI composes from the small settings and ``overrides`` (once per distinct list)."""
    return compose(*FAST, *TOY, *overrides)


def write_run(
    path: Path,
    method: str,
    tau,
    alpha: float,
    beta: float,
    kl: list[float],
    gold: list[float],
    sft_gold: float = 0.0,
    seed: int = 0,
    max_steps: int | None = None,
    sem: float = 0.05,
    first_step: int = 0,
    overrides: Sequence[str] = (),
    record: str = "identity",
) -> Path:
    """A run dir as train() leaves it: config.yaml (resolved) and metrics.jsonl with an eval row every 10 steps, and
    ``record``: identity.json ("identity"), Hydra's record of the composed config (".hydra"), or neither ("")."""
    rule = (
        ("ref_update=none",)
        if tau is None
        else ("ref_update=soft", f"ref_update.alpha={alpha}", f"ref_update.tau={tau}")
    )
    if any(o.startswith("ref_update=") for o in overrides):
        rule = ()
    cfg = copy.deepcopy(composed((f"method={method}", f"method.beta={beta}", *rule, *overrides)))
    cfg.trainer.seed, cfg.trainer.max_steps = seed, max_steps or 10 * (len(kl) - 1)
    path.mkdir(parents=True)
    OmegaConf.save(cfg, path / "config.yaml", resolve=True)
    if record == "identity":
        (path / "identity.json").write_text(json.dumps(identity_of(cfg).to_json(), default=str))
    elif record == ".hydra":
        (path / ".hydra").mkdir()
        OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 0, "data/train_pairs": 64}) + "\n")
        for i, (k, g) in enumerate(zip(kl, gold), first_step // 10):
            f.write(json.dumps({"step": 10 * i, "loss": 0.5}) + "\n")
            f.write(
                json.dumps(
                    {
                        "step": 10 * i,
                        "eval/kl_sft": k,
                        "eval/gold_reward": g,
                        "eval/gold_reward_sem": sem,
                        "eval/in_domain_rate": 0.9,
                        "eval/sft_gold_reward": sft_gold,
                    }
                )
                + "\n"
            )
    return path


def frozen_curve(k: float) -> float:
    return -0.2 + 0.3 * k - 0.03 * k * k  # peaks at KL 5 (0.55); sampled at 0, 2, 4, 7, 9 it peaks at 4 (0.52)


FROZEN_KL = [0.0, 2.0, 4.0, 7.0, 9.0]
TR_KL = [0.0, 1.0, 3.0, 5.0, 7.0]  # the matched KL (4) falls between two evaluations: 3 -> 0.43, 5 -> 0.55
SEED_OFFSET = {1: -0.05, 2: 0.0, 3: 0.05}  # known seed noise, shared by both sides of a pair


@pytest.fixture
def sweep(tmp_path):
    """Frozen DPO over 3 seeds and three TR families whose TR - frozen gaps at KL 4 are known per seed."""
    lifts = {  # TR family (alpha) -> per-seed lift over the frozen curve, on top of the 0.49 - 0.52 interpolation gap
        0.01: {1: 0.12, 2: 0.09, 3: 0.15},  # diffs at KL 4: 0.09, 0.06, 0.12 -> better
        0.1: {1: 0.13, 2: -0.07, 3: 0.08},  # 0.10, -0.10, 0.05 -> within noise
        0.3: {1: -0.17, 2: -0.22, 3: -0.19},  # -0.20, -0.25, -0.22 -> worse
    }
    for seed, e in SEED_OFFSET.items():
        write_run(
            tmp_path / f"frozen-{seed}",
            "dpo",
            None,
            1.0,
            0.1,
            FROZEN_KL,
            [frozen_curve(k) + e for k in FROZEN_KL],
            sft_gold=-0.2 + e,
            seed=seed,
        )
        for alpha, lift in lifts.items():
            gold = [frozen_curve(k) + (lift[seed] if k > 0 else 0.0) + e for k in TR_KL]
            write_run(tmp_path / f"soft{alpha}-{seed}", "dpo", 1, alpha, 0.1, TR_KL, gold, sft_gold=-0.2 + e, seed=seed)
    write_run(tmp_path / "ipo-frozen-1", "ipo", None, 1.0, 0.1, FROZEN_KL, [frozen_curve(k) for k in FROZEN_KL], seed=1)
    write_run(tmp_path / "ipo-hard-1", "ipo", 32, 1.0, 0.1, TR_KL, [frozen_curve(k) for k in TR_KL], seed=1)
    return tmp_path


def report_json(sweep: Path) -> dict:
    build_report([str(sweep)])
    return json.loads((sweep / "report.json").read_text())


def test_t_interval_is_the_mean_plus_minus_t_sd_over_root_n():
    iv = t_interval([0.09, 0.06, 0.12])
    assert iv.mean == pytest.approx(0.09) and iv.sd == pytest.approx(0.03)
    assert (iv.lo, iv.hi) == (
        pytest.approx(0.09 - T_975_2DF * 0.03 / math.sqrt(3)),
        pytest.approx(0.09 + T_975_2DF * 0.03 / math.sqrt(3)),
    )


def test_the_smallest_detectable_paired_effect_is_t_975_plus_t_80_times_sd_over_root_n():
    assert detectable_effect(0.03, 3) == pytest.approx((T_975_2DF + T_80_2DF) * 0.03 / math.sqrt(3))
    assert detectable_effect(0.1, 10) == pytest.approx((2.262157 + 0.883404) * 0.1 / math.sqrt(10), rel=1e-5)
    assert math.isnan(detectable_effect(0.1, 1))


def test_each_paired_comparison_states_the_smallest_effect_its_seeds_could_detect(sweep):
    build_report([str(sweep)])
    better = json.loads((sweep / "report.json").read_text())["paired"]["dpo β=0.1 soft α=0.01 τ=1"]
    assert better["at_kl_detectable"] == pytest.approx((T_975_2DF + T_80_2DF) * 0.03 / math.sqrt(3))  # sd 0.03
    assert "| detectable Δ at KL |" in (sweep / "report.md").read_text()


def test_one_seed_gives_a_mean_without_an_interval():
    iv = t_interval([0.4])
    assert iv.mean == 0.4 and math.isnan(iv.lo) and iv.verdict() == "too few seeds"


def test_families_group_runs_that_differ_only_in_seed(sweep):
    fams = report_json(sweep)["families"]
    assert fams["dpo β=0.1 frozen"]["seeds"] == [1, 2, 3]
    assert fams["dpo β=0.1 soft α=0.01 τ=1"]["seeds"] == [1, 2, 3]
    assert fams["ipo β=0.1 hard τ=32"]["seeds"] == [1]


def test_gold_at_matched_kl_is_the_mean_over_seeds_with_a_t_interval(sweep):
    at2 = report_json(sweep)["families"]["dpo β=0.1 frozen"]["gold_at_kl"]["2"]
    half = T_975_2DF * 0.05 / math.sqrt(3)  # the seed offsets -0.05, 0, 0.05 have sd 0.05
    assert at2["mean"] == pytest.approx(0.28) and at2["n"] == 3
    assert (at2["lo"], at2["hi"]) == (pytest.approx(0.28 - half), pytest.approx(0.28 + half))


def test_peak_gold_and_the_kl_at_the_peak_over_seeds(sweep):
    frozen = report_json(sweep)["families"]["dpo β=0.1 frozen"]
    assert frozen["peak_gold"]["mean"] == pytest.approx(0.52) and frozen["peak_kl"]["mean"] == pytest.approx(4.0)
    assert frozen["peak_kl"]["sd"] == pytest.approx(0.0)


def test_paired_differences_at_the_frozen_peak_kl_and_their_verdicts(sweep):
    paired = report_json(sweep)["paired"]
    better = paired["dpo β=0.1 soft α=0.01 τ=1"]
    assert better["matched_kl"] == pytest.approx(4.0) and better["seeds"] == [1, 2, 3]
    assert better["at_kl"]["mean"] == pytest.approx(0.09)
    assert better["at_kl"]["lo"] == pytest.approx(0.09 - T_975_2DF * 0.03 / math.sqrt(3))
    assert better["at_kl_verdict"] == "better"
    assert paired["dpo β=0.1 soft α=0.1 τ=1"]["at_kl"]["mean"] == pytest.approx(0.05 / 3)
    assert paired["dpo β=0.1 soft α=0.1 τ=1"]["at_kl_verdict"] == "within noise"
    assert paired["dpo β=0.1 soft α=0.3 τ=1"]["at_kl"]["mean"] == pytest.approx(-0.67 / 3)
    assert paired["dpo β=0.1 soft α=0.3 τ=1"]["at_kl_verdict"] == "worse"
    assert paired["ipo β=0.1 hard τ=32"]["at_kl_verdict"] == "too few seeds"


def test_a_family_identical_to_frozen_on_every_seed_is_called_identical(tmp_path):
    for seed in (1, 2):
        gold = [frozen_curve(k) for k in FROZEN_KL]
        write_run(tmp_path / f"frozen-{seed}", "dpo", None, 1.0, 0.1, FROZEN_KL, gold, seed=seed)
        write_run(tmp_path / f"late-{seed}", "dpo", 128, 1.0, 0.1, FROZEN_KL, gold, seed=seed)  # no update yet
    assert report_json(tmp_path)["paired"]["dpo β=0.1 hard τ=128"]["at_kl_verdict"] == "identical"


def test_differences_of_float_rounding_alone_are_called_identical():
    # Frozen runs that peak at step 0 put the matched KL at ~1e-7, where every run still is the starting model.
    assert t_interval([8e-12, -2e-11, 4e-11]).verdict() == "identical"
    assert t_interval([1.0e-4, 1.1e-4, 1.2e-4]).verdict() == "better"


def test_paired_peak_difference(sweep):
    peak = report_json(sweep)["paired"]["dpo β=0.1 soft α=0.01 τ=1"]["peak"]
    assert peak["mean"] == pytest.approx(0.55 + 0.12 - 0.52)  # TR peaks at KL 5 (0.55 + lift), frozen at 4 (0.52)


def test_best_family_per_method_is_paired_with_the_best_frozen(sweep):
    best = {b["method"]: b for b in report_json(sweep)["best"]}
    assert best["dpo"]["frozen"] == "dpo β=0.1 frozen" and best["dpo"]["tr"] == "dpo β=0.1 soft α=0.01 τ=1"
    assert best["dpo"]["diff"]["mean"] == pytest.approx(0.15) and best["dpo"]["verdict"] == "better"


def test_evaluation_noise_is_reported_beside_seed_noise(sweep):
    report_json(sweep)
    frozen = report_json(sweep)["families"]["dpo β=0.1 frozen"]
    assert frozen["eval_se"] == pytest.approx(0.05)
    row = next(
        line for line in (sweep / "report.md").read_text().splitlines() if line.startswith("| dpo β=0.1 frozen |")
    )
    assert row.rstrip(" |").endswith("0.050 | 0.050")  # eval SE, then the seed SD of peak gold


def test_a_grid_of_one_tau_gets_band_figures_but_no_heat_map(sweep):
    build_report([str(sweep)])  # alpha 0.01, 0.1, 0.3 at tau 1 alone: a column, which report.md tabulates
    for name in ("bands.png", "gold_vs_kl.png"):
        assert (sweep / name).stat().st_size > 5000, name
    assert not (sweep / "heatmap.png").exists() and not (sweep / "heatmap_peak.png").exists()


def test_a_grid_over_two_taus_gets_heat_maps(sweep):
    for seed, e in SEED_OFFSET.items():
        gold = [frozen_curve(k) + 0.05 * (k > 0) + e for k in TR_KL]
        write_run(sweep / f"soft-tau4-{seed}", "dpo", 4, 0.1, 0.1, TR_KL, gold, sft_gold=-0.2 + e, seed=seed)
    build_report([str(sweep)])
    for name in ("heatmap.png", "heatmap_peak.png"):
        assert (sweep / name).stat().st_size > 5000, name


def test_the_report_flags_families_with_fewer_than_three_seeds(sweep):
    build_report([str(sweep)])
    text = (sweep / "report.md").read_text()
    assert "Some families have fewer than 3 seeds" in text and "0.520 (1 seed)" in text


def test_runs_of_two_models_are_refused_rather_than_pooled_into_one_family(tmp_path):
    for model, seed in (("tiny", 1), ("smollm2-135m", 2)):
        write_run(
            tmp_path / model, "dpo", None, 1.0, 0.1, FROZEN_KL, [0.1] * 5, seed=seed, overrides=[f"model.name={model}"]
        )
    with pytest.raises(DataError, match=r"mix settings: model=\S+ dataset=toy \(1 runs\), .*report each setting"):
        build_report([str(tmp_path)])


def test_runs_without_metrics_are_skipped_and_named(tmp_path):
    write_run(tmp_path / "0", "ipo", None, 1.0, 0.1, [0.0, 1.0, 4.0], [0.0, 0.1, 0.3])
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "ipo", "beta": 0.1}}))
    report, study, skipped = build_report([str(tmp_path)])
    assert [r.path.name for r in study.runs] == ["0"]
    assert "- `1`: no metrics.jsonl" in report.read_text()


def test_a_partial_run_is_reported_as_partial(tmp_path):
    write_run(tmp_path / "0", "kto", None, 1.0, 0.1, [0.0, 1.0, 2.0], [0.0, 0.1, 0.2], max_steps=100)
    run = load_run(tmp_path / "0")
    assert run.steps == [0, 10, 20] and not run.finished
    assert "| partial |" in build_report([str(tmp_path)])[0].read_text()


def test_gold_at_a_kl_is_interpolated_between_the_evaluations_nearest_in_kl(tmp_path):
    run = load_run(
        write_run(tmp_path / "0", "dpo", None, 1.0, 0.1, [0.0, 2.0, 6.0, 4.0, 12.0], [0.0, 0.4, 0.8, 0.0, -1.0])
    )
    assert gold_at_kl(run, 1.0) == pytest.approx(0.2)
    assert gold_at_kl(run, 4.0) == pytest.approx(0.0)  # the evaluation at KL 4, although it came after KL 6
    assert gold_at_kl(run, 5.0) == pytest.approx(0.4)  # between KL 4 (0.0) and KL 6 (0.8)
    assert gold_at_kl(run, 20.0) is None


def test_a_run_without_a_step_0_evaluation_starts_from_the_sft_gold(tmp_path):
    run = load_run(
        write_run(tmp_path / "0", "dpo", None, 1.0, 0.1, [2.0, 4.0], [0.4, 0.6], sft_gold=0.2, first_step=10)
    )
    assert gold_at_kl(run, 1.0) == pytest.approx(0.3)


def test_compare_prints_both_runs_at_matched_kl_and_draws_both_curves(tmp_path):
    frozen = write_run(tmp_path / "frozen", "dpo", None, 1.0, 0.1, FROZEN_KL, [frozen_curve(k) for k in FROZEN_KL])
    tr = write_run(tmp_path / "tr", "dpo", 1, 0.01, 0.1, TR_KL, [frozen_curve(k) + 0.1 * (k > 0) for k in TR_KL])
    table = compare(frozen, tr, tmp_path)
    assert "| gold at KL 4.00 (frozen's peak) | 0.520 | 0.590 |" in table
    assert "| peak gold | 0.520 | 0.650 |" in table and "| KL at the peak | 4.00 | 5.00 |" in table
    assert "One seed" in table and (tmp_path / "compare.png").stat().st_size > 5000


def test_the_report_is_logged_to_wandb_as_an_artifact(sweep, monkeypatch):
    from trustregion.report.wandb_artifact import log_to_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    build_report([str(sweep)])
    artifact = log_to_wandb(sweep, Study.of(load_runs([str(sweep)])[0]), "trustregion-test")
    assert artifact.type == "sweep-report"
    assert {"report.md", "report.json", "bands.png", "gold_vs_kl.png"} <= set(artifact.manifest.entries)
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == 1  # synced later with `wandb sync`


def test_report_reads_a_real_training_run(fast_cfg, tmp_path):
    from trustregion.train import train

    (tmp_path / "run").mkdir()
    cfg = fast_cfg("eval.generate=true", "eval.prompts=4", "trainer.eval_every=2")
    train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.steps == [0, 2, 4] and run.finished and run.family.name == "dpo β=0.1 soft α=0.6 τ=1"
    assert run.identity.family == identity_of(cfg).family and run.kl[0] == pytest.approx(0.0, abs=1e-5)
    # a run from before identity.json, launched by the CLI: its config.yaml and Hydra's record give the same family
    (tmp_path / "run" / "identity.json").unlink()
    (tmp_path / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    assert read_identity(tmp_path / "run").family == run.identity.family


def test_cli_says_in_one_line_when_there_is_nothing_to_report(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trustregion.report", f"runs=[{tmp_path / 'missing'}]"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing'}: no such file or directory; "
        f"pass a sweep dir (outputs/multirun/<date>/<time>) or a glob"
    ]


def test_a_lora_trust_region_family_is_paired_with_the_lora_frozen_family(tmp_path):
    gold = [frozen_curve(k) for k in FROZEN_KL]
    for name, tau, peft in (
        ("full", None, ()),
        ("lora", None, ("peft=lora",)),
        ("exact", 1, ("peft=lora", "peft.reference=exact")),
    ):
        write_run(tmp_path / name, "dpo", tau, 0.03, 0.5, FROZEN_KL, gold, seed=1, overrides=peft)
    study = Study.of(load_runs([str(tmp_path)])[0])
    by_name = {f.name: f for f in study.families}
    lora = by_name["dpo β=0.5 LoRA exact soft α=0.03 τ=1"]
    assert study.baseline(lora) == by_name["dpo β=0.5 LoRA frozen"] != by_name["dpo β=0.5 frozen"]
    assert lora.legend == "LoRA exact soft α=0.03 τ=1" and lora.rule == "soft α=0.03 τ=1" and lora.style == "--"


def test_a_methods_options_are_in_its_family_name_but_not_in_its_rule(tmp_path):
    gold = [frozen_curve(k) for k in FROZEN_KL]
    for name, tau in (("frozen", None), ("soft", 1)):
        write_run(tmp_path / name, "robust", tau, 0.03, 0.5, FROZEN_KL, gold, seed=1)
    study = Study.of(load_runs([str(tmp_path)])[0])
    names = {f.name: f.rule for f in study.families}
    assert names == {
        "robust β=0.5 label_smoothing=0.1 frozen": "frozen",
        "robust β=0.5 label_smoothing=0.1 soft α=0.03 τ=1": "soft α=0.03 τ=1",
    }


def test_a_rule_beyond_fixed_alpha_tau_is_its_own_family_paired_with_frozen_and_the_best_fixed_rule(sweep):
    for seed, e in SEED_OFFSET.items():
        gold = [frozen_curve(k) + (0.2 if k > 0 else 0.0) + e for k in TR_KL]
        budget = ("ref_update=kl_budget", "ref_update.budget=0.1")
        write_run(
            sweep / f"budget-{seed}", "dpo", 8, 1.0, 0.1, TR_KL, gold, sft_gold=-0.2 + e, seed=seed, overrides=budget
        )
    out = report_json(sweep)
    name = "dpo β=0.1 kl_budget α=1 τ=8 budget=0.1 smoothing=0.2"
    assert out["families"][name]["seeds"] == [1, 2, 3]
    assert out["paired"][name]["at_kl_verdict"] == "better"  # against frozen
    versus = out["versus_best_fixed"][name]
    assert versus["best_fixed"] == "dpo β=0.1 soft α=0.01 τ=1"  # the highest mean peak of the soft families
    assert versus["peak"]["mean"] == pytest.approx(0.2 - 0.12)  # lifts 0.2 vs 0.12, 0.09, 0.15 (mean 0.12)


# --- families from each run's identity ------------------------------------------------------------
def test_duplicate_runs_are_counted_once_not_as_seeds(tmp_path):
    """ref_update=none,soft ref_update.alpha=0.03,0.3 trainer.seed=1,2: the frozen runs at α 0.03 and 0.3 are one
    experiment (a frozen rule ignores α), so two runs per seed, not four seeds."""
    gold = [frozen_curve(k) for k in FROZEN_KL]
    for seed in (1, 2):
        for alpha in (0.03, 0.3):
            frozen = ("ref_update=none", f"ref_update.alpha={alpha}")
            write_run(
                tmp_path / f"none-a{alpha}-s{seed}",
                "dpo",
                None,
                alpha,
                0.1,
                FROZEN_KL,
                gold,
                seed=seed,
                overrides=frozen,
            )
            write_run(tmp_path / f"soft-a{alpha}-s{seed}", "dpo", 1, alpha, 0.1, FROZEN_KL, gold, seed=seed)
    out = report_json(tmp_path)
    assert out["families"]["dpo β=0.1 frozen"]["seeds"] == [1, 2]
    assert out["families"]["dpo β=0.1 soft α=0.3 τ=1"]["seeds"] == [1, 2]
    assert sorted(d["dropped"][0] for d in out["duplicates"]) == ["none-a0.03-s1", "none-a0.03-s2"]  # the later kept
    text = (tmp_path / "report.md").read_text()
    assert "6 runs in 3 families" in text
    line = next(x for x in text.splitlines() if x.startswith("Duplicate runs"))
    assert "`none-a0.3-s1` (not `none-a0.03-s1`)" in line and "`none-a0.3-s2` (not `none-a0.03-s2`)" in line


def test_runs_that_differ_in_lr_are_not_pooled_and_the_split_names_the_key(tmp_path):
    for lr, lift in (("1e-3", 0.1), ("3e-4", -0.1)):
        for seed in (1, 2, 3):
            e = SEED_OFFSET[seed]
            frozen = [frozen_curve(k) + e for k in FROZEN_KL]
            tr = [frozen_curve(k) + (lift if k > 0 else 0.0) + e for k in FROZEN_KL]
            lr_of = [f"trainer.lr={lr}"]
            write_run(
                tmp_path / f"frozen-{lr}-{seed}", "dpo", None, 1.0, 0.1, FROZEN_KL, frozen, seed=seed, overrides=lr_of
            )
            write_run(tmp_path / f"soft-{lr}-{seed}", "dpo", 1, 0.1, 0.1, FROZEN_KL, tr, seed=seed, overrides=lr_of)
    out = report_json(tmp_path)
    assert set(out["families"]) == {
        "dpo β=0.1 frozen trainer.lr=0.001", "dpo β=0.1 frozen trainer.lr=0.0003",
        "dpo β=0.1 soft α=0.1 τ=1 trainer.lr=0.001", "dpo β=0.1 soft α=0.1 τ=1 trainer.lr=0.0003",
    }  # fmt: skip
    assert all(f["seeds"] == [1, 2, 3] for f in out["families"].values())
    paired = out["paired"]  # each lr against the frozen runs of its own lr
    assert paired["dpo β=0.1 soft α=0.1 τ=1 trainer.lr=0.001"]["peak"]["mean"] == pytest.approx(0.1)
    assert paired["dpo β=0.1 soft α=0.1 τ=1 trainer.lr=0.0003"]["peak"]["mean"] == pytest.approx(-0.1)
    assert out["splits"] == {"dpo β=0.1 frozen": ["trainer.lr"], "dpo β=0.1 soft α=0.1 τ=1": ["trainer.lr"]}
    line = next(x for x in (tmp_path / "report.md").read_text().splitlines() if x.startswith("Families that share"))
    assert "`dpo β=0.1 frozen` by `trainer.lr`" in line


def test_a_moving_rule_with_tau_null_is_not_labelled_frozen(tmp_path):
    for seed in (1, 2):
        gold = [frozen_curve(k) for k in FROZEN_KL]
        write_run(tmp_path / f"frozen-{seed}", "dpo", None, 1.0, 0.1, FROZEN_KL, gold, seed=seed)
        user = (USER_RULES, "ref_update=drift")  # tau: null; no identity.json, as an older run launched by the CLI
        write_run(
            tmp_path / f"drift-{seed}",
            "dpo",
            None,
            1.0,
            0.1,
            FROZEN_KL,
            gold,
            seed=seed,
            overrides=user,
            record=".hydra",
        )
    out = report_json(tmp_path)
    name = "dpo β=0.1 drift α=0.5 τ=null threshold=0.002"
    assert set(out["families"]) == {"dpo β=0.1 frozen", name}
    assert out["families"][name]["seeds"] == [1, 2] and out["paired"][name]["at_kl_verdict"] == "identical"


def test_a_user_rules_family_is_named_by_its_own_settings(tmp_path):
    gold = [frozen_curve(k) for k in FROZEN_KL]
    for threshold in (0.002, 0.01):
        user = (USER_RULES, "ref_update=drift", f"ref_update.threshold={threshold}")
        write_run(tmp_path / f"drift-{threshold}", "dpo", None, 1.0, 0.1, FROZEN_KL, gold, seed=1, overrides=user)
    out = report_json(tmp_path)
    assert set(out["families"]) == {
        "dpo β=0.1 drift α=0.5 τ=null threshold=0.002", "dpo β=0.1 drift α=0.5 τ=null threshold=0.01",
    }  # fmt: skip
    assert out["splits"] == {} and out["families"]["dpo β=0.1 drift α=0.5 τ=null threshold=0.01"]["rule"] == (
        "drift α=0.5 τ=null threshold=0.01"
    )


def test_a_run_without_identity_json_takes_its_identity_from_config_yaml_and_hydras_record(tmp_path):
    """Older runs: config.yaml is resolved (dataset.pair_seed = the seed); Hydra's record says it follows the seed."""
    gold = [frozen_curve(k) for k in FROZEN_KL]
    for seed, record in ((1, "identity"), (2, ".hydra"), (3, ".hydra")):
        write_run(tmp_path / f"frozen-{seed}", "dpo", None, 1.0, 0.1, FROZEN_KL, gold, seed=seed, record=record)
    assert report_json(tmp_path)["families"]["dpo β=0.1 frozen"]["seeds"] == [1, 2, 3]
    write_run(tmp_path / "bare", "dpo", None, 1.0, 0.1, FROZEN_KL, gold, seed=4, record="")
    assert "dataset.pair_seed" in read_identity(tmp_path / "bare").settings  # only trainer.seed is the seed there


def test_cli_compare_writes_into_out_and_nothing_into_the_working_dir(tmp_path):
    frozen = write_run(tmp_path / "frozen", "dpo", None, 1.0, 0.1, FROZEN_KL, [frozen_curve(k) for k in FROZEN_KL])
    tr = write_run(tmp_path / "tr", "dpo", 1, 0.01, 0.1, TR_KL, [frozen_curve(k) + 0.1 * (k > 0) for k in TR_KL])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    report = [sys.executable, "-m", "trustregion.report"]
    proc = subprocess.run(
        [*report, f"compare=[{frozen},{tr}]", f"out={tmp_path / 'out'}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| peak gold | 0.520 | 0.650 |" in proc.stdout and (tmp_path / "out" / "compare.md").exists()
    proc = subprocess.run([*report, f"runs=[{tmp_path}]"], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and (tmp_path / "report.md").exists(), proc.stderr[-2000:]
    assert list(cwd.iterdir()) == []  # no Hydra run dir, .hydra/ or log file
    proc = subprocess.run([*report, f"compare=[{frozen}]"], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: compare takes two run dirs, frozen then Trust-Region: compare=[A,B], got 1"
    ]


# --- a sweep without a gold reward ----------------------------------------------------------------
HH = Path(__file__).parent / "fixtures" / "hh"
NO_GOLD = "no gold reward: dataset=hh has no gold judge; gold columns omitted"


@pytest.fixture(scope="module")
def hh_sweep(tmp_path_factory):
    """A real sweep on data without a gold judge, trained through the CLI (one Hydra multirun): frozen and soft
    DPO, seeds 1 and 2, the tiny model on the hh fixture pairs, eval.generate=false."""
    root = tmp_path_factory.mktemp("hh_sweep")
    proc = cli(
        "-m",
        *FAST,
        "dataset=hh",
        "dataset.path=null",
        f"dataset.data_files={{train:{HH}/train.jsonl,test:{HH}/test.jsonl}}",
        "dataset.eval_samples=4",
        "trainer.batch_size=4",
        "trainer.max_steps=2",
        "trainer.save_models=false",
        "ref_update=none,soft",
        "trainer.seed=1,2",
        f"hydra.sweep.dir={root}",
        env={"OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_a_sweep_without_gold_reward_reports_held_out_preference_metrics_per_family_over_seeds(hh_sweep):
    proc = cli(f"runs=[{hh_sweep}]", "wandb_project=null", module="trustregion.report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {"none": "dpo β=0.1 frozen", "soft": "dpo β=0.1 soft α=0.6 τ=1"}
    finals: dict[str, list[dict]] = {}  # family -> each seed's final evaluation row, read from metrics.jsonl
    for run in sorted(d for d in hh_sweep.iterdir() if (d / "metrics.jsonl").exists()):
        rule = yaml.safe_load((run / "config.yaml").read_text())["ref_update"]["name"]
        finals.setdefault(names[rule], []).append([r for r in metrics(run) if "eval/loss" in r][-1])
    families = json.loads((hh_sweep / "report.json").read_text())["families"]
    assert set(families) == set(names.values())
    for name, rows in finals.items():
        assert families[name]["seeds"] == [1, 2] and families[name]["final_step"] == [2, 2]
        for key in ("rewards_sft/accuracies", "rewards_sft/margins", "rewards/margins", "logratio/policy_ref", "loss"):
            expected, got = t_interval([r[f"eval/{key}"] for r in rows]), families[name]["preference"][key]
            assert (got["mean"], got["lo"], got["hi"]) == (
                pytest.approx(expected.mean),
                pytest.approx(expected.lo, nan_ok=True),
                pytest.approx(expected.hi, nan_ok=True),
            ), (name, key)
    lines = (hh_sweep / "report.md").read_text().splitlines()
    assert lines.count(NO_GOLD) == 1
    assert not [line for line in lines if line.startswith("|") and "gold" in line]  # no gold column in any table


def test_a_report_without_gold_reward_goes_to_wandb_with_only_the_files_it_wrote(hh_sweep, monkeypatch):
    from trustregion.report.wandb_artifact import log_to_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    for stale in hh_sweep.glob("*.png"):
        stale.unlink()
    build_report([str(hh_sweep)])
    artifact = log_to_wandb(hh_sweep, Study.of(load_runs([str(hh_sweep)])[0]), "trustregion-test")
    assert set(artifact.manifest.entries) == {"report.md", "report.json"}


@pytest.fixture
def tr_only(tmp_path):
    """A gold sweep with a soft rule over three seeds and no frozen run."""
    for seed, e in SEED_OFFSET.items():
        gold = [frozen_curve(k) + e for k in TR_KL]
        write_run(tmp_path / f"soft-{seed}", "dpo", 1, 0.1, 0.1, TR_KL, gold, sft_gold=-0.2 + e, seed=seed)
    return tmp_path


def test_a_sweep_without_a_frozen_run_says_in_one_line_there_is_no_baseline(tr_only):
    text = build_report([str(tr_only)])[0].read_text()
    line = "No frozen baseline: no run in this sweep has ref_update=none, so there is nothing to compare against."
    assert text.splitlines().count(line) == 2  # in place of the paired table and of the best-per-method table
    assert "| family | seeds | matched KL |" not in text


def test_the_report_lists_only_the_files_it_wrote(tr_only):
    text = build_report([str(tr_only)])[0].read_text()
    on_disk = sorted(p.name for p in tr_only.iterdir() if p.is_file())
    assert on_disk == ["bands.png", "gold_vs_kl.png", "report.json", "report.md"]  # no pair, so no heat map
    listed = next(line for line in text.splitlines() if line.startswith("Written:"))
    assert re.findall(r"`([^`]+)`", listed) == ["report.md", "report.json", "bands.png", "gold_vs_kl.png"]


def write_preference_run(path: Path, tau, accuracy: float) -> Path:
    """A run on data without a gold judge: its final held-out evaluation has preference metrics, no gold."""
    rule = ("ref_update=none",) if tau is None else ("ref_update=soft", "ref_update.alpha=0.1", f"ref_update.tau={tau}")
    cfg = copy.deepcopy(composed(rule))
    cfg.trainer.max_steps = 10
    path.mkdir(parents=True)
    OmegaConf.save(cfg, path / "config.yaml", resolve=True)
    (path / "identity.json").write_text(json.dumps(identity_of(cfg).to_json(), default=str))
    rows = [{"step": 0, "data/train_pairs": 64}, {"step": 10, "loss": 0.5}]
    rows.append({"step": 10, "eval/rewards_sft/accuracies": accuracy, "eval/loss": 0.6})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_without_a_gold_reward_falls_back_to_the_held_out_preference_metrics(tmp_path):
    frozen = write_preference_run(tmp_path / "frozen", None, 0.55)
    tr = write_preference_run(tmp_path / "tr", 1, 0.625)
    table = compare(frozen, tr, tmp_path)
    assert "| accuracy vs SFT | 0.550 | 0.625 |" in table and "| loss | 0.600 | 0.600 |" in table
    assert "No gold reward" in table and (tmp_path / "compare.md").exists()
