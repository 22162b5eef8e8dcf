"""A search over a rule's settings with Hydra's Optuna sweeper: each trial trains its seeds and returns the study
objective (``trustregion.report``'s reading, averaged over the seeds) for the sweeper to maximise.

    python -m trustregion.search --multirun model.path=<sft>/policy ref_update=kl_budget \\
        'ref_update.budget=tag(log, interval(0.01, 0.5))' 'ref_update.alpha=tag(log, interval(0.03, 1))' \\
        hydra.sweeper.n_trials=20 hydra.sweeper.storage=sqlite:///outputs/search.db

A single run (no ``--multirun``) trains one trial's seeds and prints its objective. Trials land in the Optuna study's
storage (``hydra.sweeper.storage``; a SQLite file can be resumed and read by ``optuna-dashboard``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trustregion.cli import app as cli
from trustregion.config import Config
from trustregion.errors import ConfigError, DataError
from trustregion.report.runs import gold_at_kl, load_run, reach
from trustregion.schema import one_of, setting
from trustregion.train import train

READINGS = ("peak_gold", "gold_at_kl")


@dataclass
class SearchConfig:
    """``seeds``: the seeds every trial trains (its objective is their mean); ``objective``: peak_gold (the best
    evaluation's gold) or gold_at_kl (gold at KL-to-SFT ``kl``; a run that never got there is read at its furthest
    point)."""

    seeds: list[int] = setting(meaning="the seeds every trial trains, one after another", factory=lambda: [1, 2])
    objective: str = setting(
        "peak_gold", "what a trial returns, the mean over its seeds of: peak_gold or gold_at_kl", one_of(*READINGS)
    )
    kl: float = setting(2.0, "gold_at_kl's KL to SFT (nats per response)")


@dataclass
class SearchRunConfig(Config):
    search: SearchConfig = setting(meaning="the search's own settings", factory=SearchConfig)


def register_search() -> None:
    """Store the search's schema (called from the entry point, not at import)."""
    from hydra.core.config_store import ConfigStore

    cli.register()
    ConfigStore.instance().store(name="base_search_config", node=SearchRunConfig)


def check(search: DictConfig) -> None:
    if search.objective not in READINGS:
        raise ConfigError(f"search.objective={search.objective} is invalid: set search.objective to one of {READINGS}")
    if not search.seeds:
        raise ConfigError("search.seeds=[] is invalid: give every trial at least one seed, e.g. search.seeds=[1,2]")
    if search.objective == "gold_at_kl" and not search.kl > 0:
        raise ConfigError(f"search.kl={search.kl} is invalid: set search.kl to a KL to SFT > 0")


def reading(run_dir: Path, objective: str, kl: float) -> float:
    """One run's value of the study objective, as the report reads it."""
    run = load_run(run_dir)
    if isinstance(run, str):
        raise DataError(f"{run_dir}: {run}; the objective needs generation evaluations (eval.generate=true)")
    if objective == "peak_gold":
        return run.peak_gold
    at = gold_at_kl(run, kl)
    return at if at is not None else gold_at_kl(run, reach(run))


def trial(cfg: DictConfig, job_dir: Path) -> float:
    """Train each of ``search.seeds`` into ``job_dir/seed<seed>``; the mean of their readings (also in
    ``job_dir/objective.json``)."""
    check(cfg.search)
    values = {}
    for seed in cfg.search.seeds:
        run_cfg = OmegaConf.merge(cfg, {"trainer": {"seed": int(seed)}})
        run_dir = job_dir / f"seed{seed}"
        train(run_cfg, run_dir)
        values[int(seed)] = reading(run_dir, cfg.search.objective, float(cfg.search.kl))
    value = float(sum(values.values()) / len(values))
    if not math.isfinite(value):
        raise DataError(f"{job_dir}: the objective is {value} (per seed: {values})")
    summary = {"objective": cfg.search.objective, "kl": cfg.search.kl, "value": value, "per_seed": values}
    (job_dir / "objective.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return value


def show(cfg: DictConfig, value: float) -> None:
    print(f"objective ({cfg.search.objective}, mean over seeds {list(cfg.search.seeds)}): {value:.4f}", flush=True)


main = cli.entry_point("trustregion-search", "search", trial, register_search, show)

if __name__ == "__main__":
    main()
