"""Seeded, resumable batch order: each epoch a fresh permutation; each rank takes its slice of a global batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class BatchStream:
    """Yields the row indices of this rank's micro-batches, epoch after epoch, dropping the last partial batch.

    The state is two integers (``epoch``, ``position``), so resuming needs no saved iterator.
    """

    num_rows: int
    batch_size: int  # per rank
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    position: int = 0  # global micro-batches consumed in this epoch
    lengths: list[int] | None = None  # when given, batches group rows of similar length (less padding)
    _perm: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_rows // self.global_batch

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            if self.lengths is not None:
                from trustregion.data.tokenize import length_grouped_order

                order = length_grouped_order(self.lengths, self.global_batch, self.seed * 1_000_003 + epoch)
                self._perm = (epoch, torch.tensor(order))
            elif self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = (epoch, torch.randperm(self.num_rows, generator=g))
            else:
                self._perm = (epoch, torch.arange(self.num_rows))
        return self._perm[1]

    def next(self) -> list[int]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position * self.global_batch + self.rank * self.batch_size
        self.position += 1
        return self._order(self.epoch)[start : start + self.batch_size].tolist()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
