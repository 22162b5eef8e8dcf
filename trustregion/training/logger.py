"""Run records: metrics.jsonl and identity.json in the run dir always, and wandb (offline unless asked) when enabled."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trustregion.console import say
from trustregion.evaluation.generation import SAMPLES_NAME
from trustregion.training.identity import IDENTITY_FILE, identity_of


def run_name(cfg: DictConfig) -> str:
    """``logger.name``, else the model, the data, the family's label and the seed (``tiny_toy_dpo-b0.5-frozen-s1``)."""
    return cfg.logger.name or identity_of(cfg).name


def run_group(cfg: DictConfig) -> str:
    """``logger.group``, else the family (``training.identity``): runs that differ only in seed share a group, so
    wandb's grouped view shows mean and band, and runs of different settings never do."""
    return cfg.logger.group or identity_of(cfg).group


def run_id(run_dir: Path) -> str:
    """A wandb run id that is the same for every start of one run dir (hash of its absolute path)."""
    import hashlib

    return "tr-" + hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def run_tags(cfg: DictConfig) -> list[str]:
    """The run's wandb tags: the user's, the model and dataset, the family's key, the stage or method and each setting
    of its update rule, and the seed."""
    who = identity_of(cfg)
    tags = [*cfg.logger.tags, f"model={cfg.model.name}", f"dataset={cfg.dataset.name}", f"family={who.family}"]
    if "method" not in cfg:
        return [*tags, "sft", f"seed={who.seed}"]
    rule = [f"{k.removeprefix('ref_update.')}={v}" for k, v in who.settings.items() if k.startswith("ref_update.")]
    return [*tags, str(cfg.method.name), f"beta={cfg.method.beta:g}", *rule, f"seed={who.seed}"]


def wandb_init_args(cfg: DictConfig, run_dir: Path, job_type: str = "align") -> dict[str, Any]:
    """The keyword arguments of ``wandb.init`` for a run in ``run_dir`` (its settings aside): id, project, group,
    name, tags, config, and the run dir as wandb's dir, so an offline run lands in ``<run dir>/wandb/offline-run-*``.
    The mode is ``logger.mode`` (offline by default) unless WANDB_MODE is set."""
    return {
        "id": run_id(run_dir),
        "resume": "allow",  # a resumed or requeued job continues its wandb run
        "project": cfg.logger.project,
        "entity": cfg.logger.entity,
        "group": run_group(cfg),
        "name": run_name(cfg),
        "job_type": job_type,
        "tags": run_tags(cfg),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "dir": str(run_dir),
        "mode": os.environ.get("WANDB_MODE", cfg.logger.mode),
    }


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def set_aside_after(path: Path, step: int) -> None:
    """Move the rows of the JSON-lines file ``path`` whose ``step`` is after ``step`` to ``<name>.superseded.jsonl``
    (rows cut short by a crash are dropped)."""
    if not path.exists():
        return
    keep, later = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row_step = json.loads(line).get("step", 0)
        except ValueError:
            continue  # a line cut short by the crash
        (keep if row_step <= step else later).append(line)
    if later:
        with open(path.with_name(f"{path.stem}.superseded.jsonl"), "a", encoding="utf-8") as f:
            f.write("".join(x + "\n" for x in later))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    tmp.replace(path)


class RunLogger:
    """Writes one JSON object per logged step to ``metrics.jsonl``; mirrors it to wandb if configured."""

    def __init__(
        self,
        run_dir: Path,
        cfg: DictConfig,
        enabled: bool = True,
        job_type: str = "align",
        resume_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.wandb = None
        if not enabled:
            return
        # Who the run is (its family, label and seed), for the report and the search to read.
        (run_dir / IDENTITY_FILE).write_text(json.dumps(identity_of(cfg).to_json(), indent=1, default=str) + "\n")
        # A fresh start in a dir with rows (an attempt that died before its first checkpoint) sets them all aside.
        self._set_aside_after(resume_step if resume_step is not None else -1)
        self.file = open(self.path, "a", encoding="utf-8")
        if cfg.logger.backend == "wandb" and cfg.logger.mode != "disabled":
            import wandb

            self.wandb = wandb.init(
                **wandb_init_args(cfg, run_dir, job_type),
                settings=wandb.Settings(quiet=True, console="off", x_disable_stats=not cfg.logger.system_metrics),
            )
            # Gold reward plots against KL to SFT (the overoptimization curve); the summary keeps the best gold.
            self.wandb.define_metric("eval/kl_sft")
            self.wandb.define_metric("eval/gold_reward", step_metric="eval/kl_sft", summary="max")

    def _set_aside_after(self, step: int) -> None:
        """Move rows logged after ``step`` (on resume, those after the checkpoint) from metrics.jsonl and the
        evaluation samples to ``<name>.superseded.jsonl``: the run logs those steps again, and each file then reads
        as one uninterrupted run."""
        for path in (self.path, self.path.with_name(SAMPLES_NAME)):
            set_aside_after(path, step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self._mirror(lambda run: run.log(metrics, step=step), step)

    def _mirror(self, call: Callable[[Any], Any], step: int | None = None) -> None:
        """Send to wandb, a mirror of metrics.jsonl that must never decide the run's outcome. Its service is a child
        process, and Slurm signals every process of a job step: after a preemption, requeue or time-limit warning
        it is gone and calls raise (ConnectionResetError, MailboxClosedError), which would replace the stop's own
        exit and lose the checkpoint. Then mirroring stops with one line; metrics.jsonl carries on, and the run's
        next start (same run dir) continues the wandb run."""
        if self.wandb is None:
            return
        try:
            call(self.wandb)
        except Exception as e:  # whatever wandb raises once its service is gone
            import wandb

            at = "" if step is None else f" at step {step}"
            say(f"wandb failed{at} ({e!r}): run {self.wandb.id} is no longer mirrored; metrics.jsonl carries on")
            self.wandb = None
            try:
                wandb.teardown()  # unregisters wandb's exit hook, which would raise the same error at exit
            except Exception:  # the connection is already broken; nothing more to release
                pass

    def log_artifact_image(self, key: str, path: Path, step: int) -> None:
        if self.enabled and path.exists():
            import wandb

            self._mirror(lambda run: run.log({key: wandb.Image(str(path))}, step=step), step)

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        if self.enabled:
            import wandb

            self._mirror(lambda run: run.log({key: wandb.Table(columns=columns, data=rows)}, step=step), step)

    def log_scatter(self, key: str, columns: list[str], rows: list[list], title: str, step: int) -> None:
        """A wandb scatter plot of ``rows`` (x: the second column, y: the third)."""
        if self.enabled:
            import wandb

            def scatter(run) -> None:
                table = wandb.Table(columns=columns, data=rows)
                run.log({key: wandb.plot.scatter(table, columns[1], columns[2], title=title)}, step=step)

            self._mirror(scatter, step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.enabled:
            self._mirror(lambda run: run.summary.update(values))

    def finish(self, exit_code: int = 0) -> None:
        if not self.enabled:
            return
        self.file.close()
        self._mirror(lambda run: run.finish(exit_code=exit_code))
        self.wandb = None
