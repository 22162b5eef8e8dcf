"""How a structured config declares a setting: its default, a one-line meaning, and the range it must lie in.

    lr: float = setting(1e-4, "AdamW's peak learning rate", POSITIVE)

``check_settings`` walks a composed config and raises one ``ConfigError`` naming the first setting out of its range
and the fix; rules that tie several settings together go in the schema's ``check_together``. The meanings are what
``--help`` and the configuration reference print, so a setting is described once, where it is declared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trustregion.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """What values a setting takes: ``ok(value)``, and how the fix names them (``a number > 0``)."""

    ok: Callable[[Any], bool]
    want: str

    def __call__(self, value: Any) -> bool:
        return bool(self.ok(value))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


POSITIVE = Range(lambda v: _finite(v) and v > 0, "a number > 0")
NON_NEGATIVE = Range(lambda v: _finite(v) and v >= 0, "a number >= 0")
FRACTION = Range(lambda v: _finite(v) and 0 < v <= 1, "a number in (0, 1]")
HALF_OPEN = Range(lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)")


def at_least(n: int) -> Range:
    return Range(lambda v: _finite(v) and v >= n, f"an integer >= {n}")


def above(x: float) -> Range:
    return Range(lambda v: _finite(v) and v > x, f"a number > {x:g}")


def between(lo: float, hi: float, want: str) -> Range:
    """``lo <= v <= hi``; ``want`` says it the user's way (a closed or half-open interval, and what the ends mean)."""
    return Range(lambda v: _finite(v) and lo <= v <= hi, want)


def one_of(*values: str) -> Range:
    return Range(lambda v: str(v.value if isinstance(v, Enum) else v) in values, f"one of {', '.join(values)}")


def or_null(inner: Range) -> Range:
    return Range(lambda v: v is None or inner(v), f"{inner.want}, or null")


def each(inner: Range, count: int | None = None) -> Range:
    """A list whose every item is in ``inner`` (and of length ``count`` when given)."""

    def ok(v: Any) -> bool:
        return (count is None or len(v) == count) and all(inner(x) for x in v)

    return Range(ok, f"{count or 'a list of'} values, each {inner.want}")


def setting(default: Any = MISSING, meaning: str = "", check: Range | None = None, *, factory: Any = None) -> Any:
    """A dataclass field with its one-line ``meaning`` and its ``check`` (``Range``); ``factory`` for a list default."""
    metadata = {"help": meaning, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class Schema:
    """Base of the structured configs: ``check_together`` holds the rules that tie settings of one group (or of one
    group and the rest of the config) together; single-setting ranges are declared on the fields. A subclass's
    ``check_together`` runs after its parents' (``check_settings`` runs each class's own)."""

    @classmethod
    def check_together(cls, node: DictConfig, root: DictConfig) -> None:
        """Raise one ``ConfigError`` naming a setting and the fix when a combination cannot run."""


def check(ok: bool, key: str, value: Any, want: str) -> None:
    """Raise one ConfigError line naming ``key``, its value and what to set it to, unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={_text(value)} is invalid: set {key} to {want}")


def _text(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (DictConfig, list)) or OmegaConf.is_list(value):
        return str(OmegaConf.to_container(value) if not isinstance(value, list) else value).replace(" ", "")
    return str(value)


def check_settings(node: DictConfig, path: str, root: DictConfig | None = None) -> None:
    """Every declared range of ``node`` (a structured config, its nested groups too), then its ``check_together``;
    ``path`` is the node's key in the whole config (``trainer``), used in the message."""
    cls = OmegaConf.get_type(node)
    if not (isinstance(cls, type) and is_dataclass(cls)):
        return
    root = node if root is None else root
    for f in fields(cls):
        if f.name not in node or OmegaConf.is_missing(node, f.name):
            continue
        value = node[f.name]
        key = f"{path}.{f.name}" if path else f.name
        if isinstance(value, DictConfig):
            check_settings(value, key, root)
            continue
        rule = f.metadata.get("check")
        if rule is not None:
            check(rule(value), key, value, rule.want)
    for klass in reversed(cls.__mro__):  # a subclass's combined rules add to its parents', never replace them
        if "check_together" in vars(klass):
            vars(klass)["check_together"].__func__(cls, node, root)


def component_class(target: str, base: type, key: str) -> type:
    """The subclass of ``base`` that ``<key>._target_`` names: a rule, a method or a data source, the package's or one
    written outside it; one line when it cannot be imported or is not one."""
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001 - Hydra wraps import and attribute errors alike
        cause = (str(e).strip().splitlines() or [type(e).__name__])[-1][:160]
        raise ConfigError(
            f"{key}._target_={target} cannot be imported ({cause}); set it to <module>.<Class> of a {base.__name__} "
            "on the Python path"
        ) from e
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{key}._target_={target} is not a subclass of {base.__module__}.{base.__qualname__}")
    return cls


def in_schema(cls: type, node: Any, key: str) -> DictConfig:
    """``node`` (a group's settings; None: none) merged into the schema of component ``cls`` (its ``config_class``),
    defaults filled in; one line for a key the schema lacks or a value of the wrong type."""
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    schema = cls.config_class
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node or {})
    except ConfigKeyError as e:
        raise ConfigError(
            f"{key}.{e.key} is not a setting of {cls.__name__} (its schema: {schema.__name__}); remove it or pick "
            f"the {key} that has it"
        ) from e
    except OmegaConfBaseException as e:
        message = (str(getattr(e, "msg", None) or e).strip().splitlines() or ["?"])[0]
        raise ConfigError(f"{key}.{e.key}={(node or {}).get(e.key)} is invalid: {message}") from e


def meanings(cls: type) -> Sequence[tuple[str, Any, str]]:
    """``(name, default, meaning)`` of each setting of schema ``cls`` (for ``--help`` and the reference)."""
    out = []
    for f in fields(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = "???"
        out.append((f.name, default, str(f.metadata.get("help", ""))))
    return out
