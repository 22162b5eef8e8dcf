"""Continuing a run from the command line: ``trainer.resume=<run dir>`` (or one of its ``checkpoints/step_*``)
continues *in* that dir, with the overrides it was started with (``.hydra/overrides.yaml``), so the same wandb run
and records carry on and only what the command adds changes (a display setting, a longer ``max_steps``: each
checked against the checkpoint like any resume). ``trainer.resume=latest`` looks in this run's own dir, so without
``hydra.run.dir`` (each run starts in a new dir) there is nothing it could find: one line says so and how to point
at the run. Sweeps (``--multirun``) are left as they are: each job's dir is fixed, and a requeued job passes
``latest``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trustregion.cli.app import fail

RESUME = "trainer.resume="
RUN_DIR = "hydra.run.dir="


def _key(override: str) -> str:
    """The key an override sets (``+a.b=1``, ``~a.b`` and ``a/b=c`` alike)."""
    return override.split("=", 1)[0].lstrip("+~")


def _last(argv: Sequence[str], prefix: str) -> str | None:
    values = [a[len(prefix) :] for a in argv if a.startswith(prefix)]
    return values[-1] if values else None


def run_dir_of(target: str) -> Path | None:
    """The run dir that ``trainer.resume=<target>`` names, when it is one the command line wrote (it has
    ``.hydra/overrides.yaml``): the dir itself, or the run above one of its checkpoints; else None (a checkpoint
    from elsewhere)."""
    path = Path(target).expanduser()
    for run in (path, path.parent.parent):
        if (run / ".hydra" / "overrides.yaml").is_file() and (run == path or path.parent.name == "checkpoints"):
            return run
    return None


def saved_overrides(run: Path) -> list[str]:
    """The overrides the run in ``run`` was started (or last continued) with, its ``trainer.resume`` left out."""
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    return [str(o) for o in saved if _key(str(o)) != "trainer.resume"]


def continue_in_run_dir(argv: Sequence[str]) -> list[str]:
    """``argv`` with a resume of a run dir made to continue in it: its saved overrides first, this command's after
    them (and in their place where they set the same key), ``hydra.run.dir`` set to it unless the command sets
    another, and ``trainer.resume`` naming its latest checkpoint (or the one the command named). One line when
    ``trainer.resume=latest`` has no run dir to look in."""
    argv = list(argv)
    target = _last(argv, RESUME)
    if target is None or {"-m", "--multirun"} & set(argv):
        return argv
    if target == "latest":
        if _last(argv, RUN_DIR) is None:
            fail(
                "trainer.resume=latest looks for checkpoints in this run's own dir, and without hydra.run.dir every run "
                "starts in a new one, which has none: continue a run with trainer.resume=<its run dir> (the stop "
                "line prints the command), or set hydra.run.dir=<its run dir>"
            )
        return argv
    run = run_dir_of(target)
    if run is None:
        return argv
    given = {_key(a) for a in argv if not a.startswith("-")}
    merged = [o for o in saved_overrides(run) if _key(o) not in given]
    own = [a for a in argv if not a.startswith(RESUME)]
    here = _last(argv, RUN_DIR)
    in_place = here is None or Path(here).resolve() == run.resolve()
    # In its own dir, ``latest`` is its newest checkpoint, or a start from step 0 where it has none yet.
    resume = "latest" if in_place and Path(target).resolve() == run.resolve() else str(Path(target).expanduser())
    return [*merged, *own, f"{RESUME}{resume}", *([f"{RUN_DIR}{run}"] if here is None else [])]
