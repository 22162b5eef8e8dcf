"""What a checkpoint holds of a run besides the engine's (``RunState``): it round-trips, a rank's own state is rebuilt
from every saved rank's at another world size, and the start-up line says what one checkpoint costs on disk."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from trustregion.data.batches import BatchStream
from trustregion.metrics import MetricBuffer
from trustregion.training.guard import DivergenceGuard
from trustregion.training.run_state import RunState, checkpoint_note
from trustregion.training.state import TrainState

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast


def run_state(rank: int = 0) -> RunState:
    engine = SimpleNamespace(rank=rank, device=torch.device("cpu"), world_size=2)
    stream = BatchStream(64, 8, world_size=1, rank=0, seed=0, shuffle=True)
    return RunState(engine, TrainState(), stream, DivergenceGuard(10.0), MetricBuffer(), None, {"method": "dpo"})


def saved_rank(loss: float, tokens: int) -> dict:
    buffer = MetricBuffer()
    buffer.add({"loss": torch.tensor(loss)})
    return {"metrics": buffer.state_dict(), "tokens": torch.tensor(tokens), "rng": f"rng of a rank with {tokens}"}


def test_the_state_round_trips_through_its_state_dict():
    before = run_state()
    before.state.step, before.state.sft_train, before.state.last = 3, torch.ones(64, 2), {"loss": 0.5}
    before.state.tokens, before.state.evaluation = torch.tensor(17), {"eval/kl_ref": 0.75}
    before.stream.next()
    before.buffer.add({"loss": torch.tensor(0.25)})
    shared, mine = before.state_dict()
    after = run_state()
    after.load_state_dict(7, shared, mine)
    assert after.state.step == 7 and after.state.resumed and after.state.last == {"loss": 0.5}
    assert torch.equal(after.state.sft_train, torch.ones(64, 2)) and int(after.state.tokens) == 17
    assert after.stream.state_dict() == before.stream.state_dict()
    assert after.state.evaluation == {"eval/kl_ref": 0.75}  # what an update rule reads of the latest evaluation
    assert after.buffer.drain(SimpleNamespace(reduce_mean=lambda t: t)) == {"loss": 0.25}


def test_at_another_world_size_a_rank_gets_the_mean_window_and_rank_0_the_tokens():
    saved = [saved_rank(1.0, 10), saved_rank(3.0, 20)]
    first, third = run_state(rank=0).merge_rank_states(saved), run_state(rank=2).merge_rank_states(saved)
    assert first["rng"] == "rng of a rank with 10" and third["rng"] == "rng of a rank with 10"  # rank 2 was not saved
    assert int(first["tokens"]) == 30 and int(third["tokens"]) == 0  # counted once over the ranks
    assert float(third["metrics"]["sums"]["loss"]) == 2.0
    assert run_state(rank=1).merge_rank_states(saved)["rng"] == "rng of a rank with 20"


def test_the_disk_note_counts_policy_reference_and_adam_moments():
    engine = SimpleNamespace(policy_bytes=lambda: 2**20, policy_numel=lambda trainable=False: 2**18)
    t = OmegaConf.create({"save_every": 0, "save_final": True, "keep_last": 2})
    note = checkpoint_note(t, engine, torch.nn.Linear(1, 1), lora=False)
    assert note == (
        "one checkpoint ≈ 4.0 MiB (policy, reference, optimizer), written at the end; trainer.keep_last=2 keeps at "
        "most 2"
    )
    t.save_final = False
    assert checkpoint_note(t, engine, None, lora=False).startswith("no checkpoints (trainer.save_every=0")
