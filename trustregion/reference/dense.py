"""The dense way to apply a reference update: ref <- alpha*policy + (1-alpha)*ref over matching lists of tensors.

alpha = 1 is a copy. The mix is one fused ``torch._foreach_lerp_`` over all tensors, in place. Where the reference is kept
in a 16-bit dtype the mix happens in an fp32 master copy, then is cast back, so that a small alpha
does not round away. Floating-point buffers follow the same rule as parameters (in causal LMs they
are constants such as rotary frequencies, identical in both models, so this is a no-op for them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

_CHUNK = 1 << 24  # elements upcast at once when policy and master dtypes differ


def mixable_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors a reference update touches: parameters, then floating-point buffers, in a fixed order."""
    tensors = [p for p in model.parameters()]
    tensors += [b for b in model.buffers() if b.is_floating_point()]
    return tensors


class DenseApplier:
    """Mixes ``reference_tensors`` toward ``policy_tensors`` (an ``Applier``).

    ``policy_tensors`` and ``reference_tensors`` are matching lists (same order, same shapes): whole
    tensors on one process, or each rank's own shards under ZeRO-3 (see ``trustregion.engines.zero``).
    """

    def __init__(
        self,
        policy_tensors: Iterable[torch.Tensor],
        reference_tensors: Iterable[torch.Tensor],
        late_pairs: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
        replicated: tuple[int, int] = (0, 1),
    ) -> None:
        """``replicated`` = (n, ranks): the last n tensors are whole on each of ``ranks`` ranks (ZeRO-3's buffers
        beside parameter shards), so ``distance`` counts each once after its caller sums over the ranks."""
        self.policy = list(policy_tensors)
        self.replicated = replicated
        # Tensors whose storage is swapped during training (ZeRO-3 persistent parameters): looked up
        # at every update as (policy, reference) pairs; empty ones (not gathered yet) are skipped.
        self.late_pairs = late_pairs
        self._late_masters: dict[int, torch.Tensor] = {}
        self.reference = list(reference_tensors)
        if len(self.policy) != len(self.reference):
            raise ValueError(f"policy has {len(self.policy)} tensors, reference {len(self.reference)}")
        for p, r in zip(self.policy, self.reference):
            if p.shape != r.shape:
                raise ValueError(f"policy and reference tensor shapes differ: {tuple(p.shape)} vs {tuple(r.shape)}")
        # fp32 masters only for low-precision references; fp32 references are mixed in place.
        self.masters: list[torch.Tensor] | None = None
        if any(r.dtype in (torch.bfloat16, torch.float16) for r in self.reference):
            self.masters = [r.detach().float().clone() for r in self.reference]

    @classmethod
    def for_models(cls, policy: nn.Module, reference: nn.Module) -> DenseApplier:
        return cls(mixable_tensors(policy), mixable_tensors(reference))

    @torch.no_grad()
    def apply(self, alpha: float) -> None:
        """ref <- alpha*policy + (1-alpha)*ref, once, now."""
        if self.masters is None:
            if alpha == 1.0:
                torch._foreach_copy_(self.reference, self.policy)
            else:
                self._lerp_into(self.reference, alpha)
        else:
            self._lerp_into(self.masters, alpha)
            torch._foreach_copy_(self.reference, self.masters)
        if self.late_pairs is not None:
            self._apply_late(alpha)

    def _apply_late(self, alpha: float) -> None:
        pairs = [(i, p, r) for i, (p, r) in enumerate(self.late_pairs()) if r.numel() > 0 and p.shape == r.shape]
        exact = [(p, r) for _, p, r in pairs if r.dtype == p.dtype == torch.float32]
        if exact:
            torch._foreach_lerp_([r for _, r in exact], [p for p, _ in exact], alpha)
        for i, p, r in pairs:
            if r.dtype == p.dtype == torch.float32:
                continue
            master = self._late_masters.get(i)
            if master is None or master.shape != r.shape:
                master = self._late_masters[i] = r.float()
            master.lerp_(p.float(), alpha)
            r.copy_(master)

    def _lerp_into(self, targets: list[torch.Tensor], alpha: float) -> None:
        """targets <- lerp(targets, policy, alpha); fp32 targets of a 16-bit policy (the fp32 masters, or an fp32
        reference beside a bf16 policy under ZeRO-2) take the policy upcast."""
        same = [(m, p) for m, p in zip(targets, self.policy) if p.dtype == m.dtype]
        if same:
            torch._foreach_lerp_([m for m, _ in same], [p for _, p in same], alpha)
        # Policy tensors in another dtype are upcast a chunk at a time to bound extra memory.
        batch_m: list[torch.Tensor] = []
        batch_p: list[torch.Tensor] = []
        size = 0
        for m, p in zip(targets, self.policy):
            if p.dtype == m.dtype:
                continue
            batch_m.append(m)
            batch_p.append(p.float())
            size += p.numel()
            if size >= _CHUNK:
                torch._foreach_lerp_(batch_m, batch_p, alpha)
                batch_m, batch_p, size = [], [], 0
        if batch_m:
            torch._foreach_lerp_(batch_m, batch_p, alpha)

    def metrics(self) -> dict[str, float]:
        """Extra fields for the log row (none here; see ``trustregion.reference.adapter``)."""
        return {}

    @torch.no_grad()
    def distance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of squared ||ref - policy||, sum of squared ||policy||) over the local tensors.

        Returned as squares so that ranks holding shards can all-reduce them before the ratio.
        """
        ref = self.masters if self.masters is not None else self.reference
        if not ref:
            return torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        # Accumulated on the tensors' device and moved once: one host sync, not one per tensor.
        diff_sq = torch.zeros((), dtype=torch.float64, device=ref[0].device)
        norm_sq = torch.zeros((), dtype=torch.float64, device=ref[0].device)
        count, ranks = self.replicated
        first_replicated = len(self.policy) - count
        for i, (r, p) in enumerate(zip(ref, self.policy)):
            pf = p.float()
            share = 1.0 / ranks if i >= first_replicated else 1.0
            diff_sq += share * torch.linalg.vector_norm(r.float() - pf).double() ** 2
            norm_sq += share * torch.linalg.vector_norm(pf).double() ** 2
        return diff_sq.cpu(), norm_sq.cpu()

    def state_dict(self) -> dict:
        state: dict = {}
        if self.masters is not None:
            state["masters"] = [m.detach().cpu().clone() for m in self.masters]
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.masters is not None and "masters" in state:
            with torch.no_grad():
                torch._foreach_copy_(self.masters, [m.to(self.masters[0].device) for m in state["masters"]])
