"""The reference model under LoRA without a second copy of W0: the policy's base with its adapter disabled,
plus a reference delta on each adapted module, which the Trust-Region update moves.

    W_ref = W0 + delta_ref,   every tau steps:  delta_ref <- alpha*s*B*A + (1 - alpha)*delta_ref

``exact`` keeps delta_ref as a dense fp32 [out, in] tensor per adapted module (the update holds exactly);
``factors`` keeps a second pair (A_ref, B_ref) lerped factor by factor (delta_ref = s*B_ref*A_ref: exact for
alpha = 1 and for the frozen reference, not for 0 < alpha < 1, whose error it can log); ``base`` has no
delta (the frozen reference of a fresh adapter). Modules of one shape are stacked, so an update is one
``baddbmm_`` (exact) or one ``_foreach_lerp_`` (factors) per shape group, with no host sync.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trustregion.lora import AdaptedLayer, adapted_layers, save_adapter, save_merged
from trustregion.reference import ReferenceUpdater

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


def build_reference(policy: nn.Module, peft_cfg, moving: bool) -> AdapterReference:
    """The reference of a LoRA policy: frozen, the base (fresh adapter) or the starting adapter (exact either way);
    moving, ``peft.reference`` (auto resolved), with the exact delta tracked where ``peft.factors_error`` asks."""
    layers = adapted_layers(policy)
    if not moving:
        return AdapterReference(policy, layers, "factors" if peft_cfg.adapter_path else "base")
    kind = resolve_mode(str(peft_cfg.reference.value), policy, layers)
    track = peft_cfg.factors_error
    if track is None:  # log the error wherever the dense delta it needs is cheap
        track = dense_delta_bytes(layers) <= EXACT_BUDGET * base_bytes(policy, layers)
    return AdapterReference(policy, layers, kind, track=bool(track))


class _Group:
    """Adapted layers of one shape and scale: indices into the layer list, stacked under buffer names ``tag``."""

    def __init__(self, tag: str, members: list[int], scale: float) -> None:
        self.tag, self.members, self.scale = tag, members, scale


class AdapterReference(nn.Module):
    """The reference as a model view of the policy: same calls as a causal LM (``forward``, ``get_decoder``,
    ``get_output_embeddings``); its state (``state_dict``) is the reference delta alone."""

    def __init__(self, policy: nn.Module, layers: list[AdaptedLayer], kind: str, track: bool = False) -> None:
        """delta_ref starts at the policy's current s*B*A (0 for a fresh adapter, whose B is 0); ``track``: under
        ``factors``, also keep the exact dense delta (for ``ref/factors_error``)."""
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind}")
        # Shared, not owned: the policy's state is the policy's, so it is no submodule of the reference.
        object.__setattr__(self, "policy", policy)
        self.layers, self.kind, self.track = layers, kind, track and kind == "factors"
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
                A, B = self._stacked(group)
                if kind == "factors":
                    self.register_buffer(f"a_{group.tag}", A.clone())
                    self.register_buffer(f"b_{group.tag}", B.clone())
                if kind == "exact" or self.track:
                    self.register_buffer(f"delta_{group.tag}", scale * torch.bmm(B, A))

    def _stacked(self, group: _Group) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's current (A, B) of ``group``, stacked [n, r, in], [n, out, r], fp32."""
        A = torch.stack([self.layers[i].A.detach() for i in group.members]).float()
        B = torch.stack([self.layers[i].B.detach() for i in group.members]).float()
        return A, B

    def buffer(self, kind: str, group: _Group) -> torch.Tensor:
        return self.get_buffer(f"{kind}_{group.tag}")

    # --- the model view -----------------------------------------------------------------------------
    def _hook(self, i: int):
        group, j = self.slot[i]
        if self.kind == "exact":
            delta = self.buffer("delta", group)[j]
            return lambda module, args, out: out + F.linear(args[0].to(delta.dtype), delta).to(out.dtype)
        a, b = self.buffer("a", group)[j], self.buffer("b", group)[j]
        s = group.scale
        return lambda module, args, out: out + (s * F.linear(F.linear(args[0].to(a.dtype), a), b)).to(out.dtype)

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
    def deltas(self) -> list[torch.Tensor]:
        """delta_ref of every adapted layer, fp32 [out, in] (dense: for export and checks, not the hot path)."""
        out = []
        for i, layer in enumerate(self.layers):
            if self.kind == "base":
                out.append(torch.zeros(layer.B.shape[0], layer.A.shape[1], device=layer.A.device))
                continue
            group, j = self.slot[i]
            if self.kind == "exact":
                out.append(self.buffer("delta", group)[j].clone())
            else:
                out.append(group.scale * self.buffer("b", group)[j] @ self.buffer("a", group)[j])
        return out

    def factors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(A_i, B_i) with B_i*A_i = delta_ref: the factors themselves, or an SVD of the dense delta (exact)."""
        out = []
        for i, delta in enumerate(self.deltas()):
            if self.kind == "factors":
                group, j = self.slot[i]
                out.append((self.buffer("a", group)[j], group.scale * self.buffer("b", group)[j]))
                continue
            U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
            keep = max(1, int((S > S.max() * 1e-12).sum())) if S.numel() else 1
            out.append((Vh[:keep].float(), (U[:, :keep] * S[:keep]).float()))
        return out

    def save_pretrained(self, directory: str | Path, merged: bool = False) -> None:
        """The reference as a PEFT adapter on the policy's base (or, ``merged``, as a whole transformers model)."""
        directory = Path(directory)
        if merged:
            save_merged(self.policy, directory, self.deltas())
        else:
            save_adapter(directory, self.layers, self.factors(), self.policy.peft_config["default"])


class _ScoredModule:
    """A submodule of the policy called as part of the reference (the decoder, for chunked log-probs)."""

    def __init__(self, reference: AdapterReference, module: nn.Module) -> None:
        self.reference, self.module = reference, module

    def __call__(self, *args, **kwargs):
        with self.reference.scoring():
            return self.module(*args, **kwargs)


class AdapterReferenceUpdater(ReferenceUpdater):
    """The (alpha, tau) rule on an ``AdapterReference``: delta_ref <- alpha*s*B*A + (1-alpha)*delta_ref."""

    def __init__(self, reference: AdapterReference, alpha: float, tau: int | None) -> None:
        super().__init__([], [], alpha, tau)
        self.ref = reference
        lora_or_base = {id(t) for layer in reference.layers for t in (layer.A, layer.B)}
        lora_or_base |= {id(layer.layer.get_base_layer().weight) for layer in reference.layers}
        self.others = [p for p in reference.policy.parameters() if id(p) not in lora_or_base]

    @torch.no_grad()
    def update(self) -> None:
        ref, a = self.ref, self.alpha
        if ref.kind == "base":
            raise ValueError("a reference of kind 'base' (the frozen base) cannot move; build it as exact or factors")
        stacked = [ref._stacked(g) for g in ref.groups]
        if ref.kind == "factors":
            mine = [ref.buffer(k, g) for g in ref.groups for k in ("a", "b")]
            theirs = [t for A, B in stacked for t in (A, B)]
            if a == 1.0:
                torch._foreach_copy_(mine, theirs)
            else:
                torch._foreach_lerp_(mine, theirs, a)
        if ref.kind == "exact" or ref.track:
            for g, (A, B) in zip(ref.groups, stacked):
                ref.buffer("delta", g).baddbmm_(B, A, beta=1.0 - a, alpha=a * g.scale)
        self.num_updates += 1

    @torch.no_grad()
    def distance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(||W_ref - W||^2, ||W||^2) over all weights, W = W0 + s*B*A; at log steps only (dense products)."""
        diff = torch.zeros((), dtype=torch.float64)
        norm = torch.zeros((), dtype=torch.float64)
        for layer, delta in zip(self.ref.layers, self.ref.deltas()):
            policy_delta = layer.delta()
            diff += torch.linalg.vector_norm(delta - policy_delta).double().cpu() ** 2
            w = layer.layer.get_base_layer().weight.float() + policy_delta
            norm += torch.linalg.vector_norm(w).double().cpu() ** 2
        for p in self.others:
            norm += torch.linalg.vector_norm(p.float()).double().cpu() ** 2
        return diff, norm

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        """``ref/factors_error`` = ||delta_factors - delta_exact|| / ||delta_exact|| where both are kept."""
        ref = self.ref
        if not ref.track:
            return {}
        num = torch.zeros((), dtype=torch.float64, device=ref.layers[0].A.device)
        den = torch.zeros_like(num)
        for g in ref.groups:
            exact = ref.buffer("delta", g)
            approx = g.scale * torch.bmm(ref.buffer("b", g), ref.buffer("a", g))
            num += torch.linalg.vector_norm(approx - exact).double() ** 2
            den += torch.linalg.vector_norm(exact).double() ** 2
        return {"ref/factors_error": float((num / den.clamp(min=1e-300)).sqrt())}

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates}  # the deltas are the reference's state (the engine saves it)

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
