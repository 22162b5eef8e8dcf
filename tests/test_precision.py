"""Mixed precision: fp32 masters and optimizer state with 16-bit compute, the same meaning on one process and under
DeepSpeed; a pure 16-bit weight update is refused."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import FAST, FAULTS, TOY, cli, losses, torchrun, train_rows
from trustregion.train import train
from trustregion.training.recipe import Recipe
from trustregion.training.stages import PreferenceStage

BF16 = ["model.dtype=bfloat16", "trainer.precision=bf16-mixed"]


def test_bf16_mixed_at_lr_1e6_moves_every_trainable_tensor(fast_cfg, tmp_path):
    # An Adam step of ~1e-6 is below bf16's spacing (0.0078 at 1.0): without fp32 masters most of it rounds away.
    recipe = Recipe(
        fast_cfg(*BF16, "trainer.lr=1e-6", "trainer.max_steps=5", "ref_update=none"), tmp_path, PreferenceStage()
    )
    recipe.setup()
    policy = recipe.engine.policy
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    assert all(t.dtype == torch.float32 for t in before.values()), "the trained weights are the fp32 masters"
    recipe.train()
    recipe.cleanup()
    still = [n for n, p in policy.named_parameters() if p.requires_grad and torch.equal(p.detach(), before[n])]
    assert still == []


def test_bf16_mixed_losses_stay_within_1e_3_of_fp32(fast_cfg, tmp_path):
    common = ["trainer.max_steps=20", "trainer.log_every=1", "ref_update=soft", "ref_update.alpha=0.1"]
    train(fast_cfg(*common), tmp_path / "fp32")
    train(fast_cfg(*common, "trainer.precision=bf16-mixed"), tmp_path / "bf16")
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert bf16 != fp32, "bf16 compute ran"
    assert bf16 == pytest.approx(fp32, abs=1e-3)  # measured: 7.5e-5 at most over these 20 steps


@pytest.mark.slow
def test_bf16_mixed_resumes_exactly_after_sigterm(tmp_path):
    base = [*FAST, *TOY, *BF16, "trainer.max_steps=6", "ref_update=soft", "ref_update.alpha=0.3"]
    assert cli(*base, f"hydra.run.dir={tmp_path / 'full'}").returncode == 0
    run = tmp_path / "stopped"
    stopped = cli(*base, FAULTS, f"hydra.run.dir={run}", env={"TRUSTREGION_FAULT": "term:3"})
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    assert cli(*base, f"hydra.run.dir={run}", "trainer.resume=latest").returncode == 0
    assert losses(run) == losses(tmp_path / "full")


def test_fp16_mixed_trains_one_process_with_loss_scaling(fast_cfg, tmp_path):
    train(fast_cfg("model.dtype=float16", "trainer.precision=fp16-mixed", "trainer.max_steps=4"), tmp_path)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows(tmp_path))
    state = torch.load(tmp_path / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
    assert state["scaler"]["scale"] > 0


@pytest.mark.parametrize("dtype,fix", [("bfloat16", "bf16-mixed"), ("float16", "fp16-mixed")])
def test_a_pure_16bit_weight_update_is_refused_with_one_line(tmp_path, dtype, fix):
    out = cli(*FAST, *TOY, f"model.dtype={dtype}", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert f"model.dtype={dtype} is invalid" in out.stderr and f"trainer.precision={fix}" in out.stderr


@pytest.mark.slow
def test_two_zero3_ranks_match_one_process_in_bf16(fast_cfg, tmp_path):
    common = [*FAST, *TOY, *BF16, "deepspeed=zero3", "ref_update=soft", "ref_update.alpha=0.5", "ref_update.tau=2"]
    train(fast_cfg(*common[len(FAST) + len(TOY) :], "trainer.batch_size=16"), tmp_path / "one")
    torchrun(*common, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'two'}")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-3)
