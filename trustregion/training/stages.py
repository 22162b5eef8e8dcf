"""The two things the recipe trains, as what tells them apart: preference alignment and SFT.

A stage supplies the objective, the reference-update rule (SFT has none), the models it exports, whether generation
evaluation runs, the data summary and the step-0 data row, the start-up banner and the default hooks; the recipe
(``trustregion.training.recipe``) does the rest alike for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from trustregion.console import say
from trustregion.data import PreferenceData
from trustregion.data.rows import truncated, truncation_warning
from trustregion.engines.base import Engine
from trustregion.engines.launch import launched_rank
from trustregion.models.logps import logps_function
from trustregion.objectives.methods import build_objective, check_reference_use
from trustregion.objectives.objective import SFT, Objective
from trustregion.reference.rules import Rule, build_rule
from trustregion.training import hooks
from trustregion.training.splits import Splits


class Stage(Protocol):
    """What differs between the stages the recipe trains."""

    job_type: str  # the logger's job type
    exports: tuple[str, ...]  # the models written at the end
    rows_name: str  # what a training row is, in messages
    divergence_fix: str  # the settings to lower when a step diverges
    module: str  # the entry point that runs it (python -m <module>), for the command that continues a run

    def rule(self, cfg: DictConfig) -> Rule | None: ...

    def objective(self, cfg: DictConfig, data: PreferenceData) -> Objective: ...

    def method(self, cfg: DictConfig) -> str: ...

    def generation(self, cfg: DictConfig, data: PreferenceData) -> bool: ...

    def data_summary(self, data: PreferenceData, splits: Splits) -> list[str]: ...

    def data_row(self, data: PreferenceData, splits: Splits, world_size: int) -> dict[str, Any]: ...

    def banner(self, splits: Splits, total_steps: int, engine: Engine, run_dir: Path) -> str: ...

    def default_hooks(self, cfg: DictConfig, lora: bool, generation: bool) -> list[hooks.Hook]: ...


class PreferenceStage:
    """Preference alignment (DPO, IPO, KTO, ...) against a frozen or moving reference; exports policy and reference."""

    job_type = "align"
    exports = ("policy", "reference")
    rows_name = "training pairs"
    divergence_fix = "trainer.lr or method.beta"
    module = "trustregion.train"

    def rule(self, cfg: DictConfig) -> Rule:
        return build_rule(cfg.ref_update)

    def objective(self, cfg: DictConfig, data: PreferenceData) -> Objective:
        objective = build_objective(cfg.method, data.kind, cfg.dataset.name, logps_function(cfg.model), root=cfg)
        moves = build_rule(cfg.ref_update).moves
        check_reference_use(type(objective), str(cfg.method.name), str(cfg.ref_update.name), moves)
        return objective

    def method(self, cfg: DictConfig) -> str:
        """``method.name`` (``kto`` on unpaired data too): what a resume must share with its checkpoint."""
        return str(cfg.method.name)

    def generation(self, cfg: DictConfig, data: PreferenceData) -> bool:
        """Whether generation evaluation runs: where ``eval.generate`` asks and the data has a gold judge (else a
        note, on rank 0)."""
        if cfg.eval.generate and data.task is None and launched_rank() == 0:
            say(
                f"note: generation-based evaluation skipped: dataset={cfg.dataset.name} has no "
                "gold judge (held-out preference metrics still run); set eval.generate=false to say so"
            )
        return bool(cfg.eval.generate) and data.task is not None

    def data_summary(self, data: PreferenceData, splits: Splits) -> list[str]:
        """Console lines: the rows each split kept, skipped and truncated."""
        return data.report.summary_lines(splits.truncation, splits.eval_truncation)

    def data_row(self, data: PreferenceData, splits: Splits, world_size: int) -> dict[str, Any]:
        """The step-0 row of a fresh run: world size, training rows, skipped and truncated rows."""
        trunc = splits.truncation
        return {
            "world_size": world_size,
            "data/train_pairs": len(splits.train),
            "data/skipped_rows": data.report.skipped,
            "data/truncated_prompts": trunc.truncated_prompts,
            "data/truncated_responses": trunc.truncated_responses,
            "data/truncated_rows": trunc.truncated_rows,
            **({"data/notes": " | ".join(data.report.notes)} if data.report.notes else {}),
        }

    def banner(self, splits: Splits, total_steps: int, engine: Engine, run_dir: Path) -> str:
        return (
            f"{len(splits.train)} train / {len(splits.eval)} eval pairs, {total_steps} "
            f"steps, {engine.policy_numel() / 1e6:.2f}M params, run dir {run_dir}"
        )

    def default_hooks(self, cfg: DictConfig, lora: bool, generation: bool) -> list[hooks.Hook]:
        # Export first: a reference exported at the start is written before the step timers start.
        exports = self.exports if cfg.trainer.save_models else ()
        found: list[hooks.Hook] = [hooks.ExportHook(exports)]
        if lora:  # the policy adapter by save_pretrained; the reference adapter and merged models by the next
            found = [hooks.ExportHook(("policy",) if exports else ()), hooks.AdapterExportHook(exports)]
        found += [hooks.ThroughputHook(), hooks.EpochHook()]
        if generation:
            found.append(hooks.GenerationEvalHook())
        progress = hooks.ProgressHook(hooks.progress_interval(cfg.trainer.progress_every_s))
        return found + [hooks.StandstillHook(), progress]


class SFTStage:
    """Supervised fine-tuning on the data source's SFT corpus: no reference, no held-out rows; exports the policy."""

    job_type = "sft"
    exports = ("policy",)
    rows_name = "SFT examples"
    divergence_fix = "trainer.lr"
    module = "trustregion.sft"

    def rule(self, cfg: DictConfig) -> None:
        return None

    def objective(self, cfg: DictConfig, data: PreferenceData) -> Objective:
        return SFT(None, logps_function(cfg.model))

    def method(self, cfg: DictConfig) -> str:
        return SFT.name

    def generation(self, cfg: DictConfig, data: PreferenceData) -> bool:
        return False

    def data_summary(self, data: PreferenceData, splits: Splits) -> list[str]:
        """Console lines: the SFT examples and how many were truncated, the source rows skipped."""
        warning = truncation_warning("SFT", splits.truncation)
        head = f"data: SFT {len(splits.train)} examples, {truncated(splits.truncation)}"
        held = []
        if data.sft is None and len(data.eval):  # the SFT corpus is the train split's prompt + chosen
            held = [
                f"note: {len(data.eval)} rows are held out for evaluation and not trained on (dataset.eval_samples or "
                "dataset.eval_split): alignment evaluates on them later; SFT itself runs no held-out evaluation"
            ]
        return [head, *data.report.skipped_lines(), *held, *([warning] if warning else [])]

    def data_row(self, data: PreferenceData, splits: Splits, world_size: int) -> dict[str, Any]:
        """The step-0 row of a fresh SFT run: examples, skipped source rows, truncated examples."""
        return {
            "data/sft_examples": len(splits.train),
            "data/skipped_rows": data.report.skipped,
            "data/truncated_rows": splits.truncation.truncated_rows,
        }

    def banner(self, splits: Splits, total_steps: int, engine: Engine, run_dir: Path) -> str:
        return f"SFT: {len(splits.train)} examples, {total_steps} steps, run dir {run_dir}"

    def default_hooks(self, cfg: DictConfig, lora: bool, generation: bool) -> list[hooks.Hook]:
        found = [hooks.StepTimeHook(), hooks.ExportHook(self.exports)]
        found += [hooks.AdapterExportHook(self.exports)] if lora else []
        every = hooks.progress_interval(cfg.trainer.progress_every_s)
        return found + [hooks.ProgressHook(every, loss_key="sft/loss")]
