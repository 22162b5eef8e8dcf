"""The divergence guard: a non-finite or exploding loss or gradient norm stops the run with one line naming the step
and the metric, and no checkpoint is written after it."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import FAST, TOY, cli
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
    with pytest.raises(Diverged, match=r"grad_norm exploded at step 12: 150 is 150x its running reference 1"):
        guard.check(engine)


@pytest.mark.unit
def test_a_loss_falling_toward_zero_does_not_make_noise_an_explosion(engine):
    guard = DivergenceGuard(factor=100)
    feed(guard, [0.69] + [0.001] * 20 + [0.5], [1.0] * 22)
    guard.check(engine)  # 0.5 is 500x the median but below 100x the first loss


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
