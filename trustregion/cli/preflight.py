"""Hydra's composition errors (an unknown key, an unknown group option, a value of the wrong type) as one line,
like the project's own range checks: the entry points compose the config once before Hydra does."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

from trustregion.cli.app import CONF_DIR, compose, fail


def first_values(argv: Sequence[str]) -> list[str] | None:
    """The overrides of ``argv`` with each sweep (``a=1,2``, ``a=interval(0, 1)``) at its first value; None when a flag (``--cfg``,
    ``--help``) asks Hydra for something other than a run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return None
    # Hydra's own settings do not change the config, except the search path (a user's config groups)
    hydra_only = [a for a in argv if a.startswith(("hydra.", "hydra/")) and not a.startswith("hydra.searchpath=")]
    plain = [a for a in argv if a not in ("-m", "--multirun", *hydra_only)]
    out = []
    for o in OverridesParser.create().parse_overrides(plain):
        if o.is_interval_sweep():  # an Optuna sweeper's interval(a, b): checked at its lower end
            out.append(f"{o.get_key_element()}={o.value().start}")
        elif o.is_sweep_override():
            value = next(iter(o.sweep_string_iterator()))
            out.append(f"{o.get_key_element()}={value}")
        else:
            out.append(o.input_line)
    return out


def describe(error: Exception, overrides: Sequence[str], config_name: str) -> str:
    """One line naming the override at fault and the fix."""
    from hydra.errors import MissingConfigException

    cause = error.__cause__ or error
    if isinstance(error, MissingConfigException) and "/" in str(error.missing_cfg_file or ""):
        group, option = str(error.missing_cfg_file).rsplit("/", 1)
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        near = difflib.get_close_matches(option, options, n=1)
        hint = f" (did you mean {group}={near[0]}?)" if near else ""
        return f"{group}={option} is not an option: set {group} to one of {', '.join(options)}{hint}"
    full_key = getattr(cause, "full_key", None)
    message = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    if full_key and "not in" in message:
        parent, _, leaf = str(full_key).rpartition(".")
        others = [o for o in overrides if not o.lstrip("+~").startswith(f"{full_key}=")]
        from omegaconf import OmegaConf

        node = compose(*others, config_name=config_name)
        keys = list((OmegaConf.select(node, parent) if parent else node).keys())
        near = difflib.get_close_matches(leaf, [str(k) for k in keys], n=1)
        hint = f"did you mean {parent + '.' if parent else ''}{near[0]}?" if near else "`--cfg job` lists the keys"
        return f"{full_key} is not a key of {parent or 'the config'}: {hint}"
    if full_key:
        given = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == full_key), "?")
        return f"{full_key}={given} is invalid: {message}"
    return message


def preflight(argv: Sequence[str], config_name: str) -> None:
    """Compose the config as Hydra will; a composition error ends the run with one line and exit code 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return  # Hydra's own report, traceback included
    overrides = first_values(argv)
    if overrides is None:
        return
    try:
        compose(*overrides, config_name=config_name)
    except Exception as e:  # noqa: BLE001 - Hydra and OmegaConf raise several types for a bad override
        fail(describe(e, overrides, config_name))
