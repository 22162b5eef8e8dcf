"""What the command-line entry points share: schema registration, one-line errors, launch handling, step counts.

Nothing here runs at import time: ``register()`` is called by the entry points and by ``compose``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from trustregion.console import error_line
from trustregion.errors import DISK_ERRORS, TrustRegionError, lost_peer

# The configs ship with the package (``conf/`` is the package ``trustregion.conf``), so the console scripts and an
# installed wheel find them from any directory; a user's own config dir adds to them with ``hydra.searchpath``.
CONF_MODULE = "trustregion.conf"
F = TypeVar("F", bound=Callable[..., Any])


def conf_dir() -> Path:
    """Where the shipped configs are (the repo's ``conf/`` in a checkout)."""
    from importlib.resources import files

    return Path(str(files(CONF_MODULE)))


def register() -> None:
    """Store every schema under ``schema/<group>/<name>`` (not an option of the group itself), and the
    ``run_time`` and ``fraction`` resolvers. Idempotent."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from trustregion import config
    from trustregion.data import sources
    from trustregion.objectives.methods import ALL_SCHEMAS
    from trustregion.reference.registry import RULES

    if not OmegaConf.has_resolver("run_time"):
        OmegaConf.register_new_resolver("run_time", config._run_time, use_cache=True)
    if not OmegaConf.has_resolver("run_label"):  # the default run dir: ..._<the family's label>
        OmegaConf.register_new_resolver("run_label", run_label)
    if not OmegaConf.has_resolver("job_dir"):  # a sweep job's dir: its number, then what varies (3_trainer.seed=2)
        OmegaConf.register_new_resolver("job_dir", lambda num, varies="": f"{num}_{varies}" if varies else str(num))
    if not OmegaConf.has_resolver("fraction"):  # ${fraction:${.max_length},0.5}: a length that follows another
        OmegaConf.register_new_resolver("fraction", lambda n, f: int(int(n) * float(f)))
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=config.Config)
    cs.store(name="base_sft_config", node=config.SFTRunConfig)
    for group, node in config.schemas().items():
        cs.store(group=f"schema/{group}", name="base", node=node)
    for name, objective in ALL_SCHEMAS.items():
        cs.store(group="schema/method", name=name, node=objective.config_class)
    for name, rule in RULES.items():
        cs.store(group="schema/ref_update", name=name, node=rule.config_class)
    for name, source in sources().items():
        cs.store(group="schema/dataset", name=name, node=source.schema)


def run_label(*, _root_: Any) -> str:
    """``${run_label:}``: the run's family label in file-name form (``dpo-b0.5-soft-a0.03-t1``,
    ``training.identity``); ``run`` where the config cannot say yet (the run then names what is wrong)."""
    from omegaconf import OmegaConf

    from trustregion.training.identity import identity_of

    task = OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"])
    try:
        return identity_of(task).slug
    except Exception:  # noqa: BLE001 - a bad rule or setting is reported by the run itself, in one line
        return "run"


def compose(*overrides: str, config_name: str = "config"):
    """The config the CLI would compose from ``conf/`` with these overrides (for tests and scripts)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register()
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr, and into the run's log file (Hydra's ``<job>.log``) where
    there is one, and exit with code 2."""
    error_line(message)
    sys.exit(2)


def exit_on_error(fn: F, where: Path | None = None) -> F:
    """Turn a TrustRegionError, a disk fault or Ctrl-C outside a training step into ``fail`` (HYDRA_FULL_ERROR=1
    keeps the traceback); a disk fault that names no file names ``where`` (the run dir)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (TrustRegionError, OSError, KeyboardInterrupt, RuntimeError) as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            if isinstance(e, RuntimeError) and not isinstance(e, OSError):
                line = lost_peer(e, where)
                if line is None:
                    raise
                fail(line)
            if isinstance(e, TrustRegionError):
                fail(str(e))
            if isinstance(e, KeyboardInterrupt):
                fail("interrupted (Ctrl-C) outside a training step; checkpoints already written are kept")
            if e.errno not in DISK_ERRORS:
                raise
            fail(
                f"{e.strerror}: {e.filename or where or 'a file of the run'}; free space or fix the permissions, then rerun"
            )

    return wrapped  # type: ignore[return-value]


def run_locked(fn: Callable[[Any, Path], Any], cfg: Any, records: bool = True) -> Any:
    """``fn(cfg, run_dir)`` for this Hydra job, holding the run dir's lock from before Hydra's records
    (``.hydra/``) are written: a run refused because another holds the dir leaves that run's records alone
    (the configs set ``hydra.output_subdir: null``, so Hydra itself writes none). Rank 0 alone writes them, here or,
    with ``records=False``, in the job once it knows it runs (the training recipe: a refused resume leaves the
    records of the run it would have continued as they are)."""
    from trustregion.engines.launch import launched_rank
    from trustregion.training.rundir import holds_only_a_start, lock_run_dir, write_hydra_records

    run_dir = hydra_run_dir()
    if launched_rank() > 0:
        return fn(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    try:
        if records:
            write_hydra_records(run_dir, cfg)
        return fn(cfg, run_dir)
    except BaseException:
        lock.close()
        if holds_only_a_start(run_dir):  # a refused start: no empty run dir is left behind to pile up
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        lock.close()


def hydra_run_dir() -> Path:
    """This Hydra job's output dir (one per job in a multirun)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def prepare_launch(argv: Sequence[str]) -> list[str]:
    """Adapt a multi-process launch to Hydra: take the deepspeed launcher's ``--local_rank``, agree on
    one run dir across ranks, and let only rank 0 write ``.hydra/``; a Slurm sweep's launcher reads job states
    from squeue where sacct cannot answer (``trustregion.cli.slurm_status``)."""
    args = []
    for arg in argv:
        if arg.startswith("hydra/launcher=") and arg.split("=", 1)[1] in ("slurm", "slurm_cpu", "local"):
            if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
                fail(f"{arg} needs hydra-submitit-launcher: pip install hydra-submitit-launcher")
            if arg.split("=", 1)[1] != "local":  # job states from squeue where sacct cannot answer
                from trustregion.cli import slurm_status

                slurm_status.install()
        if arg.startswith("--local_rank"):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1] if "=" in arg else "0")
        else:
            args.append(arg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from trustregion.engines.launch import agree_on_run_time

        agree_on_run_time()
        if int(os.environ.get("RANK", "0")) > 0:
            args.append("hydra.output_subdir=null")
    return args


def entry_point(
    command: str,
    config_name: str,
    job: Callable[[Any, Path], Any],
    register_schemas: Callable[[], None] = register,
    show: Callable[[Any, Any], None] | None = None,
    records: bool = True,
    resumable: bool = False,
) -> Callable[[], Any]:
    """The ``main`` of ``command`` (``trustregion-train``): ``--help`` lists its groups and settings; else its schemas
    registered, the launch adapted to Hydra (``prepare_launch``), every sweep point checked before any job starts
    (``preflight``), the run dir checked writable, then per Hydra job
    ``job(cfg, run_dir)`` with one-line errors, holding the run dir and writing its records (``.hydra/``) unless
    ``records`` is false (a command that writes no run dir); ``show(cfg, result)`` prints what the job returned,
    which Hydra gets back (an Optuna sweep maximises it). A ``resumable`` command (the training recipe) continues a
    run in its own dir (``cli.resume``) and writes the records itself once it knows it runs."""
    import hydra

    @hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name=config_name, version_base="1.3")
    def hydra_main(cfg: Any) -> Any:
        try:
            if records:
                result = exit_on_error(run_locked, hydra_run_dir())(job, cfg, not resumable)
            else:
                result = exit_on_error(job, hydra_run_dir())(cfg, hydra_run_dir())
            if show is not None:
                show(cfg, result)
            return result
        finally:
            shutdown_distributed()

    def main() -> Any:
        from trustregion.cli.preflight import check_run_dir_writable, name_jobs_by_what_varies, preflight
        from trustregion.cli.resume import continue_in_run_dir

        register_schemas()
        if {"--help", "-h"} & set(sys.argv[1:]):  # the groups and every setting's meaning (Hydra's own: --hydra-help)
            from trustregion.cli.help import help_text

            overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
            print(help_text(command, config_name, overrides))
            return None
        sys.argv = [sys.argv[0], *prepare_launch(sys.argv[1:])]
        if resumable:
            sys.argv = [sys.argv[0], *continue_in_run_dir(sys.argv[1:])]
        preflight(sys.argv[1:], config_name)
        sys.argv += name_jobs_by_what_varies(sys.argv[1:])
        if records:
            check_run_dir_writable(sys.argv[1:], config_name)
        return hydra_main()

    return main


def shutdown_distributed() -> None:
    """Leave the process group of a multi-process launch (gloo aborts the process at exit otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from trustregion.engines.launch import shutdown

        shutdown()
