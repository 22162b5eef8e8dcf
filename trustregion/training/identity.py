"""A run's identity: the settings that make its result, its seed, its family, and their readable label.

A *family* is the set of runs whose result-changing settings are all equal except the seed. The wandb name, group and
tags (``training.logger``), the report's families (``trustregion.report``), the default run dir and the search read it
from here; a resume checks a checkpoint against the same split of settings (``training.checkpoint``). The readable
label comes from the method and the update rule themselves (``Objective.describe``, ``Rule.describe``), their
schemas' defaults filled in, so a rule written outside the package is named by its own settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trustregion.config import AdapterReferenceMode
from trustregion.data import dataset_settings
from trustregion.errors import ConfigError
from trustregion.objectives.methods import describe_method, method_settings_of
from trustregion.reference.rules import rule_class, with_schema

IDENTITY_FILE = "identity.json"  # written into every run dir at its start (training.logger)
SEED = "trainer.seed"
# How a run is executed, shown or recorded, not what it computes: never part of its identity, free to change on resume.
EXECUTION = (
    *(
        f"trainer.{k}"
        for k in (
            "log_every", "save_every", "keep_last", "final_optimizer_state", "resume", "save_models", "save_final",
            "progress_every_s", "device", "num_threads", "divergence_factor", "sft_logps_cache",
        )
    ),
    *(f"model.{k}" for k in ("gradient_checkpointing", "logps", "logits_chunk_tokens", "share_prompt",
                             "attn_implementation")),
    "logger.", "verbose", "hooks", "search.", "eval.plot", "eval.batch_size",
    "deepspeed.offload_optimizer", "deepspeed.offload_params", "deepspeed.backend",
    "dataset.num_proc", "dataset.cache_dir",
)  # fmt: skip
# How the model is run (a subset of EXECUTION): a resume names each change in a note.
MODEL_EXECUTION = tuple(k.removeprefix("model.") for k in EXECUTION if k.startswith("model."))
# What the checkpoint holds and how, not the result (ZeRO on 2 ranks trains what one process trains; a cached frozen
# reference has no weights to save): not identity, but a resume keeps them.
FORMAT = ("deepspeed.stage", "deepspeed.param_persistence_threshold", "deepspeed.reference_update",
          "trainer.cache_reference")  # fmt: skip
# Part of the identity, yet a resume may change them: how long the run goes and how it is measured (a longer run
# continues the shorter one); the global batch is checked separately.
RESUMABLE = ("trainer.max_steps", "trainer.epochs", "trainer.eval_every", "trainer.eval_at_start", "eval.",
             "trainer.batch_size")  # fmt: skip
# How the reference moves: a moving family and its frozen baseline differ in these alone.
REFERENCE = ("ref_update.", "peft.reference", "peft.factors_error")


def _matches(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def may_change_on_resume(key: str) -> bool:
    """Whether a resume may change setting ``key`` (each change is named in a note); any other change is refused."""
    return _matches(key, EXECUTION) or _matches(key, RESUMABLE)


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` of a nested dict (lists are leaves)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _plain(value: Any) -> Any:
    """A setting as it reads in a resolved config: enums as their value, OmegaConf containers as Python ones."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return value


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RunIdentity:
    """Who a run is: its readable ``label``, the model and data it trains on (``setting``), its seed, whether its
    reference moves, and every result-changing setting but the seed (``settings``, flat keys)."""

    label: str
    setting: str
    seed: int
    moves: bool
    settings: dict[str, Any] = field(compare=False, hash=False)
    rule: str = field(default="", compare=False)  # the update rule's part of the label: ``frozen``, ``soft α=0.03 τ=1``

    @property
    def family(self) -> str:
        """The family's key: equal for two runs exactly when their settings are (a digest of them)."""
        return _digest(self.settings)

    @property
    def baseline(self) -> str:
        """The key shared by this family and the frozen-reference family it is compared with."""
        return _digest({k: v for k, v in self.settings.items() if not _matches(k, REFERENCE)})

    @property
    def slug(self) -> str:
        """The label in file-name and wandb form: ``dpo-b0.5-soft-a0.03-t1``."""
        text = self.label.replace("β=", "b").replace("α=", "a").replace("τ=", "t").replace("δ=", "d")
        return "-".join(part.replace("=", "") for part in text.split()).lower()

    @property
    def group(self) -> str:
        """The wandb group: the setting, the label and the family key (two families never share one)."""
        return f"{self.setting}_{self.slug}_{self.family[:6]}"

    @property
    def name(self) -> str:
        return f"{self.setting}_{self.slug}-s{self.seed}"

    def differences(self, other: RunIdentity) -> list[str]:
        """The settings whose values differ between the two families, as ``key=this|other``."""
        keys = sorted(set(self.settings) | set(other.settings))
        return [
            f"{k}={self.settings.get(k, '-')}|{other.settings.get(k, '-')}"
            for k in keys
            if self.settings.get(k) != other.settings.get(k)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "setting": self.setting,
            "seed": self.seed,
            "moves": self.moves,
            "family": self.family,
            "rule": self.rule,
            "settings": self.settings,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunIdentity:
        fields = str(data["label"]), str(data["setting"]), int(data["seed"]), bool(data["moves"]), data["settings"]
        return cls(*fields, str(data.get("rule", "")))  # identity.json files written before the rule was kept: ""


def method_settings(method_cfg: DictConfig) -> dict[str, Any]:
    """``method`` merged into its class's schema (a method written outside the package names only what it changes);
    as given where the class cannot be found (the run itself says why, in one line)."""
    return _container(method_settings_of, method_cfg)


def _container(fill, node: DictConfig) -> dict[str, Any]:
    """``fill(node)`` as a plain dict (the node as given where ``fill`` refuses it: the run says why, in one line)."""
    try:
        node = fill(node)
    except ConfigError:
        pass
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def _seed_following(cfg: DictConfig) -> set[str]:
    """Settings that follow the seed by interpolation (``pair_seed: ${oc.select:trainer.seed,0}``)."""
    raw = flat(OmegaConf.to_container(cfg, resolve=False))
    return {k for k, v in raw.items() if isinstance(v, str) and SEED in v and v.startswith("${")}


def _inactive(values: dict[str, Any]) -> set[str]:
    """Settings that cannot act in this run: LoRA's without adapters, generation's without generation."""
    off = set()
    if values.get("peft.name", "none") == "none":
        off |= {k for k in values if k.startswith("peft.") and k != "peft.name"}
    if not values.get("eval.generate", False):
        off |= {k for k in values if k.startswith("eval.") and k != "eval.generate"}
    if values.get("model.path") is not None:  # a pretrained model's shape is its checkpoint's
        from trustregion.config import TINY_SHAPE

        off |= {f"model.{k}" for k in TINY_SHAPE}
    return off


def _lora_label(values: dict[str, Any], moves: bool) -> str:
    if values.get("peft.name", "none") == "none":
        return ""
    mode = AdapterReferenceMode(values.get("peft.reference", "auto")).value
    return f"LoRA {mode}" if moves else "LoRA"


def identity_of(cfg: DictConfig) -> RunIdentity:
    """The identity of the run ``cfg`` describes (an alignment run's config, or the SFT stage's: no ``method``)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    if "method" in cfg:  # the method's schema defaults filled in, as the rule's are below
        container["method"] = method_settings(cfg.method)
    if "dataset" in cfg:  # a source written outside the package: its schema's defaults filled in
        container["dataset"] = _container(dataset_settings, cfg.dataset)
    values = flat(container)
    seed = int(values.get(SEED, 0))
    dropped = {SEED} | _seed_following(cfg) | _inactive(values) | {k for k in values if _matches(k, EXECUTION)}
    setting = f"{values.get('model.name', '?')}_{values.get('dataset.name', '?')}"
    if "method" not in cfg:
        settings = {k: v for k, v in values.items() if k not in dropped and not _matches(k, FORMAT)}
        return RunIdentity("sft", setting, seed, False, settings)
    rule = rule_class(str(cfg.ref_update._target_))
    rule_cfg = with_schema(rule, cfg.ref_update)
    used = {k: _plain(v) for k, v in rule.settings(rule_cfg).items()}
    dropped |= {k for k in values if k.startswith("ref_update.") and k.removeprefix("ref_update.") not in used}
    settings = {k: v for k, v in values.items() if k not in dropped and not _matches(k, FORMAT)}
    settings.update({f"ref_update.{k}": v for k, v in used.items()})  # the rule's schema defaults filled in
    parts = [describe_method(cfg.method), _lora_label(values, rule.moves), rule.describe(rule_cfg)]
    return RunIdentity(" ".join(p for p in parts if p), setting, seed, rule.moves, settings, rule.describe(rule_cfg))


def ignored_settings(cfg: DictConfig) -> list[str]:
    """Settings this run sets away from their defaults that cannot act in it, each as ``key=value does nothing here:
    why``: a rule's key it never reads (``ref_update.alpha`` with ``ref_update=none``), LoRA's without adapters, the
    tiny model's shape for a pretrained model. Accepted, but they change nothing."""
    values = flat(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    found = []
    for key in sorted(k for k in _inactive(values) if not k.startswith("eval.")):  # eval: presets set it, off or on
        group, leaf = key.split(".", 1)
        schema = OmegaConf.get_type(cfg[group])
        default = OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True).get(leaf) if schema else None
        if values[key] != default and values[key] is not None:
            found.append(f"{key}={values[key]} does nothing here: {_WHY[group]}")
    if "method" in cfg:
        rule = rule_class(str(cfg.ref_update._target_))
        rule_cfg = with_schema(rule, cfg.ref_update)
        used, defaults = rule.settings(rule_cfg), OmegaConf.structured(rule.config_class)
        found += [
            f"ref_update.{k}={_plain(rule_cfg[k])} does nothing here: the rule ({rule.describe(rule_cfg)}) reads no {k}"
            for k in rule_cfg
            if k not in used and k not in ("_target_", "name") and rule_cfg[k] != defaults[k]
        ]
    return found


_WHY = {"peft": "peft=none trains every weight", "model": "model.path's checkpoint sets the shape"}
