"""Mistakes on the command line as one line with exit code 2, before any job starts: Hydra's composition errors
(an unknown key, group option or launcher, a value of the wrong type), Hydra flags that cannot be combined, and the
project's own range checks, for every point of a sweep (a bad second point must not wait until the first has run,
hours later on Slurm)."""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Sequence

from trustregion.cli.app import compose, conf_dir, fail

MODES = {"--run": "--run", "-r": "--run", "--multirun": "--multirun", "-m": "--multirun", "--cfg": "--cfg",
         "-c": "--cfg", "--info": "--info", "-i": "--info", "--shell-completion": "--shell-completion",
         "-sc": "--shell-completion"}  # fmt: skip
ALL_POINTS = 256  # sweeps up to this many points are checked point by point; larger ones one value at a time


def _values(override) -> list[str]:
    """The values a sweep override takes (an Optuna interval: its two ends); one value for a plain override."""
    if override.is_interval_sweep():
        return [str(override.value().start), str(override.value().end)]
    if override.is_sweep_override():
        try:
            return list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - a glob over group options: Hydra expands it, checked by Hydra
            return []
    return [override.input_line.split("=", 1)[1]]


def sweep_points(argv: Sequence[str]) -> list[list[str]] | None:
    """The override lists of every point of the sweep ``argv`` describes (the product of the sweep overrides;
    past ``ALL_POINTS`` points, each value with the others at their first); None when a flag (``--cfg``,
    ``--help``) asks Hydra for something other than a run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return None
    # Hydra's own settings do not change the config, except its groups (a launcher) and the search path
    hydra_only = [a for a in argv if a.startswith("hydra.") and not a.startswith("hydra.searchpath=")]
    plain = [a for a in argv if a not in ("-m", "--multirun", *hydra_only)]
    parsed = OverridesParser.create().parse_overrides(plain)
    pairs = [(o.input_line.split("=", 1)[0], _values(o)) for o in parsed]
    pairs = [(k, v) for k, v in pairs if v]  # a glob over group options is left to Hydra
    keys, choices = [k for k, _ in pairs], [v for _, v in pairs]
    first = [c[0] for c in choices]
    count = 1
    for c in choices:
        count *= len(c)
    if count <= ALL_POINTS:
        combos = list(itertools.product(*choices))
    else:
        combos = [tuple(first)] + [
            tuple(v if j == i else first[j] for j in range(len(first))) for i, c in enumerate(choices) for v in c[1:]
        ]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in combos]


def name_jobs_by_what_varies(argv: Sequence[str]) -> list[str]:
    """For a ``--multirun``: the Hydra override that keeps out of each job's dir name (``hydra.job.override_dirname``)
    every override that is the same at every point, so a job dir reads ``3_ref_update=soft,trainer.seed=2``; none
    for a single run or a sweep Hydra expands itself (a glob)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not {"-m", "--multirun"} & set(argv) or sweep_points(argv) is None:
        return []
    plain = [a for a in argv if a not in ("-m", "--multirun") and not a.startswith("hydra.")]
    same = [o.key_or_group for o in OverridesParser.create().parse_overrides(plain) if not o.is_sweep_override()]
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(same)}]"] if same else []


def first_values(argv: Sequence[str]) -> list[str] | None:
    """The overrides of ``argv`` with each sweep at its first value (None for a flag other than ``--multirun``)."""
    points = sweep_points(argv)
    return None if points is None else points[0]


def describe(error: Exception, overrides: Sequence[str], config_name: str) -> str:
    """One line naming the override at fault and the fix."""
    from hydra.errors import MissingConfigException

    cause = error.__cause__ or error
    if isinstance(error, MissingConfigException) and "/" in str(error.missing_cfg_file or ""):
        group, option = str(error.missing_cfg_file).rsplit("/", 1)
        options = sorted(error.options or (p.stem for p in (conf_dir() / group).glob("*.yaml")))
        near = difflib.get_close_matches(option, options, n=1)
        hint = f" (did you mean {group}={near[0]}?)" if near else ""
        return f"{group}={option} is not an option: set {group} to one of {', '.join(options)}{hint}"
    full_key = getattr(cause, "full_key", None)
    message = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    if full_key and "not in" in message:
        parent, _, leaf = str(full_key).rpartition(".")
        key_of = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
        others = [o for o, k in zip(overrides, key_of) if k != full_key and not k.startswith(f"{full_key}.")]
        from omegaconf import OmegaConf

        try:
            node = compose(*others, config_name=config_name)
            keys = list((OmegaConf.select(node, parent) if parent else node).keys())
        except Exception:  # noqa: BLE001 - another override is wrong too: name this one without a hint
            keys = []
        near = difflib.get_close_matches(leaf, [str(k) for k in keys], n=1)
        if near:
            return f"{full_key} is not a key of {parent or 'the config'}: did you mean {parent + '.' if parent else ''}{near[0]}?"
        chosen, having = options_having(parent, leaf, others, config_name)
        if having:
            having.sort(key=lambda option: option != "local")  # your own files first: the likeliest slip
            also = f" (so do {', '.join(having[1:])})" if len(having) > 1 else ""
            return f"{full_key} is not a key of {parent}={chosen}: {parent}={having[0]} has it{also}; add {parent}={having[0]}"
        return f"{full_key} is not a key of {parent or 'the config'}: `--cfg job` lists the keys"
    if full_key:
        given = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == full_key), "?")
        return f"{full_key}={given} is invalid: {message}"
    return message


def options_having(group: str, key: str, others: Sequence[str], config_name: str) -> tuple[str, list[str]]:
    """(the option of config group ``group`` these overrides select, the group's options that have setting ``key``):
    for a key given to the wrong option, as ``dataset.path`` with the toy data instead of ``dataset=local``."""
    from omegaconf import OmegaConf

    if not group or "." in group or not (conf_dir() / group).is_dir():
        return "?", []
    chosen = next((o.split("=", 1)[1] for o in others if o.split("=", 1)[0] == group), None)
    having = []
    for option in sorted(p.stem for p in (conf_dir() / group).glob("*.yaml")):
        rest = [o for o in others if o.split("=", 1)[0] != group]
        try:
            node = compose(*rest, f"{group}={option}", config_name=config_name)
        except Exception:  # noqa: BLE001 - an option that does not compose with the other overrides is no hint
            continue
        if key in OmegaConf.select(node, group):
            having.append(option)
    if chosen is None:
        try:
            chosen = str(OmegaConf.select(compose(*others, config_name=config_name), f"{group}.name"))
        except Exception:  # noqa: BLE001 - the hint names the options that have the key all the same
            chosen = "?"
    return chosen, having


def check_point(cfg, config_name: str) -> None:
    """The project's own checks of one composed config, as the run would make them at its start (ConfigError)."""
    from trustregion.config import validate
    from trustregion.models.loading import check_model_path

    if config_name == "config":
        from trustregion.objectives.methods import check_reference_use, checked_method
        from trustregion.reference.rules import build_rule

        moves = build_rule(cfg.ref_update).moves
        validate(cfg, reference_moves=moves)
        cls, _ = checked_method(cfg.method, cfg)
        check_reference_use(cls, str(cfg.method.name), str(cfg.ref_update.name), moves)
    elif config_name == "sft":
        validate(cfg)
    if "dataset" in cfg:  # a source written outside the package: its own schema
        from trustregion.data import dataset_settings
        from trustregion.schema import check_settings

        check_settings(dataset_settings(cfg.dataset), "dataset", cfg)
    if "model" in cfg:
        check_model_path(cfg.model)


def check_flags(argv: Sequence[str]) -> None:
    """Hydra runs one of --run, --multirun, --cfg, --info, --shell-completion: a second is one line, not a traceback."""
    modes = sorted({MODES[a] for a in argv if a in MODES})
    if len(modes) > 1:
        fail(
            f"{' and '.join(modes)} cannot be combined: Hydra does one of --run, --multirun, --cfg, --info; "
            "drop --multirun to print the config (--cfg shows the first point of a sweep)"
        )


def preflight(argv: Sequence[str], config_name: str) -> None:
    """Compose the config as Hydra will, for every sweep point, and check it; an error ends the run with one line and
    exit code 2 before any job starts."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return  # Hydra's own report, traceback included
    check_flags(argv)
    points = sweep_points(argv)
    if points is None:
        return
    from trustregion.errors import TrustRegionError

    for i, overrides in enumerate(points):
        try:
            cfg = compose(*overrides, config_name=config_name)
        except Exception as e:  # noqa: BLE001 - Hydra and OmegaConf raise several types for a bad override
            fail(describe(e, overrides, config_name))
        try:
            check_point(cfg, config_name)
        except TrustRegionError as e:
            where = f" (sweep point {i + 1} of {len(points)}: {' '.join(overrides)})" if len(points) > 1 else ""
            fail(f"{e}{where}")


MIN_FREE = 1 << 20  # bytes: a run dir's device with less than this cannot take even its records


def _run_dir_pattern(argv: Sequence[str], config_name: str) -> str:
    """Where the job(s) will write: ``hydra.run.dir`` (``hydra.sweep.dir`` for a sweep) as given, or the config's,
    up to its first interpolation (``outputs/runs/`` of ``outputs/runs/${run_time:...}``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from trustregion.cli.app import CONF_MODULE

    key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(argv) else "hydra.run.dir"
    given = [a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")]
    if given:
        return given[-1]
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = hydra_compose(config_name, return_hydra_config=True)
    from omegaconf import OmegaConf

    raw = str(OmegaConf.to_container(cfg.hydra, resolve=False)["sweep" if "sweep" in key else "run"]["dir"])
    return raw.split("${", 1)[0] or "."


def check_run_dir_writable(argv: Sequence[str], config_name: str) -> None:
    """One line, before Hydra creates the run dir and its log file, when that dir (or, for a new one, the nearest
    dir above it that exists) is read-only or not writable, or its device is full: Hydra would end in a traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or sweep_points(argv) is None:
        return
    from pathlib import Path

    target = Path(_run_dir_pattern(argv, config_name)).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        fail(f"the run dir {target} cannot be made: {existing} is a file; set hydra.run.dir to another dir")
    if not os.access(existing, os.W_OK):
        why = "on a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "not writable"
        where = "it is" if existing == target else f"{existing} is"
        fail(f"the run dir {target} cannot be written ({where} {why}): set hydra.run.dir to a dir you can write")
    free = os.statvfs(existing).f_bavail * os.statvfs(existing).f_frsize
    if free < MIN_FREE:
        fail(
            f"the run dir {target} cannot be written: no space left on its device ({free // 1024} KiB free); free "
            "space or set hydra.run.dir to another disk"
        )
