"""The divergence guard: a non-finite or exploding loss or gradient norm (the loss: far above the run's own start, from
the second step) stops the run with one line naming the step, the metric, the last sound checkpoint and advice the
resume accepts, and no checkpoint is written after it."""

from __future__ import annotations

import shlex
import subprocess

import pytest
import torch

from tests.helpers import FAST, REPO, TOY, cli
from trustregion.engines.base import OptimSettings
from trustregion.engines.local import LocalEngine
from trustregion.training.guard import Diverged, DivergenceGuard


@pytest.fixture
def engine():
    return LocalEngine(torch.nn.Linear(2, 2), None, OptimSettings(lr=1e-3, total_steps=10, device="cpu"))


def feed(guard: DivergenceGuard, losses: list[float], norms: list[float], start: int = 1) -> None:
    for i, (loss, norm) in enumerate(zip(losses, norms)):
        guard.observe(start + i, torch.tensor(loss), torch.tensor(norm))


@pytest.mark.unit
def test_a_gradient_norm_100x_its_running_median_stops_naming_the_step(engine):
    guard = DivergenceGuard(factor=100)
    feed(guard, [0.69] * 12, [1.0] * 11 + [150.0])
    with pytest.raises(Diverged, match=r"grad_norm exploded at step 12: 150 is 150x its running median 1"):
        guard.check(engine)


@pytest.mark.unit
def test_a_gradient_norm_10x_its_running_median_is_said_once_and_the_run_goes_on(engine, caplog):
    guard = DivergenceGuard(factor=100)
    feed(guard, [0.69] * 14, [10.0] * 11 + [125.0, 130.0, 11.0])
    with caplog.at_level("INFO", logger="trustregion"):
        guard.check(engine)
    assert [r.getMessage() for r in caplog.records if "warning" in r.getMessage()] == [
        "warning: grad_norm 125 at step 12 is 12.5x its running median 10: the run may be diverging "
        "(its samples turning to garble); a lower trainer.lr steadies it"
    ]


@pytest.mark.unit
def test_a_gradient_norm_under_10x_its_running_median_is_not_said(engine, caplog):
    guard = DivergenceGuard(factor=None)
    feed(guard, [0.69] * 11 + [50.0], [10.0] * 11 + [99.0])  # nor a loss jump: the warning is the gradient norm's
    with caplog.at_level("INFO", logger="trustregion"):
        guard.check(engine)
    assert not [r for r in caplog.records if "warning" in r.getMessage()]


@pytest.mark.unit
def test_a_loss_falling_toward_zero_does_not_make_noise_an_explosion(engine):
    guard = DivergenceGuard(factor=100)
    feed(guard, [0.69] + [0.001] * 20 + [0.5], [1.0] * 22)
    guard.check(engine)  # 0.5 is 500x the median but below 100x the first loss


@pytest.mark.unit
def test_a_loss_far_above_the_runs_start_stops_from_the_second_step(engine):
    guard = DivergenceGuard(factor=100)
    feed(guard, [0.69, 765.0], [1.0, 1.0])
    with pytest.raises(Diverged, match=r"loss exploded at step 2: 765 is 1.11e\+03x the run's first loss 0.69"):
        guard.check(engine)


@pytest.mark.unit
def test_a_loss_that_climbs_step_by_step_cannot_carry_its_reference_up(engine):
    guard = DivergenceGuard(factor=100)
    feed(guard, [0.69 * 1.5**i for i in range(20)], [1.0] * 20)  # never 100x the step before, 100x the start by 12
    with pytest.raises(Diverged, match="loss exploded at step 13"):
        guard.check(engine)


@pytest.mark.unit
def test_a_non_finite_value_stops_at_once(engine):
    guard = DivergenceGuard(factor=None)
    feed(guard, [0.69, float("nan")], [1.0, 1.0])
    with pytest.raises(Diverged, match="non-finite loss at step 2"):
        guard.check(engine)


@pytest.mark.unit
def test_the_guard_resumes_with_its_history(engine):
    guard = DivergenceGuard(factor=100)
    feed(guard, [0.69] * 12, [1.0] * 12)
    guard.check(engine)
    resumed = DivergenceGuard(factor=100)
    resumed.load_state_dict(guard.state_dict())
    feed(resumed, [0.69], [500.0], start=13)
    with pytest.raises(Diverged, match="step 13"):
        resumed.check(engine)


def test_a_diverging_run_stops_with_one_line_and_keeps_no_checkpoint_after_it(tmp_path):
    # lr 1e3: the toy run's gradient norm explodes within a few steps while DPO's logsigmoid keeps the loss finite.
    args = [*FAST, *TOY, "trainer.lr=1e3", "trainer.max_steps=30", "trainer.log_every=5", "trainer.save_every=5"]
    out = cli(*args, f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and ("exploded at step" in line or "non-finite" in line), line
    assert "lower trainer.lr or method.beta" in line
    assert not (tmp_path / "policy").exists(), "a diverged run exports nothing"
    for kept in (tmp_path / "checkpoints").glob("step_*"):
        state = torch.load(kept / "state.pt", weights_only=False)
        assert all(torch.isfinite(t).all() for t in state["policy"].values())


def test_bf16_at_lr_1e3_stops_at_its_first_step_far_above_the_start_with_advice_the_resume_accepts(tmp_path):
    args = [
        *FAST,
        *TOY,
        "trainer.precision=bf16-mixed",
        "trainer.lr=1e3",
        "trainer.max_steps=3",
        "trainer.save_every=1",
    ]
    out = cli(*args, f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: loss exploded at step 2:"), line
    assert f"the last sound checkpoint is {tmp_path / 'checkpoints' / 'step_000001'}" in line
    assert "start a new run in a new run dir with a lower trainer.lr or method.beta (e.g. trainer.lr=100)" in line
    assert not (tmp_path / "policy").exists(), "a diverged run exports nothing"
    command = line.split("continue this run without the check: ", 1)[1].split("; metrics so far", 1)[0]
    resumed = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True, timeout=300)
    said = resumed.stdout + resumed.stderr
    assert f"resuming {tmp_path / 'checkpoints' / 'step_000001'} at step 1" in said, said[-2000:]
    assert "note: resuming step_000001 with trainer.divergence_factor: 100.0 -> None" in said
