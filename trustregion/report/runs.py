"""Runs as the report reads them: a run dir's identity and evaluations, and readings along its KL path.

A run dir holds ``config.yaml`` and ``metrics.jsonl`` (partial runs too) and, since runs record it at their start,
``identity.json`` (``training.identity``). Per run we read the gold reward at a KL to the SFT model (interpolated
between its evaluations ordered by KL, the KL = 0 point being its step-0 evaluation), its peak, and its final held-out
preference evaluation.
"""

from __future__ import annotations

import glob
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trustregion.errors import ConfigError, DataError
from trustregion.report.families import Family
from trustregion.training.identity import IDENTITY_FILE, SEED, RunIdentity, flat, identity_of
from trustregion.training.steps import total_optimizer_steps

# The objective's held-out metrics (``eval/*`` rows of metrics.jsonl, every evaluation, with or without a gold
# judge) as the report names them; the vs-SFT ones first: they share one yardstick across update rules.
PREFERENCE = {
    "eval/rewards_sft/accuracies": "accuracy vs SFT",
    "eval/rewards_sft/margins": "margin vs SFT",
    "eval/rewards/accuracies": "accuracy vs reference",
    "eval/rewards/margins": "margin vs reference",
    "eval/logratio/policy_ref": "log π/π_ref per token",
    "eval/loss": "loss",
    "eval/logps/chosen": "logp chosen",
    "eval/logps/rejected": "logp rejected",
}
NO_GENERATION = "no generation evaluations in metrics.jsonl (eval.generate=false, or not evaluated yet)"


@dataclass
class Run:
    """One alignment run: its identity, its evaluation points (KL to SFT, gold reward, its standard error) and its final
    held-out preference evaluation. ``family`` is set when the runs are grouped (``families.group``)."""

    path: Path
    identity: RunIdentity
    steps: list[int] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)
    gold_sem: list[float] = field(default_factory=list)
    in_domain: list[float] = field(default_factory=list)
    sft_gold: float | None = None
    finished: bool = False
    updated: float = 0.0  # when metrics.jsonl was last written (of two duplicate runs, the later counts)
    model: str = ""
    dataset: str = ""
    generate: bool = True  # eval.generate: whether the run asked for generation evaluations
    preference: dict[str, float] = field(default_factory=dict)  # the final held-out preference evaluation
    preference_step: int | None = None  # the step of that evaluation
    family: Family = field(init=False)

    def __post_init__(self) -> None:
        self.family = Family.of(self.identity)

    @property
    def seed(self) -> int:
        return self.identity.seed

    @property
    def has_gold(self) -> bool:
        """Whether the run logged a generation evaluation (gold reward and KL to SFT)."""
        return bool(self.steps)

    def path_from_sft(self) -> tuple[list[float], list[float]]:
        """(KL, gold) along the run, starting at the KL = 0 point: its step-0 evaluation, else the SFT gold."""
        if self.steps and self.steps[0] == 0:
            return list(self.kl), list(self.gold)
        start = self.sft_gold if self.sft_gold is not None else (self.gold[0] if self.gold else 0.0)
        return [0.0] + self.kl, [start] + self.gold

    @property
    def best(self) -> int:
        return int(np.argmax(self.gold))

    @property
    def peak_gold(self) -> float:
        return self.gold[self.best]

    @property
    def peak_kl(self) -> float:
        return self.kl[self.best]


def gold_at_kl(run: Run, level: float) -> float | None:
    """Gold at KL ``level``: linear between the run's evaluations ordered by KL (its KL path wanders, being a
    Monte-Carlo estimate, so ordering by step would read a dip as a second crossing); None beyond its largest KL."""
    kl, gold = run.path_from_sft()
    order = sorted(range(len(kl)), key=lambda i: kl[i])
    xs, ys = [kl[i] for i in order], [gold[i] for i in order]
    if level > xs[-1]:
        return None
    return float(np.interp(level, xs, ys))


def reach(run: Run) -> float:
    """The largest KL the run's path reached."""
    return max(run.path_from_sft()[0])


# --- reading a run dir ----------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a run that is still writing, or one cut by a crash
    return rows


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_identity(path: Path) -> RunIdentity:
    """The run's ``identity.json``; for a run without one (older runs) ``identity_of`` its ``config.yaml``. That file
    is saved resolved, so a setting that followed the seed by interpolation (``dataset.pair_seed``) is set to follow
    it again from Hydra's record of the composed config (``.hydra/config.yaml``); without that record only
    ``trainer.seed`` is taken as the seed. Raises ConfigError or an OmegaConf error where neither can be read."""
    from omegaconf import OmegaConf

    recorded = path / IDENTITY_FILE
    if recorded.exists():
        return RunIdentity.from_json(json.loads(recorded.read_text(encoding="utf-8")))
    cfg = OmegaConf.load(path / "config.yaml")
    composed = path / ".hydra" / "config.yaml"
    if composed.exists():
        raw = flat(OmegaConf.to_container(OmegaConf.load(composed), resolve=False))
        for key, value in raw.items():
            follows = isinstance(value, str) and value.startswith("${") and SEED in value
            if follows and OmegaConf.select(cfg, key) is not None:
                OmegaConf.update(cfg, key, value)
    return identity_of(cfg)


def _identity_or_why(path: Path) -> RunIdentity | str:
    from omegaconf.errors import OmegaConfBaseException

    try:
        return read_identity(path)
    except (ConfigError, OmegaConfBaseException, KeyError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"its identity cannot be read from {IDENTITY_FILE} or config.yaml ({first})"


def _add_evaluations(run: Run, rows: list[dict]) -> None:
    for row in rows:
        kl, gold = _num(row.get("eval/kl_sft")), _num(row.get("eval/gold_reward"))
        if math.isfinite(kl) and math.isfinite(gold):
            run.steps.append(int(row["step"]))
            run.kl.append(kl)
            run.gold.append(gold)
            run.gold_sem.append(_num(row.get("eval/gold_reward_sem")))
            run.in_domain.append(_num(row.get("eval/in_domain_rate")))
        if run.sft_gold is None and math.isfinite(_num(row.get("eval/sft_gold_reward"))):
            run.sft_gold = float(row["eval/sft_gold_reward"])
        if any(k in row for k in PREFERENCE):
            run.preference = {k: _num(row[k]) for k in PREFERENCE if k in row}
            run.preference_step = int(row["step"])


def load_run(path: Path) -> Run | str:
    """The run in ``path``, or a string saying why it is skipped."""
    cfg_path, metrics_path = path / "config.yaml", path / "metrics.jsonl"
    if not cfg_path.exists():
        return "no config.yaml"
    if not metrics_path.exists():
        return "no metrics.jsonl"
    with open(cfg_path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    rows = _read_jsonl(metrics_path)
    if any("sft/loss" in r for r in rows):
        return "an SFT run"
    identity = _identity_or_why(path)
    if isinstance(identity, str):
        return identity
    run = Run(
        path,
        identity,
        updated=metrics_path.stat().st_mtime,
        model=str((cfg.get("model") or {}).get("name", "")),
        dataset=str((cfg.get("dataset") or {}).get("name", "")),
        generate=bool((cfg.get("eval") or {}).get("generate", True)),
    )
    _add_evaluations(run, rows)
    if not run.steps and run.preference_step is None:
        return "no evaluations in metrics.jsonl (not evaluated yet)"
    total = _total_steps(cfg, rows)
    last = run.steps[-1] if run.steps else run.preference_step
    run.finished = total is not None and last >= total
    return run


def _total_steps(cfg: dict, rows: list[dict]) -> int | None:
    t = cfg.get("trainer", {}) or {}
    first = next((row for row in rows if "data/train_pairs" in row), None)
    if first is None or not t.get("batch_size"):
        return int(t["max_steps"]) if t.get("max_steps") else None
    try:
        return total_optimizer_steps(t, int(first["data/train_pairs"]), int(first.get("world_size", 1)))
    except ConfigError:
        return None


def find_run_dirs(targets: Sequence[str]) -> list[Path]:
    """Every directory at or under ``targets`` (dirs or globs) that holds a config.yaml or metrics.jsonl."""
    dirs: set[Path] = set()
    for target in targets:
        matches = [Path(p) for p in glob.glob(target)] or ([Path(target)] if Path(target).exists() else [])
        if not matches:
            raise DataError(
                f"{target}: no such file or directory; pass a sweep dir (outputs/multirun/<date>/<time>) or a glob"
            )
        for m in matches:
            if not m.is_dir():
                continue
            for name in ("config.yaml", "metrics.jsonl"):
                for hit in m.rglob(name):
                    if not {".hydra", "checkpoints", "wandb"} & set(hit.parts):
                        dirs.add(hit.parent)
    return sorted(dirs, key=lambda p: (len(p.parts), str(p)))


def load_runs(targets: Sequence[str]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The evaluated runs under ``targets`` and the skipped dirs with why. Where any run has generation evaluations
    the report is on gold reward and the runs without them are skipped; else every run is reported on its held-out
    preference metrics."""
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    for d in find_run_dirs(targets):
        run = load_run(d)
        (runs.append(run) if isinstance(run, Run) else skipped.append((d, run)))
    if not runs:
        why = "; ".join(f"{p}: {w}" for p, w in skipped) or "no run dirs found"
        raise DataError(f"no evaluated run under {', '.join(targets)} ({why})")
    if any(r.has_gold for r in runs):
        skipped += [(r.path, NO_GENERATION) for r in runs if not r.has_gold]
        skipped.sort(key=lambda s: (len(s[0].parts), str(s[0])))
        runs = [r for r in runs if r.has_gold]
    check_one_setting(runs, targets)
    return runs, skipped


def check_one_setting(runs: Sequence[Run], targets: Sequence[str]) -> None:
    """Runs of different models or datasets are refused in one line: one report is about one setting."""
    settings = Counter(f"model={r.model} dataset={r.dataset}" for r in runs)
    if len(settings) > 1:
        mix = ", ".join(f"{name} ({n} runs)" for name, n in settings.most_common())
        raise DataError(
            f"the runs under {', '.join(targets)} mix settings: {mix}; report each setting's runs separately "
            "(pass their dirs), as families would pool them"
        )
