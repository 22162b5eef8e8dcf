"""The DPO loss catalogue in training: every loss and option trains against a moving reference on one process, on two
ZeRO-3 ranks as on one process, with LoRA, and resumes exactly (BCO's running δ included); impossible combinations
are one line before anything runs."""

from __future__ import annotations

import pytest

from tests.helpers import FAST, TOY, cli, compose, logged, losses, torchrun, train_rows
from trustregion.errors import ConfigError
from trustregion.objectives.methods import checked_method
from trustregion.train import train

SLOW = pytest.mark.slow
MOVING = ["ref_update=soft", "ref_update.alpha=0.3", "ref_update.tau=1"]
PRESETS = [
    "dpo", "hinge", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero",
    "apo_down", "discopop", "sigmoid_norm", "mpo", "rpo",
]  # fmt: skip
OPTIONS = {  # options that change the log-probs themselves, the pair weights or the scores
    "ld-wpo": ["method=dpo", "method.ld_alpha=0.5", "method.use_weighting=true"],
    "f-js": ["method=robust", "method.f_divergence_type=js_divergence"],
    "cdpo-average": ["method=dpo", "method.label_smoothing=0.2", "method.average_logps=true"],
}
CASES = {**{name: [f"method={name}"] for name in PRESETS}, **OPTIONS}


@pytest.mark.parametrize("method", list(CASES.values()), ids=list(CASES))
def test_each_loss_trains_against_a_moving_reference(fast_cfg, tmp_path, method):
    train(fast_cfg(*method, *MOVING), tmp_path)
    rows = train_rows(tmp_path)
    assert len(rows) == 4 and rows[-1]["ref_updates"] == 4
    assert rows[0]["loss"] != rows[-1]["loss"], "the policy moves"
    assert all(r["rewards/margins"] == r["rewards/margins"] for r in rows)  # finite, logged


def test_the_sft_log_probs_are_cached_with_ld_alphas_weighting_alone(fast_cfg, tmp_path):
    """A frozen reference reads the cached SFT log-probs: LD-DPO's must be weighted like the policy's."""
    ld = ["method=dpo", "method.ld_alpha=0.3", "ref_update=none"]
    train(fast_cfg(*ld), tmp_path / "cached")
    train(fast_cfg(*ld, "trainer.cache_reference=false"), tmp_path / "run")
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "run"), abs=1e-6)
    assert losses(tmp_path / "cached")[0] == pytest.approx(0.6931472, abs=1e-6)  # the policy is the reference


# End to end on two ranks in make test: MPO (BCO's δ and the SFT token mean); AOT's sort and the per-token terms are
# tested at the loss on two gloo ranks (test_catalogue_ranks.py, test_logps.py) and end to end in the slow tier.
TWO_RANKS = ["mpo"]


@pytest.mark.parametrize("case", [c if c in TWO_RANKS else pytest.param(c, marks=SLOW) for c in CASES], ids=list(CASES))
def test_two_zero3_ranks_train_what_one_process_trains(tmp_path, case):
    common = [*FAST, *TOY, *CASES[case], *MOVING, "trainer.seed=3"]
    train(compose(*common, "trainer.batch_size=16"), tmp_path / "one")
    torchrun(*common, "deepspeed=zero3", "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'two'}")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    for key in ("rewards/margins", "bco/delta", "wpo/weight"):
        assert logged(tmp_path / "two", key) == pytest.approx(logged(tmp_path / "one", key), abs=1e-5), key


def test_bcos_running_delta_resumes_where_it_stopped(fast_cfg, tmp_path):
    common = ["method=bco_pair", *MOVING, "trainer.max_steps=6"]
    train(fast_cfg(*common), tmp_path / "full")
    train(fast_cfg(*common, "trainer.max_steps=3"), tmp_path / "cut")
    train(fast_cfg(*common, "trainer.resume=latest"), tmp_path / "cut")
    full, cut = train_rows(tmp_path / "full"), train_rows(tmp_path / "cut")
    assert [r["bco/delta"] for r in cut] == pytest.approx([r["bco/delta"] for r in full], abs=1e-7)
    assert [r["loss"] for r in cut] == pytest.approx([r["loss"] for r in full], abs=1e-6)
    assert len({round(r["bco/delta"], 9) for r in full}) == 6, "δ moves every step"


@pytest.mark.parametrize("method", ["bco_pair", "aot"])
def test_a_catalogue_loss_trains_lora_adapters_against_a_moving_reference(fast_cfg, tmp_path, method):
    train(fast_cfg(f"method={method}", *MOVING, "peft=lora", "peft.reference=exact"), tmp_path)
    rows = train_rows(tmp_path)
    assert rows[-1]["ref_updates"] == 4 and rows[0]["loss"] != rows[-1]["loss"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=nca_pair", "method.f_divergence_type=forward_kl"], "method.f_divergence_type=forward_kl is invalid"),
        (["method=aot", "method.use_weighting=true"], "it sorts the pairs"),
        (["method=exo_pair", "method.label_smoothing=0"], "for exo_pair"),
        (["method=robust", "method.label_smoothing=0.5"], "in \\[0, 0.5\\) for robust"),
        (["method=mpo", "method.loss_weights=[1.0]"], "3 numbers, one per method.loss_type"),
        (["method=sigmoid_norm", "method.average_logps=true"], "false with sigmoid_norm"),
        (["method=dpo", "method.loss_type=[sigmod]"], "method.loss_type=\\['sigmod'\\] is invalid"),
        (["method=dpo", "method.ld_alpha=1.5"], "method.ld_alpha=1.5 is invalid"),
    ],
)
def test_a_combination_that_cannot_run_is_one_line_naming_the_setting(overrides, message):
    cfg = compose(*overrides)
    with pytest.raises(ConfigError, match=message):
        checked_method(cfg.method, cfg)


def test_the_command_line_refuses_it_before_any_run_starts(tmp_path):
    out = cli(*FAST, "method=aot", "method.use_weighting=true", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "method.use_weighting=true is invalid" in out.stderr and not (tmp_path / "metrics.jsonl").exists()
