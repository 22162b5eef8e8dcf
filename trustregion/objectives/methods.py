"""Which objective ``method`` selects: ``method._target_=<module>.<Class>`` (a subclass of ``Objective``, in the package
or written outside it), its settings checked against the class's own schema, like an update rule's
(``trustregion.reference.rules``). The package's methods by name (``METHODS``) give the schemas the presets build on
and the class of a config that names none (``method.name=dpo``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from trustregion.errors import ConfigError
from trustregion.models.loading import sequence_logps
from trustregion.models.logps import LogpsFn
from trustregion.objectives.catalogue import DPO
from trustregion.objectives.objective import IPO, KTO, SFT, Objective
from trustregion.schema import check_settings, component_class, in_schema

METHODS: dict[str, type[Objective]] = {cls.name: cls for cls in (DPO, IPO, KTO)}
ALL_SCHEMAS: dict[str, type[Objective]] = {**METHODS, SFT.name: SFT}


def method_class(method_cfg: Any) -> type[Objective]:
    """The ``Objective`` subclass ``method._target_`` names (or, without one, the package's ``method.name``); one
    line when it is neither."""
    target = str(OmegaConf.select(method_cfg, "_target_", default="") or "") if OmegaConf.is_config(method_cfg) else ""
    if not target:
        name = str(method_cfg.name)
        if name not in METHODS:
            raise ConfigError(
                f"method.name={name} is unknown and method._target_ is not set: set method to one of "
                f"{', '.join(METHODS)} (or a preset in conf/method), or method._target_ to <module>.<Class>"
            )
        return METHODS[name]
    return component_class(target, Objective, "method")


def with_schema(cls: type[Objective], method_cfg: Any) -> DictConfig:
    """``method_cfg`` merged into the class's schema (defaults filled in)."""
    return in_schema(cls, method_cfg, "method")


def method_settings_of(method_cfg: Any) -> DictConfig:
    """``method`` with its class's schema defaults filled in."""
    return with_schema(method_class(method_cfg), method_cfg)


def checked_method(method_cfg: Any, root: DictConfig | None = None) -> tuple[type[Objective], DictConfig]:
    """The class and its schema-filled settings, every declared range and combined rule checked (one line each)."""
    cls = method_class(method_cfg)
    merged = with_schema(cls, method_cfg)
    check_settings(merged, "method", root)
    return cls, merged


def check_reference_use(cls: type[Objective], method_name: str, rule_name: str, moves: bool) -> None:
    """A method with no reference (SimPO, ORPO, CPO) has nothing for a moving reference to move: one line."""
    if moves and not cls.uses_reference:
        raise ConfigError(
            f"method={method_name} uses no reference model, so ref_update={rule_name} would move a reference that no "
            "loss reads: set ref_update=none (a reference-free baseline)"
        )


def build_objective(
    method_cfg: Any, data_kind: str, dataset_name: str, logps: LogpsFn = sequence_logps, root: DictConfig | None = None
) -> Objective:
    """The objective ``method`` selects for data of ``data_kind`` (``pairs``, or ``unpaired``: the class's
    ``unpaired`` one)."""
    cls, merged = checked_method(method_cfg, root)
    if data_kind == "unpaired":
        if cls.unpaired is None:
            unpaired = sorted(name for name, c in METHODS.items() if c.unpaired is not None)
            raise ConfigError(
                f"dataset={dataset_name} holds unpaired examples: set method={'|'.join(unpaired)}, or use a paired "
                "dataset"
            )
        cls = cls.unpaired
    return cls(merged, logps)


def describe_method(method_cfg: Any) -> str:
    """The label of the method ``method_cfg`` selects (its class's ``describe`` on its schema-filled settings); its
    own name for one that cannot be built."""
    try:
        cls = method_class(method_cfg)
        return cls.describe(with_schema(cls, method_cfg))
    except ConfigError:
        return f"{method_cfg.name} β={method_cfg.beta:g}"
