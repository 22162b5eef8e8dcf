"""The checkpoint format, owned here alone: atomic directories that ``latest`` can trust.

A checkpoint ``checkpoints/step_NNNNNN`` is written under ``.tmp-step_NNNNNN`` and renamed once
complete. It holds the engine's state (policy, reference, optimizer, scheduler: ``Engine.save``), the
loop's shared state (``loop.pt``: step, data position, cached SFT log-probs), each rank's own state
(``rank{N}.pt``: the reference update's state, RNG states), ``meta.json`` (what a resume must match) and
the resolved config.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from trustregion.console import say
from trustregion.errors import ConfigError, TrainingError, lost_peer
from trustregion.training.identity import MODEL_EXECUTION, flat, may_change_on_resume
from trustregion.training.untrusted import first_foreign, load_tensors

PREFIX = "step_"
COMPLETE = "COMPLETE"
CHECKSUMS = "CHECKSUMS.json"  # sha256 of every file, written last (before COMPLETE) and checked at load
# meta.json's "format": 2 has CHECKSUMS.json (required at load) and tensors-only .pt files; none: written before.
FORMAT = 2


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def rng_state() -> dict:
    """Every RNG's state as tensors and plain data (numpy's key array as a tensor), so it loads with
    ``weights_only``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first. A step being written again (``commit``) is its ``.old-`` copy
    until the new one is in place, so a crash between the two renames still finds it."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    complete = [p for p in root.iterdir() if (p / COMPLETE).exists()]
    found = {p.name: p for p in complete if p.name.startswith(PREFIX)}
    for p in complete:
        if p.name.startswith(f".old-{PREFIX}"):
            found.setdefault(p.name[len(".old-") :], p)
    return sorted(found.values(), key=lambda p: int(p.name.rsplit("_", 1)[1]))


def begin(run_dir: Path, step: int) -> Path:
    """The temporary directory to write step ``step``'s checkpoint into."""
    tmp = checkpoint_dir(run_dir) / f".tmp-{PREFIX}{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, keep_last: int) -> Path:
    """Mark ``tmp`` complete, rename it into place, and prune all but the newest ``keep_last``. A step written
    again (a resumed final evaluation) keeps its earlier checkpoint as ``.old-`` until the new one is in place."""
    (tmp / COMPLETE).write_text("ok\n")
    for stray in tmp.parent.glob(f".old-{PREFIX}*"):  # left by a commit cut between its renames: put back
        if (stray / COMPLETE).exists() and not stray.with_name(stray.name[len(".old-") :]).exists():
            os.replace(stray, stray.with_name(stray.name[len(".old-") :]))
    final = tmp.parent / tmp.name[len(".tmp-") :]
    old = tmp.parent / f".old-{final.name}"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    for old in complete_checkpoints(tmp.parent.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_meta(directory: Path, meta: dict) -> None:
    (directory / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint dir that ``trainer.resume`` names, checked; None to start fresh."""
    if resume is None:
        return None
    if resume == "latest":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if path.is_dir() and (path / "checkpoints").is_dir():
        found = complete_checkpoints(path)
        if not found:
            raise ConfigError(
                f"trainer.resume={resume}: the run has no complete checkpoint; start without trainer.resume"
            )
        return found[-1]
    if not path.is_dir():
        raise ConfigError(
            f"trainer.resume={resume}: no such checkpoint directory; set trainer.resume to a checkpoints/step_* dir or 'latest'"
        )
    if not (path / COMPLETE).exists() or not (path / "meta.json").exists():
        raise ConfigError(
            f"trainer.resume={resume}: incomplete or corrupt checkpoint (no {COMPLETE} marker); pick an earlier step_* dir"
        )
    return path


class DamagedCheckpoint(ConfigError):
    """A checkpoint whose files are missing or cannot be read (a truncated ``.pt``, a lost shard)."""


class SeenByAllRanks(DamagedCheckpoint):
    """Damage every rank learns of alike (a checksum, ``meta.json``), so all ranks may fall back together."""


def resume_candidates(resume: str | None, run_dir: Path) -> list[Path]:
    """The checkpoints to try, best first: with ``latest`` every complete one of this run dir, newest first
    (a damaged one falls back to the one before); else the one ``trainer.resume`` names."""
    if resume == "latest":
        return complete_checkpoints(run_dir)[::-1]
    found = resolve_resume(resume, run_dir)
    return [found] if found is not None else []


def _read(path: Path, what: str, load: Callable[[], Any]) -> Any:
    """``load()``, with a missing or unreadable file turned into one line naming it."""
    try:
        return load()
    except Exception as e:  # noqa: BLE001 - torch, zipfile and pickle raise many types for a cut file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DamagedCheckpoint(
            f"trainer.resume={path}: {what} is damaged or missing ({first}); resume from an earlier checkpoint"
        ) from e


def read_meta(path: Path) -> dict:
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise SeenByAllRanks(f"trainer.resume={path}: meta.json is unreadable ({e}); resume from an earlier one") from e


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """The sha256 of every file under ``directory`` (a checkpoint being written), in ``CHECKSUMS.json``."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in (CHECKSUMS, COMPLETE))
    sums = {str(p.relative_to(directory)): sha256(p) for p in files}
    (directory / CHECKSUMS).write_text(json.dumps(sums, indent=1))


def verify_checksums(path: Path) -> str | None:
    """The first file of checkpoint ``path`` that is missing or differs from its checksum; None when all match (or
    the checkpoint predates checksums: its ``meta.json`` has no ``format``; from format 2 on ``CHECKSUMS.json`` is
    required, so deleting it does not turn the check off)."""
    listed = path / CHECKSUMS
    if not listed.exists():
        try:
            has_format = "format" in json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            has_format = True  # meta.json is damaged too: read_meta says so
        return CHECKSUMS if has_format else None
    try:
        sums = json.loads(listed.read_text())
    except (OSError, ValueError):
        return CHECKSUMS
    for name, digest in sums.items():
        if not (path / name).is_file() or sha256(path / name) != digest:
            return name
    return None


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed) changes between a checkpoint's resolved config and this run's, as ``key: old -> new``.
    Settings the checkpoint's config does not have (added to the project since) are not compared."""
    old, new = flat(saved), flat(current)
    refused, allowed = [], []
    for key in sorted(k for k in old if k in new and old[k] != new[k]):
        change = f"{key}: {_short(old[key])} -> {_short(new[key])}"
        (allowed if may_change_on_resume(key) else refused).append(change)
    return refused, allowed


def _short(value: Any) -> str:
    text = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(identity changes, execution-only changes) between two ``model`` entries, as ``model.key: old -> new``."""
    identity, execution = [], []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old != new:
            change = f"model.{key}: {_short(old)} -> {_short(new)}"
            (execution if key in MODEL_EXECUTION else identity).append(change)
    return identity, execution


def check_compatible(meta: dict, current: dict, path: Path) -> list[str]:
    """Refuse to resume a checkpoint of another model or method, or with another global batch (``trainer.batch_size``
    x world size: the data order); another world size only under the checkpoint's ZeRO stage. Returns the
    execution-only model settings that changed (allowed)."""
    identity, execution = _model_changes(meta.get("model") or {}, current.get("model") or {})
    if identity:
        raise ConfigError(
            f"trainer.resume={path}: the checkpoint's model differs ({'; '.join(identity)}); resume with the "
            "checkpoint's settings or start a new run"
        )
    if meta.get("method") != current.get("method"):
        raise ConfigError(
            f"trainer.resume={path}: checkpoint has method={meta.get('method')} but this run has "
            f"method={current.get('method')}; resume with the same method or start a new run"
        )
    stage, this_stage = meta.get("deepspeed_stage"), current.get("deepspeed_stage")
    if stage is not None and stage != this_stage:  # checkpoints from before the key was written pass
        raise ConfigError(
            f"trainer.resume={path}: checkpoint has deepspeed.stage={stage} but this run has deepspeed.stage="
            f"{this_stage}; resume with deepspeed.stage={stage} (a checkpoint's format follows its engine)"
        )
    saved, world = meta.get("world_size"), current.get("world_size")
    if saved != world and not stage:
        raise ConfigError(
            f"trainer.resume={path}: checkpoint has world_size={saved} but this run has world_size={world}; only a "
            f"DeepSpeed ZeRO checkpoint (deepspeed.stage 1-3) resumes at another world size: resume with {saved} "
            "process(es)"
        )
    # The data position is counted in global batches: another global batch would re-read or skip rows.
    rows, this_rows = meta.get("global_batch"), current.get("global_batch")
    if rows is not None and rows != this_rows:
        fix = f"trainer.batch_size={rows // world}" if rows % world == 0 else f"trainer.batch_size x world_size={rows}"
        raise ConfigError(
            f"trainer.resume={path}: checkpoint's global batch is {rows} rows (trainer.batch_size x world_size) but "
            f"this run's is {this_rows}; set {fix} to keep the data order"
        )
    return execution


@dataclass
class Snapshot:
    """A checkpoint's contents besides the engine's: the step, the loop state every rank shares (rank 0 writes it),
    this rank's own state, and what a resume must match (``meta.json``)."""

    step: int
    shared: dict[str, Any]
    mine: dict[str, Any]
    meta: dict[str, Any]


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_failure(tmp: Path, error: Exception) -> TrainingError:
    """One line for a checkpoint that could not be written (a full disk, a read-only dir); the partial one removed,
    the complete ones before it untouched."""
    free = shutil.disk_usage(tmp.parent).free
    shutil.rmtree(tmp, ignore_errors=True)
    kept = complete_checkpoints(tmp.parent.parent)
    need = f"the last one took {_tree_bytes(kept[-1]) / 2**20:.1f} MiB" if kept else "its size is in the start-up line"
    step = tmp.name.removeprefix(".tmp-")
    peer = lost_peer(error, tmp.parent.parent)
    if peer is not None:  # not the disk: another rank is gone
        return TrainingError(peer.replace("lost mid-run", f"lost while checkpoint {step} was written"))
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        s in str(error) for s in ("unexpected pos", "No space left")
    )
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if not full:  # a read-only dir, a permission: fixing it is the advice, not space
        return TrainingError(
            f"cannot write checkpoint {step} in {tmp.parent}: {reason}; fix that, then continue with "
            f"trainer.resume={tmp.parent.parent}"
        )
    return TrainingError(
        f"cannot write checkpoint {step} in {tmp.parent}: no space left on the device ({free / 2**20:.1f} MiB "
        f"free; {need}); free space (or lower trainer.keep_last), then continue with trainer.resume={tmp.parent.parent}"
    )


def save(
    run_dir: Path,
    engine,
    snapshot: Snapshot,
    cfg: DictConfig,
    after_engine: Callable[[Path], None] | None = None,
    optimizer: bool = True,
) -> None:
    """Write ``snapshot``'s checkpoint from every rank; rank 0 writes the shared parts and commits, keeping
    ``trainer.keep_last``. ``optimizer=False`` leaves the optimizer and scheduler state out (the final checkpoint);
    ``after_engine(directory)`` runs once the engine's state is in the (uncommitted) directory."""
    step = snapshot.step
    tmp = begin(run_dir, step) if engine.is_main else None
    tmp = engine.broadcast_path(tmp)
    try:
        engine.save(tmp, optimizer=optimizer)
        if after_engine is not None:
            after_engine(tmp)
        torch.save({**snapshot.mine, "rng": rng_state()}, tmp / f"rank{engine.rank}.pt")
        if engine.is_main:
            torch.save({"step": step, **snapshot.shared}, tmp / "loop.pt")
            write_meta(tmp, {**snapshot.meta, "format": FORMAT, "step": step, "optimizer_state": optimizer})
            OmegaConf.save(cfg, tmp / "config.yaml", resolve=True)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as a RuntimeError
        raise write_failure(tmp, e) from e
    try:
        engine.barrier()
        if engine.is_main:
            write_checksums(tmp)
            commit(tmp, int(cfg.trainer.keep_last))
        engine.barrier()
    except (OSError, RuntimeError) as e:  # a full disk, or a rank lost at the barrier
        raise write_failure(tmp, e) from e


def check_config(path: Path, cfg: DictConfig, engine) -> None:
    """Refuse a resume that changes the run's identity (naming each key, its old and new value); note the rest."""
    saved_file = path / "config.yaml"
    if not saved_file.exists():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_file), resolve=False)
    current = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    refused, allowed = config_changes(saved, current)
    if refused:
        raise ConfigError(
            f"trainer.resume={path}: this run changes {'; '.join(refused)}; these settings are the run's identity: "
            "resume with the checkpoint's values or start a new run"
        )
    for change in allowed:
        if engine.is_main and not change.startswith(("trainer.resume:", "model.")):  # model notes: check_compatible
            say(f"note: resuming {path.name} with {change}")


def load(
    path: Path, engine, identity: dict, merge_ranks: Callable[[list[dict]], dict], cfg: DictConfig | None = None
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Restore the engine and this rank's RNG from checkpoint ``path``, after checking it matches ``identity``;
    returns (step, shared state, this rank's state). Written at another world size, this rank's state is
    ``merge_ranks`` of every saved rank's (the engine re-shards its own)."""
    # Rank 0 reads every file once; the verdict reaches every rank, so all fall back (or stop) together.
    bad = verify_checksums(path) if engine.is_main else None
    if float(engine.reduce_sum(torch.tensor(0.0 if bad is None else 1.0, device=engine.device))) > 0:
        what = "is missing (this checkpoint's format has one)" if bad == CHECKSUMS else "does not match its checksum"
        raise SeenByAllRanks(
            f"trainer.resume={path}: {bad or 'a file'} {what} (changed or cut after it was written); resume from "
            "an earlier checkpoint"
        )
    foreign = first_foreign(path) if engine.is_main else None
    if float(engine.reduce_sum(torch.tensor(0.0 if foreign is None else 1.0, device=engine.device))) > 0:
        name, objects = foreign or ("a file", ["objects"])
        raise ConfigError(
            f"trainer.resume={path}: {name} would import {', '.join(objects[:3])} to load, not only tensors and plain "
            "data; nothing of it was run: resume from a checkpoint you wrote yourself, or start a new run"
        )
    meta = read_meta(path)
    for change in check_compatible(meta, identity, path):
        if engine.is_main:
            say(f"note: resuming {path.name} with {change} (an execution setting; results do not depend on it)")
    if cfg is not None:
        check_config(path, cfg, engine)
    if not meta.get("optimizer_state", True):
        raise ConfigError(
            f"trainer.resume={path}: this final checkpoint holds no optimizer state (trainer.final_optimizer_state="
            "false); start a new run from its weights with model.path=<run dir>/policy, or resume an earlier one"
        )

    def rank_state(rank: int) -> dict:
        return _read(path, f"rank{rank}.pt", lambda: load_tensors(path / f"rank{rank}.pt"))

    saved = int(meta["world_size"])
    mine = rank_state(engine.rank) if saved == engine.world_size else merge_ranks([rank_state(r) for r in range(saved)])
    shared = _read(path, "loop.pt", lambda: load_tensors(path / "loop.pt"))
    _read(path, "the model and optimizer state", lambda: engine.load(path))
    set_rng_state(mine.pop("rng"))
    return int(shared.pop("step")), shared, mine
