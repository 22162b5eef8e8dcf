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
