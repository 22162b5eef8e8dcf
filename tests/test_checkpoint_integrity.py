"""Verified checkpoints: every file's sha256 is written with it and checked at load; a checkpoint that fails, or whose
meta.json is unreadable, is damaged and ``trainer.resume=latest`` falls back past it with a warning."""

from __future__ import annotations

import json

import pytest

from trustregion.errors import ConfigError
from trustregion.train import train
from trustregion.training.checkpoint import CHECKSUMS


@pytest.fixture
def two_checkpoints(fast_cfg, tmp_path):
    train(fast_cfg("trainer.max_steps=4", "trainer.save_every=2"), tmp_path)
    return tmp_path, tmp_path / "checkpoints" / "step_000004"


def flip_bytes(path, at: int, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + n] = bytes(255 - b for b in data[at : at + n])
    path.write_bytes(bytes(data))


def test_every_file_of_a_checkpoint_has_its_checksum(two_checkpoints):
    _, newest = two_checkpoints
    sums = json.loads((newest / CHECKSUMS).read_text())
    assert {"state.pt", "loop.pt", "rank0.pt", "meta.json", "config.yaml"} <= set(sums)


def test_inverted_bytes_fall_back_to_the_checkpoint_before(fast_cfg, two_checkpoints, capsys, caplog):
    run, newest = two_checkpoints
    flip_bytes(newest / "state.pt", at=len((newest / "state.pt").read_bytes()) // 2)
    caplog.set_level("INFO", logger="trustregion")
    train(fast_cfg("trainer.max_steps=6", "trainer.save_every=2", "trainer.resume=latest"), run)
    said = capsys.readouterr().out + caplog.text
    assert "state.pt does not match its checksum" in said and "trying step_000002" in said
    assert "at step 2" in said


def test_an_explicit_resume_of_a_corrupt_checkpoint_stops_naming_the_file(fast_cfg, two_checkpoints, tmp_path):
    _, newest = two_checkpoints
    flip_bytes(newest / "rank0.pt", at=100)
    with pytest.raises(ConfigError, match=r"step_000004: rank0.pt does not match its checksum"):
        train(fast_cfg("trainer.max_steps=6", f"trainer.resume={newest}"), tmp_path / "other")


def test_garbage_in_meta_json_falls_back_to_the_checkpoint_before(fast_cfg, two_checkpoints, capsys, caplog):
    run, newest = two_checkpoints
    sums = json.loads((newest / CHECKSUMS).read_text())
    (newest / "meta.json").write_text("{not json")
    sums["meta.json"] = __import__("hashlib").sha256(b"{not json").hexdigest()  # damage the checksum cannot see
    (newest / CHECKSUMS).write_text(json.dumps(sums))
    caplog.set_level("INFO", logger="trustregion")
    train(fast_cfg("trainer.max_steps=6", "trainer.resume=latest"), run)
    said = capsys.readouterr().out + caplog.text
    assert "meta.json is unreadable" in said and "trying step_000002" in said


@pytest.mark.parametrize(
    "change,named",
    [
        (["trainer.lr=1e-3"], r"trainer.lr: 0.0003 -> 0.001"),
        (["method.beta=0.9"], r"method.beta: 0.1 -> 0.9"),
        (["ref_update=none"], r"ref_update._target_: trustregion.reference.rules.EveryTau -> .*Frozen"),
        (["ref_update.alpha=0.9"], r"ref_update.alpha: 0.6 -> 0.9"),
    ],
)
def test_a_resume_that_changes_the_runs_identity_is_refused_naming_the_key(fast_cfg, two_checkpoints, change, named):
    run, _ = two_checkpoints
    with pytest.raises(ConfigError, match=named + ".*resume with the checkpoint's values or start a new run"):
        train(fast_cfg("trainer.max_steps=6", "trainer.resume=latest", *change), run)
    assert "trainer.lr: 0.0003" not in (run / "config.yaml").read_text()  # the record is the run's


def test_a_resume_may_run_longer_and_says_so(fast_cfg, two_checkpoints, capsys, caplog):
    run, _ = two_checkpoints
    caplog.set_level("INFO", logger="trustregion")
    train(fast_cfg("trainer.max_steps=6", "trainer.log_every=2", "trainer.resume=latest"), run)
    said = capsys.readouterr().out + caplog.text
    assert "note: resuming step_000004 with trainer.max_steps: 4 -> 6" in said
    assert "note: resuming step_000004 with trainer.log_every: 1 -> 2" in said


def test_a_step_rewritten_and_cut_between_its_renames_still_resumes_from_its_earlier_copy(
    fast_cfg, two_checkpoints, capsys, caplog
):
    run, newest = two_checkpoints
    newest.rename(newest.with_name(f".old-{newest.name}"))  # as commit leaves it when killed between the renames
    caplog.set_level("INFO", logger="trustregion")
    train(fast_cfg("trainer.max_steps=6", "trainer.save_every=2", "trainer.resume=latest"), run)
    assert "at step 4" in capsys.readouterr().out + caplog.text
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000004", "step_000006"]


def test_committing_a_step_again_replaces_its_checkpoint_and_leaves_no_old_copy(two_checkpoints):
    from trustregion.training.checkpoint import begin, commit, complete_checkpoints

    run, newest = two_checkpoints
    tmp = begin(run, 4)
    (tmp / "marker").write_text("new")
    commit(tmp, keep_last=2)
    assert (newest / "marker").read_text() == "new"
    assert [p.name for p in complete_checkpoints(run)] == ["step_000002", "step_000004"]
    assert not any(p.name.startswith(".old-") for p in (run / "checkpoints").iterdir())
