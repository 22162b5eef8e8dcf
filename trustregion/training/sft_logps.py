"""The SFT model's log-probs of the training and held-out rows: scored before the first step (``sft_logps``), and
kept on disk for the next run of the same setting.

Every run of a sweep over update rules (α, τ, seeds of the rule alone) on one SFT model and one dataset starts by
scoring the same rows with the same model: ``trainer.sft_logps_cache=<dir>`` scores them once. A file is keyed by a
digest of everything the numbers depend on (the model's weights, the tokenized rows, the objective's chunks and
averaging, how log-probs are computed, precision, batch size, device type, torch version), so a changed input is a
miss, never a stale hit. One process only: a sharded model's weights are not whole on any rank to be digested.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from trustregion.console import say
from trustregion.engines.base import Engine
from trustregion.objectives.objective import Objective, reference_logps
from trustregion.training.splits import Splits

FORMAT = 1


def weights_digest(model: nn.Module) -> str:
    """A digest of the model's parameters and buffers: names, dtypes, shapes and bytes."""
    h = hashlib.blake2b(digest_size=20)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def rows_digest(rows: Any) -> str:
    """A digest of a tokenized split (a ``datasets.Dataset``, its rows in order), or of its absence."""
    if rows is None:
        return "none"
    import pyarrow as pa

    h = hashlib.blake2b(digest_size=20)

    table = rows.with_format("arrow")[:]  # the rows as the loop sees them, index mappings applied
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    h.update(sink.getvalue())
    return h.hexdigest()


class SFTLogpsCache:
    """One file under ``directory`` for one (model, rows, settings) key: ``load`` it, or ``save`` what was computed."""

    def __init__(self, directory: str | Path, model: nn.Module, train_rows: Any, eval_rows: Any, settings: dict):
        parts = [f"format={FORMAT}", weights_digest(model), rows_digest(train_rows), rows_digest(eval_rows)]
        parts += [f"{k}={settings[k]}" for k in sorted(settings)] + [f"torch={torch.__version__}"]
        self.key = hashlib.blake2b("\n".join(parts).encode(), digest_size=20).hexdigest()
        self.path = Path(directory) / f"sft-logps-{self.key}.pt"
        self.rows = (len(train_rows), None if eval_rows is None else len(eval_rows))

    def load(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The cached (train, eval) log-probs, or None when there are none (or the file is unreadable: said, not used)."""
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            train, held = saved["train"], saved["eval"]
            rows = (train.shape[0], None if held is None else held.shape[0])
            if saved["key"] != self.key or rows != self.rows:
                raise ValueError(
                    f"it holds {rows} rows for key {saved['key'][:12]}, not {self.rows} for {self.key[:12]}"
                )
        except Exception as e:  # a file cut short or written by something else: score the rows again
            say(f"warning: trainer.sft_logps_cache: {self.path} is unreadable ({e}); scoring the rows again")
            return None
        say(f"SFT log-probs read from {self.path} (trainer.sft_logps_cache)")
        return train, held

    def save(self, train: torch.Tensor, held: torch.Tensor | None) -> None:
        """Write the file atomically; a failed write (a full disk) is said and the run goes on without it."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": self.key, "train": train.cpu(), "eval": None if held is None else held.cpu()}, tmp)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as a RuntimeError
            tmp.unlink(missing_ok=True)
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            say(
                f"warning: trainer.sft_logps_cache: could not write {self.path} ({reason}); this run goes on without it"
            )


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (no dropout) inside the block, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def sft_logps(
    cfg: DictConfig, engine: Engine, model: nn.Module, objective: Objective, splits: Splits
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SFT model's log-probs of the training and held-out rows: scored here, or read from
    ``trainer.sft_logps_cache`` where an earlier run of the same model, rows and settings left them."""
    t = cfg.trainer
    cache = None
    if t.sft_logps_cache:
        settings = {
            "chunks": ",".join(splits.collator.chunks),
            "average": objective.average,
            "logps": f"{cfg.model.logps}/{cfg.model.logits_chunk_tokens}/{cfg.model.share_prompt}",
            "precision": t.precision,
            "batch_size": t.batch_size,
            "device": engine.device.type,
            **objective.logps_settings(),  # e.g. LD-DPO's token weighting
        }
        cache = SFTLogpsCache(t.sft_logps_cache, model, splits.train, splits.eval, settings)
        if (cached := cache.load()) is not None:
            return cached
    average, fn = objective.average, objective.logps
    with evaluation_mode(model), engine.autocast():
        train = reference_logps(engine, model, splits.train, splits.collator, t.batch_size, average, fn)
        held = reference_logps(engine, model, splits.eval, splits.collator, t.batch_size, average, fn)
    if cache is not None:
        cache.save(train, held)
    return train, held
