"""The sweep report: the overoptimization fit, reading run dirs (partial ones too), the table and the plots."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from trustregion.errors import DataError
from trustregion.report import build_report, fit_gold_vs_kl, load_run


def write_run(path: Path, method: str, tau, alpha: float, beta: float, kl: list[float], gold: list[float],
              sft_gold: float = 0.0, seed: int = 0, max_steps: int | None = None) -> Path:
    """A run dir as train() leaves it: config.yaml and metrics.jsonl with eval rows every 10 steps."""
    path.mkdir(parents=True)
    cfg = {"method": {"name": method, "beta": beta}, "ref_update": {"name": "none" if tau is None else "soft",
                                                                   "alpha": alpha, "tau": tau},
           "trainer": {"seed": seed, "max_steps": max_steps or 10 * len(kl), "batch_size": 8, "epochs": 1}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 0, "data/train_pairs": 64}) + "\n")
        for i, (k, g) in enumerate(zip(kl, gold), 1):
            f.write(json.dumps({"step": 10 * i, "loss": 0.5}) + "\n")
            f.write(json.dumps({"step": 10 * i, "eval/kl_sft": k, "eval/gold_reward": g, "eval/in_domain_rate": 0.9,
                                "eval/sft_gold_reward": sft_gold}) + "\n")
    return path


def curve(a: float, b: float, kl: np.ndarray) -> np.ndarray:
    d = np.sqrt(kl)
    return d * (a - b * np.log(d))


def test_fit_recovers_the_curve_and_its_peak():
    kl = np.linspace(0.5, 40, 30)
    fit = fit_gold_vs_kl(kl, curve(1.0, 0.5, kl))
    assert (fit.a, fit.b) == (pytest.approx(1.0), pytest.approx(0.5))
    assert fit.d_peak ** 2 == pytest.approx(math.exp(2 * (1.0 / 0.5 - 1)))  # d* = exp(a/b - 1)
    assert fit.gain_peak == pytest.approx(0.5 * math.exp(1.0)) and fit.rmse < 1e-9


def test_a_rising_family_has_no_peak_inside_its_range():
    kl = np.linspace(0.5, 10, 10)
    fit = fit_gold_vs_kl(kl, 0.3 * np.sqrt(kl))
    assert fit.extrapolated


def test_a_fit_needs_two_points_with_positive_kl():
    with pytest.raises(DataError, match="at least 2 points with KL > 0"):
        fit_gold_vs_kl([0.0, 1.0], [0.0, 0.2])


def test_report_pools_each_family_and_fits_gold_over_sft(tmp_path):
    kl = np.linspace(1, 30, 8)
    write_run(tmp_path / "0", "dpo", None, 1.0, 0.1, list(kl), list(0.2 + curve(1.0, 0.6, kl)), sft_gold=0.2)
    write_run(tmp_path / "1", "dpo", None, 1.0, 0.3, list(kl / 2), list(0.2 + curve(1.0, 0.6, kl / 2)), sft_gold=0.2)
    write_run(tmp_path / "2", "dpo", 1, 0.05, 0.1, list(kl), list(0.2 + curve(1.0, 0.4, kl)), sft_gold=0.2)
    report, runs, _ = build_report([str(tmp_path)])
    text = report.read_text()
    frozen = next(line for line in text.splitlines() if line.startswith("| dpo frozen |"))
    soft = next(line for line in text.splitlines() if line.startswith("| dpo soft a=0.05 t=1 |"))
    assert frozen.split("|")[2].strip() == "2" and frozen.split("|")[3].strip() == "16"  # runs, points
    peak = 0.2 + 0.6 * math.exp(1.0 / 0.6 - 1)
    assert float(frozen.split("|")[4].strip().rstrip("*")) == pytest.approx(peak, abs=1e-3)
    assert float(soft.split("|")[5].strip().rstrip("*")) == pytest.approx(math.exp(2 * (1.0 / 0.4 - 1)), rel=1e-3)
    d_frozen = math.exp(1.0 / 0.6 - 1)  # matched KL: the soft family's fitted gold where the frozen one peaks
    assert float(soft.split("|")[6]) == pytest.approx(0.2 + d_frozen * (1.0 - 0.4 * math.log(d_frozen)), abs=1e-3)
    assert float(frozen.split("|")[7]) == pytest.approx(math.exp(2 * 1.0 / 0.6), abs=0.1)  # back at SFT gold
    assert (tmp_path / "gold_vs_kl.png").stat().st_size > 1000 and (tmp_path / "fits.png").stat().st_size > 1000


def test_runs_without_metrics_are_skipped_and_named(tmp_path):
    write_run(tmp_path / "0", "ipo", None, 1.0, 0.1, [1.0, 4.0], [0.1, 0.3])
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "ipo", "beta": 0.1}}))
    report, runs, skipped = build_report([str(tmp_path)])
    assert [r.path.name for r in runs] == ["0"]
    assert "- `1`: no metrics.jsonl" in report.read_text()


def test_a_partial_run_is_reported_as_partial(tmp_path):
    write_run(tmp_path / "0", "kto", None, 1.0, 0.1, [1.0, 2.0], [0.1, 0.2], max_steps=100)
    run = load_run(tmp_path / "0")
    assert run.steps == [10, 20] and not run.finished
    assert "| partial |" in build_report([str(tmp_path)])[0].read_text()


def test_report_reads_a_real_training_run(fast_cfg, tmp_path):
    from trustregion.train import train

    (tmp_path / "run").mkdir()
    train(fast_cfg("eval.generate=true", "eval.prompts=4", "trainer.eval_every=2"), tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.steps == [2, 4] and run.finished and run.method == "dpo" and run.sft_gold is not None


def test_cli_says_in_one_line_when_there_is_nothing_to_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trustregion.report", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no such file or directory; "
                                                f"pass a sweep dir (outputs/multirun/<date>/<time>) or a glob"]


def test_gold_at_a_kl_is_interpolated_where_the_path_first_reaches_it(tmp_path):
    from trustregion.report import gold_at_kl

    run = load_run(write_run(tmp_path / "0", "dpo", None, 1.0, 0.1, [2.0, 6.0, 4.0, 12.0], [0.4, 0.8, 0.0, -1.0]))
    assert gold_at_kl(run, 1.0, sft_gold=0.0) == pytest.approx(0.2)  # between SFT (KL 0) and the first evaluation
    assert gold_at_kl(run, 5.0, sft_gold=0.0) == pytest.approx(0.7)  # first crossing, not the later dip to KL 4
    assert gold_at_kl(run, 20.0, sft_gold=0.0) is None
