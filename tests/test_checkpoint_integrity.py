"""Verified checkpoints: every file's sha256 is written with it and checked at load; a checkpoint that fails, or whose
meta.json is unreadable, is damaged and ``trainer.resume=latest`` falls back past it with a warning. Nothing in a
checkpoint runs when it is loaded, and a resume never changes the data order."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import FAST, TOY, cli
from trustregion.errors import ConfigError
from trustregion.train import train
from trustregion.training.checkpoint import CHECKSUMS, write_checksums


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


class Payload:
    """What a tampered checkpoint carries: an object whose unpickling runs a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_in_one_line_and_nothing_of_it_runs(two_checkpoints, tmp_path):
    _, newest = two_checkpoints
    marker = tmp_path / "ran"
    state = torch.load(newest / "rank0.pt", weights_only=False)  # our own file, to plant the payload in
    torch.save({**state, "extra": Payload(str(marker))}, newest / "rank0.pt")
    write_checksums(newest)  # it sits in the same dir: whoever plants the payload recomputes them
    out = cli(*FAST, *TOY, "trainer.max_steps=6", f"trainer.resume={newest}", f"hydra.run.dir={tmp_path / 'other'}")
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: trainer.resume={newest}: rank0.pt would import posix.system to load"), line
    assert not marker.exists(), "the payload ran"


@pytest.mark.unit
def test_a_deepspeed_file_carrying_code_is_found_before_deepspeed_reads_it(tmp_path):
    from trustregion.training.untrusted import first_foreign

    (tmp_path / "deepspeed").mkdir()
    torch.save({"module": {"w": torch.zeros(2)}, "x": Payload("/nonexistent")}, tmp_path / "deepspeed" / "m.pt")
    assert first_foreign(tmp_path) == ("deepspeed/m.pt", ["posix.system"])


def test_a_checkpoint_whose_checksums_were_deleted_is_damaged_not_unchecked(fast_cfg, two_checkpoints, capsys, caplog):
    run, newest = two_checkpoints
    (newest / CHECKSUMS).unlink()
    caplog.set_level("INFO", logger="trustregion")
    train(fast_cfg("trainer.max_steps=6", "trainer.save_every=2", "trainer.resume=latest"), run)
    said = capsys.readouterr().out + caplog.text
    assert "CHECKSUMS.json is missing (this checkpoint's format has one)" in said and "trying step_000002" in said


def test_a_resume_that_halves_the_global_batch_on_one_process_is_refused_naming_it(fast_cfg, two_checkpoints):
    run, _ = two_checkpoints
    with pytest.raises(ConfigError, match=r"global batch is 8 rows .* this run's is 4; set trainer.batch_size=8"):
        train(fast_cfg("trainer.max_steps=6", "trainer.resume=latest", "trainer.batch_size=4"), run)
