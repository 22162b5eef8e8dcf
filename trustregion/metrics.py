"""Metric accumulation between log steps: tensors summed on the device, one host sync per log."""

from __future__ import annotations

import torch


class MetricBuffer:
    """Weighted sums of metric tensors between log steps: the host syncs once per log, not once per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        for key, value in metrics.items():
            value = value.detach().float() * weight
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def state_dict(self) -> dict:
        """The running sums (this rank's, on the CPU) so a resumed run logs the same window as an uninterrupted one."""
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "weights": dict(self.weights)}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.weights = dict(state["weights"])

    @staticmethod
    def merge(states: list[dict]) -> dict:
        """One window for every rank of a resized run from each saved rank's: the mean over ranks of the running sums
        (weights agree across ranks), so the ranks' mean drains the same values as before the resize."""
        sums = {k: torch.stack([s["sums"][k] for s in states]).mean(0) for k in states[0]["sums"]}
        return {"sums": sums, "weights": dict(states[0]["weights"])}

    def drain(self, engine) -> dict[str, float]:
        """The weighted means so far, averaged over ranks; empties the buffer."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        means = torch.stack([self.sums[k] / self.weights[k] for k in keys])
        values = engine.reduce_mean(means).tolist()
        self.sums, self.weights = {}, {}
        return dict(zip(keys, values))
