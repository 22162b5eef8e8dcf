"""The documentation site's generated pages: the configuration reference, written from the structured configs (each
setting's type, default and the meaning declared with ``trustregion.schema.setting``, read as ``--help`` reads it),
and the metrics reference, written from ``trustregion.metric_catalog``.

``make docs`` builds the site with MkDocs; ``scripts/mkdocs_hooks.py`` adds these pages to it at build time, so they
are never stale and never in git. ``PAGES`` maps each page's path under ``docs/`` to the function that writes it.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields, is_dataclass
from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trustregion import metric_catalog
from trustregion.cli.app import CONF_MODULE, register
from trustregion.cli.help import field_meanings, groups

REQUIRED = "required"  # a setting without a default: the command line must give it
# The two training commands and the config each composes.
COMMANDS = (("trustregion-train", "config"), ("trustregion-sft", "sft"))
# The groups in the order a reader meets them; any other group under conf/ follows.
ORDER = ("method", "ref_update", "model", "dataset", "trainer", "logger", "deepspeed", "peft")


# --- reading the schemas ------------------------------------------------------------------------------------------


@functools.cache
def _compose(config_name: str, *overrides: str) -> DictConfig:
    """The config a command composes, with Hydra's own node (``hydra.runtime.choices``: the options chosen)."""
    from hydra import compose, initialize_config_module

    register()
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=True)


def _schema(node: Any) -> type | None:
    kind = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    return kind if isinstance(kind, type) and is_dataclass(kind) else None


def _checks(schema: type) -> dict[str, Any]:
    """Each field's declared range (``setting(..., check)``), a subclass's own where it declares one."""
    found: dict[str, Any] = {}
    for klass in reversed(schema.__mro__):
        if is_dataclass(klass):
            found.update({f.name: f.metadata["check"] for f in fields(klass) if f.metadata.get("check") is not None})
    return found


def _type_name(hint: Any) -> str:
    """A field's type as a reader says it: ``int or null``, ``list of str``, ``auto | exact | factors``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        name = " or ".join(_type_name(a) for a in inner)
        return f"{name} or null" if len(inner) < len(args) else name
    if isinstance(hint, type) and issubclass(hint, Enum):
        return " | ".join(str(m.value) for m in hint)
    if origin in (list, tuple, dict):
        names = [_type_name(a) for a in args if a is not Ellipsis]
        if origin is list:
            return f"list of {names[0]}" if names else "list"
        if origin is tuple:
            return "(" + ", ".join(names) + ")"
        return "mapping"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _shown(value: Any) -> str:
    """A value as a YAML file or the command line writes it."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False, enum_to_str=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return str(value)


def settings_of(schema: type, prefix: str) -> list[dict[str, str]]:
    """One row per setting of ``schema`` (nested schemas flattened): its override path, type, default, meaning and
    the values it takes. The meaning is ``--help``'s (``trustregion.cli.help.field_meanings``)."""
    meanings, checks = field_meanings(schema), _checks(schema)
    hints = typing.get_type_hints(schema)
    rows = []
    for f in fields(schema):
        path = f"{prefix}.{f.name}" if prefix else f.name
        hint = hints.get(f.name, Any)
        if isinstance(hint, type) and is_dataclass(hint):
            rows += settings_of(hint, path)
            continue
        required = f.default_factory is MISSING and f.default in (MISSING, "???")  # omegaconf.MISSING is "???"
        default = REQUIRED if required else _shown(_default(f))
        rule = checks.get(f.name)
        rows.append(
            {
                "key": path,
                "type": _type_name(hint),
                "default": default,
                "meaning": meanings.get(f.name, ""),
                "takes": rule.want if rule is not None else "",
            }
        )
    return rows


# --- Markdown -----------------------------------------------------------------------------------------------------


def _text(value: str) -> str:
    """Prose for a table cell: Markdown and HTML characters escaped outside `code` spans."""
    parts = re.split(r"(`[^`]*`)", value)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(part.replace("|", "\\|"))
        else:
            out.append(
                part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
                .replace("*", "\\*").replace("_", "\\_")
            )  # fmt: skip
    return "".join(out)


def _code(value: str) -> str:
    """A value as inline code in a table cell (a backtick-free value; ``|`` escaped for the table)."""
    return "`" + value.replace("`", "'").replace("|", "\\|") + "`" if value != "" else ""


def settings_table(rows: list[dict[str, str]]) -> str:
    """A table of settings, in a ``settings`` block (its styles: ``docs/stylesheets/extra.css``)."""
    lines = ['<div class="settings" markdown>', "", "| setting | type | default | meaning |", "|---|---|---|---|"]
    for r in rows:
        meaning = _text(r["meaning"]) if r["meaning"] else ""
        if r["takes"]:
            meaning += ("; " if meaning else "") + "takes " + _text(r["takes"])
        default = "*required*" if r["default"] == REQUIRED else _code(r["default"])
        lines.append(f"| {_code(r['key'])} | {_text(r['type'])} | {default} | {meaning} |")
    return "\n".join([*lines, "", "</div>"])


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    else:
        yield path, value


# --- the configuration reference ----------------------------------------------------------------------------------


def _group_options(group: str, options: list[str]) -> list[tuple[str, str, DictConfig]]:
    """``(option, config name, the group's composed node)`` for each option a command composes."""
    found = []
    for option in options:
        for _, config_name in COMMANDS:
            try:
                cfg = _compose(config_name, f"{group}={option}")
            except Exception:  # noqa: BLE001 - an option of a group this command does not compose
                continue
            if group in cfg:
                found.append((option, config_name, cfg[group]))
                break
    return found


def _sets(option: str, node: DictConfig, schema: type) -> str:
    """What an option's YAML sets away from its schema's defaults, as overrides (its name where it is the option's)."""
    given = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
    default = dict(_leaves(OmegaConf.to_container(OmegaConf.structured(schema), resolve=False, enum_to_str=True)))
    changed = [
        f"{k}={_shown(v)}" for k, v in _leaves(given) if default.get(k) != v and not (k == "name" and v == option)
    ]
    return ", ".join(_code(c) for c in changed) or "the schema's defaults"


def _chosen() -> dict[str, dict[str, str]]:
    """Each command's default option of each group."""
    found: dict[str, dict[str, str]] = {}
    for command, config_name in COMMANDS:
        choices = _compose(config_name).hydra.runtime.choices
        found[command] = {str(k): str(v) for k, v in choices.items() if v is not None and "/" not in str(k)}
    return found


def _group_section(group: str, options: list[str], chosen: dict[str, dict[str, str]]) -> list[str]:
    composed = _group_options(group, options)
    defaults = [f"`{chosen[c][group]}` for `{c}`" for c, _ in COMMANDS if group in chosen[c]]
    out = [f"## `{group}`", ""]
    out.append(
        f"Options: {', '.join(f'`{o}`' for o in options)}. "
        + (f"Default: {' and '.join(defaults)}." if defaults else "Not composed unless named.")
    )
    out.append("")
    schemas: list[type] = []
    for _, _, node in composed:
        schema = _schema(node)
        if schema is not None and schema not in schemas:
            schemas.append(schema)
    if not schemas:
        return out
    # The settings every option has: the schemas' common base (a group's one schema, or the base its sources extend).
    common = [k for k in schemas[0].__mro__ if is_dataclass(k) and all(issubclass(s, k) for s in schemas)][0]
    base_rows = settings_of(common, group)
    out += [f"Every option has these settings (schema `{common.__module__}.{common.__name__}`):", ""]
    out += [settings_table(base_rows), ""]
    base = {r["key"]: r for r in base_rows}
    for schema in schemas:
        if schema is common:
            continue
        own = [r for r in settings_of(schema, group) if base.get(r["key"]) != r]
        names = ", ".join(f"`{o}`" for o, _, node in composed if _schema(node) is schema)
        out += [f"### {names}", ""]
        out += [
            f"Schema `{schema.__module__}.{schema.__name__}`; its own settings, and those whose default differs:",
            "",
        ]
        out += [settings_table(own), ""]
    out += ["What each option's YAML file (`conf/" + group + "/<option>.yaml`) sets:", ""]
    out += ["| option | sets |", "|---|---|"]
    for option, _, node in composed:
        schema = _schema(node)
        out.append(f"| `{option}` | {_sets(option, node, schema) if schema else ''} |")
    out.append("")
    return out


def _experiments(options: list[str]) -> list[str]:
    out = [
        "## `experiment`",
        "",
        "A whole experiment's settings over the groups' neutral defaults (`conf/experiment/<name>.yaml`). "
        "`<name>_sft` is for `trustregion-sft`, the others for `trustregion-train`. What each one changes in the "
        "composed config:",
        "",
        "| experiment | changes |",
        "|---|---|",
    ]
    for option in options:
        config_name = "sft" if option.endswith("_sft") else "config"
        base = _compose(config_name)
        cfg = _compose(config_name, f"experiment={option}")
        picked = [f"{g}={v}" for g, v in cfg.hydra.runtime.choices.items() if "/" not in str(g) and g != "experiment"
                  and v != base.hydra.runtime.choices.get(g)]  # fmt: skip
        # Against the same options without the experiment: what its own file sets beyond picking them.
        before = dict(_leaves(OmegaConf.to_container(_compose(config_name, *picked), resolve=False, enum_to_str=True)))
        after = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
        changed = [f"{k}={_shown(v)}" for k, v in _leaves(after) if not k.startswith("hydra.") and before.get(k) != v]
        out.append(f"| `{option}` | {', '.join(_code(c) for c in picked + changed)} |")
    return [*out, ""]


def config_reference() -> str:
    """The configuration reference page: every group, option and setting, from the structured configs."""
    from trustregion.config import Config, EvalConfig, RunConfig
    from trustregion.judge import JudgeRunConfig
    from trustregion.report.cli import ReportConfig
    from trustregion.search import SearchConfig

    chosen = _chosen()
    found = dict(groups("config"))
    found.update(dict(groups("sft")))
    names = [g for g in ORDER if g in found] + sorted(g for g in found if g not in ORDER and g != "experiment")
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by trustregion.docs.config_reference from the structured configs: edit the meanings where "
        "the settings are declared (trustregion.schema.setting), not here. -->",
        "",
        "Every setting the commands take, with its type, its schema default and its meaning. This page is written "
        "from the structured configs when the site is built, from the same one-line meanings that `--help` prints, "
        "so it cannot drift from the code. Set any of them on the command line as `key=value`; pick an option of a "
        "group as `group=option`.",
        "",
        "A group's *schema default* is what a setting is when the option's YAML file leaves it alone; the table "
        "*What each option's YAML file sets* under each group gives the rest. `python -m trustregion.train --cfg job` "
        "prints the composed config of a command line, and `--help` its groups and settings with their values.",
        "",
        "The options each command composes when the command line names none:",
        "",
        "| group | " + " | ".join(f"`{c}`" for c, _ in COMMANDS) + " |",
        "|---|" + "---|" * len(COMMANDS),
        *(f"| `{g}` | " + " | ".join(_code(chosen[c].get(g, "")) or "–" for c, _ in COMMANDS) + " |" for g in names),
        "",
    ]
    for group in names:
        out += _group_section(group, found[group], chosen)
    out += _experiments(found.get("experiment", []))
    run_fields = {f.name for f in fields(RunConfig)}
    top = [
        r for r in settings_of(Config, "") if r["key"].split(".")[0] in run_fields - set(found) and "." not in r["key"]
    ]
    out += [
        "## Run settings",
        "",
        "Settings of the run itself, outside any group (both training commands):",
        "",
        settings_table(top),
        "",
        "## `eval`",
        "",
        "Generation-based evaluation during `trustregion-train` (not a group: one schema, set key by key; "
        "see [the overoptimization protocol](../concepts/overoptimization.md)).",
        "",
        settings_table(settings_of(EvalConfig, "eval")),
        "",
        "## `trustregion-report`",
        "",
        "The report's own settings (`conf/report.yaml`).",
        "",
        settings_table(settings_of(ReportConfig, "")),
        "",
        "## `trustregion-judge`",
        "",
        "The LLM judge's own settings (`conf/judge.yaml`); see [the LLM judge](../guides/judge.md).",
        "",
        settings_table(settings_of(JudgeRunConfig, "")),
        "",
        "## `trustregion-search`",
        "",
        "The search composes the training config and adds `search` (`conf/search.yaml`); Hydra's Optuna sweeper is "
        "set under `hydra.sweeper` (see [searching schedules](../guides/searching.md)).",
        "",
        settings_table(settings_of(SearchConfig, "search")),
        "",
    ]
    return "\n".join(out)


def schema_keys() -> set[str]:
    """Every setting's override path that the configuration reference must hold (for its test): each group's
    options' schemas, the run settings, ``eval`` and the report's, judge's and search's own."""
    from trustregion.config import Config
    from trustregion.judge import JudgeRunConfig
    from trustregion.report.cli import ReportConfig
    from trustregion.search import SearchConfig

    keys = {r["key"] for r in settings_of(Config, "") if "." not in r["key"] or r["key"].startswith("eval.")}
    for config_name in ("config", "sft"):
        for group, options in groups(config_name):
            for _, _, node in _group_options(group, options):
                schema = _schema(node)
                if schema is not None:
                    keys |= {r["key"] for r in settings_of(schema, group)}
    keys |= {r["key"] for r in settings_of(ReportConfig, "")}
    keys |= {r["key"] for r in settings_of(JudgeRunConfig, "")}
    keys |= {r["key"] for r in settings_of(SearchConfig, "search")}
    return keys - {"method", "ref_update", "model", "dataset", "trainer", "logger", "deepspeed", "peft", "eval"}


# --- the metrics reference ----------------------------------------------------------------------------------------


def metrics_reference() -> str:
    """Every logged metric and what it estimates, from ``trustregion.metric_catalog``."""
    sections = (
        ("Training", "Every `trainer.log_every` optimizer steps, averaged over the steps since the last row.",
         metric_catalog.TRAINING),
        ("The reference", "Logged with the training rows; `ref/*` keys come from the update rule.",
         metric_catalog.REFERENCE),
        ("Data and the run", "In the first row (step 0), what the loader kept and cut.", metric_catalog.DATA),
        ("Evaluation", "At every evaluation (step 0, every `trainer.eval_every` steps and the end): held-out "
         "preference metrics, and for data with a gold judge the generation-based ones.", metric_catalog.EVALUATION),
    )  # fmt: skip
    out = [
        "# Metrics reference",
        "",
        "<!-- Generated by trustregion.docs.metrics_reference from trustregion/metric_catalog.py. -->",
        "",
        "Every key a run writes to `metrics.jsonl` and to wandb, with what it estimates. The names follow TRL's where "
        "one exists. This page is written from `trustregion/metric_catalog.py`, which a test holds every logged key "
        "against; [Metrics](../concepts/metrics.md) says how to read them. A name ending in `/*` stands for a "
        "family of keys.",
        "",
    ]
    for title, intro, rows in sections:
        out += [f"## {title}", "", intro, "", metric_catalog.markdown_table(rows), ""]
    return "\n".join(out)


PAGES: dict[str, Callable[[], str]] = {
    "reference/config.md": config_reference,
    "reference/metrics.md": metrics_reference,
}
