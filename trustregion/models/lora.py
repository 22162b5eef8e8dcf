"""LoRA adapters on the policy with the ``peft`` library: wrapping, the adapted layers, export in PEFT's format.

The policy is a ``PeftModel`` whose one trainable adapter is ``default``: W = W0 + s*B*A on each adapted
module. The reference that shares W0 is ``trustregion.reference.adapter``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trustregion.errors import ConfigError

ADAPTER = "default"  # PEFT's name for the first adapter: the policy's


@dataclass
class AdaptedLayer:
    """One module the policy adapts: its PEFT layer, the factors A [r, in] and B [out, r], and the scale s."""

    name: str  # the module's name inside the base model (PEFT's key without ``base_model.model.``)
    layer: nn.Module
    A: nn.Parameter
    B: nn.Parameter
    scale: float

    def delta(self) -> torch.Tensor:
        """s*B*A in fp32."""
        return self.scale * (self.B.detach().float() @ self.A.detach().float())


def _import_peft():
    try:
        import peft
    except ImportError as e:
        raise ConfigError("peft=lora needs the peft library: pip install -e '.[lora]'") from e
    return peft


def _check_targets(model: nn.Module, targets: list[str], output_layer: nn.Module | None) -> None:
    """Each named target matches a module (PEFT's rule: the whole name or its last dotted parts)."""
    names = [n for n, _ in model.named_modules() if n]
    for target in targets:
        if target == "all-linear":
            continue
        hits = [n for n in names if n == target or n.endswith("." + target)]
        if not hits:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(
                f"peft.target_modules: '{target}' matches no module of this model; use some of {linear} or all-linear"
            )
        if output_layer is not None and any(model.get_submodule(n) is output_layer for n in hits):
            raise ConfigError(
                f"peft.target_modules: '{target}' adapts the output layer, which the log-prob head reads directly; "
                "leave it out (all-linear does)"
            )


def wrap_policy(model: nn.Module, peft_cfg) -> nn.Module:
    """The policy as a ``PeftModel``: a new LoRA adapter from ``peft_cfg``, or the one at ``peft.adapter_path``."""
    peft = _import_peft()
    output = model.get_output_embeddings()  # a transformers model: the head must stay unadapted
    try:
        if peft_cfg.adapter_path:
            if not (Path(peft_cfg.adapter_path) / "adapter_config.json").exists():
                raise ConfigError(
                    f"peft.adapter_path={peft_cfg.adapter_path}: no adapter_config.json there; "
                    "point it at a dir saved by a peft=lora run (its policy/)"
                )
            wrapped = peft.PeftModel.from_pretrained(model, peft_cfg.adapter_path, is_trainable=True)
        else:
            targets = list(peft_cfg.target_modules)
            _check_targets(model, targets, output)
            config = peft.LoraConfig(
                r=int(peft_cfg.rank),
                lora_alpha=float(peft_cfg.alpha),
                lora_dropout=float(peft_cfg.dropout),
                target_modules="all-linear" if targets == ["all-linear"] else targets,
                bias="none",
            )
            wrapped = peft.get_peft_model(model, config)
    except ConfigError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(
            f"peft=lora: PEFT cannot wrap this model ({first}); set peft.target_modules to its Linear layers, "
            "or use peft=none"
        ) from e
    if not adapted_layers(wrapped):
        raise ConfigError("peft=lora: PEFT adapted no layer of this model; set peft.target_modules, or use peft=none")
    return wrapped


def adapted_layers(policy: nn.Module) -> list[AdaptedLayer]:
    """The policy's LoRA layers in module order (a ``PeftModel``: A, B and scale of its ``default`` adapter)."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    found = []
    for name, module in policy.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            A, B = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
            found.append(AdaptedLayer(name.removeprefix(prefix), module, A, B, float(module.scaling[ADAPTER])))
    return found


def _is_adapter_key(key: str) -> bool:
    """A state-dict key of a LoRA adapter's weight (any adapter: the policy's ``default``, the ``reference``)."""
    return ".lora_" in key


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT-wrapped policy (its frozen base is reloaded on resume, never checkpointed)."""
    return getattr(model, "peft_config", None) is not None


def frozen_adapter_params(policy: nn.Module) -> list[nn.Parameter]:
    """The policy's frozen adapter weights (the ``factors`` reference, or a frozen starting adapter): state a
    checkpoint must keep although it leaves the frozen base out."""
    if not is_lora(policy):
        return []
    return [p for name, p in policy.named_parameters() if not p.requires_grad and _is_adapter_key(name)]


def policy_state(policy: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of the policy. Under LoRA: every adapter's weights and whatever else trains, not the
    frozen base, which a resume loads again from ``model.path`` (or builds again, the tiny model) before
    ``load_policy_state``; otherwise the whole state dict."""
    state = policy.state_dict()
    if not is_lora(policy):
        return state
    trained = {name for name, p in policy.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if _is_adapter_key(k) or k in trained}


def load_policy_state(policy: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Restore what ``policy_state`` kept: strictly, except that under LoRA only frozen base weights may be absent
    (a checkpoint written before this rule holds them too, and loads as before)."""
    if not is_lora(policy):
        policy.load_state_dict(state)
        return
    result = policy.load_state_dict(state, strict=False)
    kept = policy_state(policy).keys()
    missing = [k for k in result.missing_keys if k in kept]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"the checkpoint's LoRA state does not fit this policy (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )


def low_rank_factors(
    delta: torch.Tensor, start: int = 16, oversample: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) in fp32 with B @ A = ``delta`` [m, n] at its numerical rank, for export as a LoRA adapter.

    Numerical rank, the standard rule for a matrix held in fp32: the singular values above
    max(m, n) * eps_fp32 * sigma_max; the rest are at the level of fp32 rounding (the updates' own, or old updates
    decayed by (1 - alpha)^t) and are dropped, an error of at most that level per dropped direction. A moving
    reference's delta is a weighted sum of s*B_t*A_t, so its rank is at most the sum of those products' ranks
    (and min(m, n)), usually far below min(m, n) in a short run. So no SVD of the whole [m, n] matrix: a randomized
    range finder (Halko, Martinsson & Tropp 2011) with k columns, k = ``start`` then doubled up to min(m, n), in
    fp64: Q = qr(delta @ Omega), then the SVD of the small core Q^T delta [k, n]. k is accepted once the part of
    ``delta`` outside span(Q) is below the threshold in Frobenius norm (an exactly low-rank delta: every direction
    it misses is below the threshold too), or once at least ``oversample`` of the core's k singular values are
    below the threshold (a tail of decayed old updates: the sample reaches past the last kept direction); at
    k = min(m, n) span(Q) holds delta's whole range. A fixed ``seed``: the same delta exports the same factors.
    At least rank 1 (zeros for a zero delta), as PEFT wants."""
    m, n = delta.shape
    full = min(m, n)
    d = delta.detach().double()
    gen = torch.Generator(device=d.device).manual_seed(seed)
    norm2 = d.square().sum()
    k = max(1, min(start, full))
    while True:
        omega = torch.randn(n, k, generator=gen, dtype=d.dtype, device=d.device)
        Q = torch.linalg.qr(d @ omega).Q  # [m, k], orthonormal
        core = Q.T @ d  # [k, n]
        U, S, Vh = torch.linalg.svd(core, full_matrices=False)
        threshold = max(m, n) * torch.finfo(torch.float32).eps * S[0]
        keep = max(1, int((S > threshold).sum()))
        # ||delta - Q Q^T delta||_F^2 = ||delta||_F^2 - ||Q^T delta||_F^2 (Q orthonormal); fp64 resolves it far below
        # the fp32 threshold.
        if k == full or norm2 - S.square().sum() <= threshold.square() or keep <= k - oversample:
            break
        k = min(2 * k, full)
    return Vh[:keep].float(), ((Q @ U[:, :keep]) * S[:keep]).float()


def save_adapter(directory: Path, layers: list[AdaptedLayer], factors: list[tuple[torch.Tensor, torch.Tensor]], config):
    """A PEFT adapter dir (``adapter_config.json``, ``adapter_model.safetensors``) holding W0 + B_i*A_i per layer.

    ``factors`` are (A_i, B_i) with the scale already in B_i; ``config`` is the policy's ``LoraConfig``,
    re-ranked per layer so that every layer's scale is 1 (PEFT loads it back as the same deltas).
    """
    import copy
    import re

    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors, ranks = {}, {}
    for layer, (a, b) in zip(layers, factors):
        key = f"base_model.model.{layer.name}"
        tensors[f"{key}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        tensors[f"{key}.lora_B.weight"] = b.detach().float().cpu().contiguous()
        ranks[re.escape(layer.name)] = int(a.shape[0])
    config = copy.deepcopy(config)
    config.r = config.lora_alpha = max(ranks.values())
    config.rank_pattern, config.alpha_pattern = dict(ranks), dict(ranks)
    config.target_modules = sorted({layer.name for layer in layers})
    config.use_rslora = False
    config.save_pretrained(str(directory))
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})


def save_merged(policy: nn.Module, directory: Path, deltas: list[torch.Tensor]) -> None:
    """``save_pretrained`` of the base model with W0 + delta_i on each adapted layer (``deltas`` in layer order;
    [] saves W0 alone): a plain transformers model."""
    layers = adapted_layers(policy)
    base = policy.get_base_model()
    state = {}
    by_name = {layer.name: d for layer, d in zip(layers, deltas)}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            owner, leaf = key.split(".base_layer.")
            key = f"{owner}.{leaf}"
            if leaf == "weight" and owner in by_name:
                value = (value.float() + by_name[owner].to(value.device)).to(value.dtype)
        state[key] = value.detach().cpu().clone()
    base.save_pretrained(str(directory), state_dict=state)
