"""The reference model under LoRA without a second copy of W0: the policy's base with its adapter disabled,
plus a reference delta on each adapted module, which the Trust-Region update moves.

    W_ref = W0 + delta_ref,   every tau steps:  delta_ref <- alpha*s*B*A + (1 - alpha)*delta_ref

``exact`` keeps delta_ref as a dense fp32 [out, in] tensor per adapted module (the update holds exactly);
modules of one shape are stacked, so an update is one ``baddbmm_`` per shape group. ``factors`` keeps a second
PEFT adapter (A_ref, B_ref) on the same layers, lerped factor by factor in one ``_foreach_lerp_``
(delta_ref = s*B_ref*A_ref: exact for alpha = 1 and for the frozen reference, not for 0 < alpha < 1, whose error
it can log); under ZeRO-3 the adapter is partitioned like the policy's, and the lerp runs on each rank's own
shards. ``base`` has no delta (the frozen reference of a fresh adapter). No host sync in an update.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trustregion.engines.zero_internals import shard
from trustregion.models.lora import ADAPTER, AdaptedLayer, adapted_layers, low_rank_factors, save_adapter, save_merged

KINDS = ("base", "exact", "factors")
EXACT_BUDGET = 0.15  # peft.reference=auto: exact when its dense deltas take at most this share of the base's bytes


def dense_delta_bytes(layers: list[AdaptedLayer]) -> int:
    """Memory of ``exact``'s deltas: one fp32 [out, in] tensor per adapted module."""
    return sum(4 * layer.B.shape[0] * layer.A.shape[1] for layer in layers)


def base_bytes(policy: nn.Module, layers: list[AdaptedLayer]) -> int:
    """Memory of the policy's weights without its adapters."""
    lora = {id(t) for layer in layers for t in (layer.A, layer.B)}
    return sum(p.numel() * p.element_size() for p in policy.parameters() if id(p) not in lora)


def resolve_mode(mode: str, policy: nn.Module, layers: list[AdaptedLayer]) -> str:
    """``auto`` -> ``exact`` when its dense deltas are at most ``EXACT_BUDGET`` of the base's bytes, else ``factors``."""
    if mode != "auto":
        return mode
    return "exact" if dense_delta_bytes(layers) <= EXACT_BUDGET * base_bytes(policy, layers) else "factors"


def build_reference(
    policy: nn.Module, peft_cfg, moving: bool, name: str = "reference", sharded: bool = False
) -> AdapterReference:
    """The reference of a LoRA policy: frozen, the base (fresh adapter) or the starting adapter (exact either way);
    moving, ``peft.reference`` (auto resolved), with the exact delta tracked where ``peft.factors_error`` asks.
    ``name``: the PEFT adapter that holds factors; ``sharded``: under ZeRO-3 (factors only, no tracking)."""
    layers = adapted_layers(policy)
    if not moving:
        kind = "factors" if peft_cfg.adapter_path else "base"
        return AdapterReference(policy, layers, kind, name=name, sharded=sharded)
    kind = "factors" if sharded else resolve_mode(str(peft_cfg.reference.value), policy, layers)
    track = peft_cfg.factors_error
    if track is None:  # log the error wherever the dense delta it needs is cheap
        track = not sharded and dense_delta_bytes(layers) <= EXACT_BUDGET * base_bytes(policy, layers)
    return AdapterReference(policy, layers, kind, track=bool(track), name=name, sharded=sharded)


class _Group:
    """Adapted layers of one shape and scale: indices into the layer list, stacked under buffer names ``tag``."""

    def __init__(self, tag: str, members: list[int], scale: float) -> None:
        self.tag, self.members, self.scale = tag, members, scale


class AdapterReference(nn.Module):
    """The reference as a model view of the policy: same calls as a causal LM (``forward``, ``get_decoder``,
    ``get_output_embeddings``). Its own state (``state_dict``) is the dense deltas (``exact``, or ``factors`` with
    ``track``); the ``factors`` adapter is part of the policy, and saved with it."""

    def __init__(
        self,
        policy: nn.Module,
        layers: list[AdaptedLayer],
        kind: str,
        track: bool = False,
        name: str = "reference",
        sharded: bool = False,
    ) -> None:
        """delta_ref starts at the policy's current s*B*A (0 for a fresh adapter, whose B is 0); ``track``: under
        ``factors``, also keep the exact dense delta (for ``ref/factors_error``); ``name``: the PEFT adapter that
        holds the factors (added to the policy, frozen; before any DeepSpeed partitioning)."""
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind}")
        # Shared, not owned: the policy's state is the policy's, so it is no submodule of the reference.
        object.__setattr__(self, "policy", policy)
        self.layers, self.kind, self.track, self.name = layers, kind, track and kind == "factors", name
        self.sharded = sharded
        if kind == "factors":
            policy.add_adapter(name, copy.deepcopy(policy.peft_config[ADAPTER]))  # inactive, frozen
            with torch.no_grad():
                for layer, (a, b) in zip(layers, self.ref_factors()):
                    a.copy_(layer.A)
                    b.copy_(layer.B)
        self.groups: list[_Group] = []
        by_shape: dict[tuple, list[int]] = {}
        for i, layer in enumerate(layers):
            by_shape.setdefault((tuple(layer.B.shape), tuple(layer.A.shape), layer.scale), []).append(i)
        self.slot: dict[int, tuple[_Group, int]] = {}
        with torch.no_grad():
            for g, ((_, _, scale), members) in enumerate(by_shape.items()):
                group = _Group(f"g{g}", members, scale)
                self.groups.append(group)
                for j, i in enumerate(members):
                    self.slot[i] = (group, j)
                if kind == "exact" or self.track:
                    A, B = self._stacked(group)
                    self.register_buffer(f"delta_{group.tag}", scale * torch.bmm(B, A))

    def _stacked(self, group: _Group) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's current (A, B) of ``group``, stacked [n, r, in], [n, out, r], fp32."""
        A = torch.stack([self.layers[i].A.detach() for i in group.members]).float()
        B = torch.stack([self.layers[i].B.detach() for i in group.members]).float()
        return A, B

    def buffer(self, kind: str, group: _Group) -> torch.Tensor:
        return self.get_buffer(f"{kind}_{group.tag}")

    def ref_factors(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(A_ref, B_ref) of every layer: the weights of the reference's PEFT adapter (``factors`` only)."""
        return [(x.layer.lora_A[self.name].weight, x.layer.lora_B[self.name].weight) for x in self.layers]

    # --- the model view -----------------------------------------------------------------------------
    def _hook(self, i: int):
        group, j = self.slot[i]
        if self.kind == "exact":
            delta = self.buffer("delta", group)[j]
            return lambda module, args, out: out + F.linear(args[0].to(delta.dtype), delta).to(out.dtype)
        # The adapter's own modules are called (not their weights read), so ZeRO-3 gathers them like any layer.
        down, up, s = self.layers[i].layer.lora_A[self.name], self.layers[i].layer.lora_B[self.name], group.scale
        return lambda module, args, out: out + (s * up(down(args[0].to(down.weight.dtype)))).to(out.dtype)

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """Inside: the policy computes the reference (adapters off, the delta added, eval mode); restored after."""
        training = self.policy.training
        handles = (
            []
            if self.kind == "base"
            else [layer.layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        )
        try:
            with self.policy.disable_adapter():
                if training:
                    self.policy.eval()
                yield
        finally:
            for h in handles:
                h.remove()
            if training:
                self.policy.train()

    def forward(self, *args, **kwargs):
        with self.scoring():
            return self.policy(*args, **kwargs)

    def get_decoder(self) -> _ScoredModule:
        return _ScoredModule(self, self.policy.get_decoder())

    def get_output_embeddings(self) -> nn.Module:
        return self.policy.get_output_embeddings()

    def train(self, mode: bool = True) -> AdapterReference:
        return super().train(False)  # a reference never trains; the shared policy keeps its own mode

    # --- deltas and export ----------------------------------------------------------------------------
    def delta(self, i: int) -> torch.Tensor:
        """delta_ref of layer ``i``, fp32 [out, in] (dense: for export and checks, not the hot path)."""
        layer = self.layers[i]
        if self.kind == "base":
            return torch.zeros(layer.B.shape[0], layer.A.shape[1], device=layer.A.device)
        group, j = self.slot[i]
        if self.kind == "exact":
            return self.buffer("delta", group)[j].clone()
        a, b = self.ref_factors()[i]
        return group.scale * b.detach().float() @ a.detach().float()

    def deltas(self) -> list[torch.Tensor]:
        return [self.delta(i) for i in range(len(self.layers))]

    def factors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(A_i, B_i) with B_i*A_i = delta_ref: the factors themselves, or (exact) the dense delta at its numerical
        rank (``low_rank_factors``)."""
        out = []
        for i, delta in enumerate(self.deltas()):
            if self.kind == "factors":
                a, b = self.ref_factors()[i]
                out.append((a.detach(), self.slot[i][0].scale * b.detach()))
                continue
            out.append(low_rank_factors(delta, start=2 * self.layers[i].A.shape[0] + 8))
        return out

    def whole(self, params: list[torch.Tensor]):
        """Context in which ``params`` are whole on every rank (a collective under ZeRO-3: every rank enters)."""
        if not self.sharded:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def save_pretrained(self, directory: str | Path, merged: bool = False, write: bool = True) -> None:
        """The reference as a PEFT adapter on the policy's base (or, ``merged``, as a whole transformers model).
        Every rank calls it under ZeRO-3 (the factors are gathered); only ``write`` ones write."""
        directory = Path(directory)
        factors = [t for pair in self.ref_factors() for t in pair] if self.kind == "factors" else []
        with self.whole(factors):
            if write and merged:
                save_merged(self.policy, directory, self.deltas())
            elif write:
                save_adapter(directory, self.layers, self.factors(), self.policy.peft_config[ADAPTER])


class _ScoredModule:
    """A submodule of the policy called as part of the reference (the decoder, for chunked log-probs)."""

    def __init__(self, reference: AdapterReference, module: nn.Module) -> None:
        self.reference, self.module = reference, module

    def __call__(self, *args, **kwargs):
        with self.reference.scoring():
            return self.module(*args, **kwargs)


class AdapterApplier:
    """The update of an ``AdapterReference`` (an ``Applier``): delta_ref <- alpha*s*B*A + (1-alpha)*delta_ref."""

    def __init__(self, reference: AdapterReference, sharded: bool = False) -> None:
        """``sharded``: under ZeRO-3, where the factor lerp runs on each rank's own shards."""
        if reference.kind == "base":
            raise ValueError("a reference of kind 'base' (the frozen base) cannot move; build it as exact or factors")
        self.ref, self.sharded = reference, sharded
        self.reference: list[torch.Tensor] = []
        self.policy: list[torch.Tensor] = []
        if reference.kind == "factors":
            local = shard if sharded else (lambda p: p)
            pairs = [
                (r, p)
                for layer, (ra, rb) in zip(reference.layers, reference.ref_factors())
                for r, p in ((ra, layer.A), (rb, layer.B))
            ]
            self.reference = [local(r) for r, _ in pairs]
            self.policy = [local(p) for _, p in pairs]
        # Every adapter's factors (the policy's, the reference's, the SFT view's) and the adapted base weights.
        lora_or_base = {id(layer.layer.get_base_layer().weight) for layer in reference.layers}
        for layer in reference.layers:
            lora_or_base |= {id(t) for t in (*layer.layer.lora_A.parameters(), *layer.layer.lora_B.parameters())}
        self.others = [p for p in reference.policy.parameters() if id(p) not in lora_or_base]

    @torch.no_grad()
    def apply(self, alpha: float) -> None:
        ref = self.ref
        if ref.kind == "factors":
            if alpha == 1.0:
                torch._foreach_copy_(self.reference, self.policy)
            else:
                torch._foreach_lerp_(self.reference, self.policy, alpha)
        if ref.kind == "exact" or ref.track:
            for g in ref.groups:
                A, B = ref._stacked(g)
                ref.buffer("delta", g).baddbmm_(B, A, beta=1.0 - alpha, alpha=alpha * g.scale)

    @torch.no_grad()
    def distance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(||W_ref - W||^2, ||W||^2) over all weights, W = W0 + s*B*A; at log steps only (dense products).
        Under ZeRO-3 each adapted layer is gathered in turn (every rank computes it: counted once after the sum
        over ranks that the caller takes), the other weights are summed over each rank's shards."""
        ref, world = self.ref, 1
        if self.sharded:
            import torch.distributed as dist

            world = dist.get_world_size()
        diff = torch.zeros((), dtype=torch.float64)
        norm = torch.zeros((), dtype=torch.float64)
        factors = ref.ref_factors() if ref.kind == "factors" else [()] * len(ref.layers)
        for i, layer in enumerate(ref.layers):
            w0 = layer.layer.get_base_layer().weight
            with ref.whole([w0, layer.A, layer.B, *factors[i]]):
                policy_delta = layer.delta()
                diff += torch.linalg.vector_norm(ref.delta(i) - policy_delta).double().cpu() ** 2 / world
                norm += torch.linalg.vector_norm(w0.float() + policy_delta).double().cpu() ** 2 / world
        for p in self.others:
            local = shard(p) if self.sharded else p
            norm += torch.linalg.vector_norm(local.float()).double().cpu() ** 2
        return diff, norm

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        """``ref/factors_error`` = ||delta_factors - delta_exact|| / ||delta_exact|| where both are kept."""
        ref = self.ref
        if not ref.track:
            return {}
        num = torch.zeros((), dtype=torch.float64, device=ref.layers[0].A.device)
        den = torch.zeros_like(num)
        factors = ref.ref_factors()
        for g in ref.groups:
            exact = ref.buffer("delta", g)
            a = torch.stack([factors[i][0].detach() for i in g.members]).float()
            b = torch.stack([factors[i][1].detach() for i in g.members]).float()
            approx = g.scale * torch.bmm(b, a)
            num += torch.linalg.vector_norm(approx - exact).double() ** 2
            den += torch.linalg.vector_norm(exact).double() ** 2
        return {"ref/factors_error": float((num / den.clamp(min=1e-300)).sqrt())}

    def state_dict(self) -> dict:
        return {}  # the deltas are the reference's own state (the engine saves it)

    def load_state_dict(self, state: dict) -> None:
        pass
