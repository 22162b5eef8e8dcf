"""``--help``: the config groups a command composes (their options and the chosen one) and every setting of the
composed config with its value and its one-line meaning, read from the schemas (``trustregion.schema.setting``), as
TRL's dataclass help does. Overrides on the same command line are applied first, so ``method=kto --help`` shows KTO's
settings. ``--hydra-help`` still prints Hydra's own."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import fields, is_dataclass

from omegaconf import DictConfig, OmegaConf

from trustregion.cli.app import compose, conf_dir

HIDDEN = ("hydra", "schema", "__pycache__")  # conf/ folders that are not groups a user picks from
WIDTH = 118


def groups(config_name: str) -> list[tuple[str, list[str]]]:
    """The config groups under ``conf/`` with their options (YAML files), as ``(group, options)``."""
    found = []
    for folder in sorted(p for p in conf_dir().iterdir() if p.is_dir() and p.name not in HIDDEN):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            found.append((folder.name, options))
    return found


def _value(raw: dict, key: str) -> str:
    """A setting as the config holds it: its value, or the interpolation it follows (``${trainer.seed}``)."""
    value = raw.get(key)
    return "null" if value is None else str(value)


def field_meanings(schema: type | None) -> dict[str, str]:
    """Each field's meaning, a subclass's own where it gives one, else its parent's (a source that only changes a
    default keeps the parent's words)."""
    found: dict[str, str] = {}
    for klass in reversed(schema.__mro__ if isinstance(schema, type) else ()):
        if is_dataclass(klass):
            found.update({f.name: str(f.metadata["help"]) for f in fields(klass) if f.metadata.get("help")})
    return found


def settings(node: DictConfig, path: str) -> list[str]:
    """``path.key = value   meaning`` for every setting of a structured ``node`` (its nested groups too)."""
    meanings = field_meanings(OmegaConf.get_type(node))
    raw = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
    lines = []
    for key in node:
        full = f"{path}.{key}" if path else str(key)
        child = node[key] if not OmegaConf.is_missing(node, key) else None
        if isinstance(child, DictConfig) and is_dataclass(OmegaConf.get_type(child)):
            lines += settings(child, full)
            continue
        head = f"  {full} = {_value(raw, str(key))}"
        meaning = meanings.get(str(key), "")
        lines.append(_wrapped(head, meaning))
    return lines


def _wrapped(head: str, meaning: str) -> str:
    if not meaning:
        return head
    column = 46
    if len(head) >= column - 1:
        return head + "\n" + textwrap.fill(meaning, WIDTH, initial_indent=" " * column, subsequent_indent=" " * column)
    return textwrap.fill(meaning, WIDTH, initial_indent=head.ljust(column), subsequent_indent=" " * column)


def help_text(command: str, config_name: str, overrides: Sequence[str]) -> str:
    """The whole ``--help`` of ``command`` with ``overrides`` applied."""
    cfg = compose(*overrides, config_name=config_name)
    chosen = {group: OmegaConf.select(cfg, f"{group}.name", default=None) for group, _ in groups(config_name)}
    lines = [
        f"usage: {command} [group=option ...] [key=value ...] [--multirun] [--cfg job] [--hydra-help]",
        "",
        "Config groups (group=option; * is the one composed here):",
    ]
    for group, options in groups(config_name):
        if group not in cfg and group != "experiment":
            continue
        marked = [f"{o}*" if o == chosen.get(group) else o for o in options]
        lines.append(
            textwrap.fill(", ".join(marked), WIDTH, initial_indent=f"  {group:<12}", subsequent_indent=" " * 14)
        )
    lines += ["", "Settings (key=value; override any of them):", *settings(cfg, "")]
    return "\n".join(lines)
