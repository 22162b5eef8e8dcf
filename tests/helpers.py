"""What the tests share: the config as the CLI composes it, the small settings, runs in a subprocess or under
torchrun, a run's metrics and weights, and the fault-injection hook (test-only: passed as ``hooks=[...]``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trustregion.training.hooks import BaseHook

REPO = Path(__file__).resolve().parents[1]

# Small and fast: the tiny model shrunk further, few pairs, few steps, no wandb.
FAST = [
    "experiment=toy_overopt",
    "logger=none",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.intermediate_size=64",
    "trainer.batch_size=8",
    "trainer.max_steps=4",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "eval.generate=false",
]
TOY = ["dataset.num_pairs=64", "dataset.eval_samples=16", "dataset.sft_samples=64"]
FAULTS = "hooks=[tests.helpers.FaultHook]"  # with TRUSTREGION_FAULT in the environment


def compose(*overrides: str, config_name: str = "config"):
    """The config the CLI composes from conf/ with these overrides."""
    from trustregion.cli.app import compose as cli_compose

    if config_name == "judge":
        from trustregion.judge import register_judge

        register_judge()
    return cli_compose(*overrides, config_name=config_name)


TIMING = {"tokens_per_s", "ref/update_ms", "eval/generation_s"}  # differ between any two runs, as perf/* do


def untimed(rows: list[dict]) -> list[dict]:
    """Rows without their timing fields (``TIMING`` and ``perf/*``): what two runs of the same work must share."""
    return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("perf/")} for r in rows]


def metrics(run_dir: Path) -> list[dict]:
    """Every row of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_rows(run_dir: Path) -> list[dict]:
    """The rows of training steps (those with a loss)."""
    return [m for m in metrics(run_dir) if "loss" in m]


def logged(run_dir: Path, key: str) -> list:
    """``key`` of every row that has it."""
    return [m[key] for m in metrics(run_dir) if key in m]


def losses(run_dir: Path) -> list[float]:
    return logged(run_dir, "loss")


def weights(run_dir: Path, which: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / which / "model.safetensors"))


def cli(*args: str, module: str = "trustregion.train", env: dict | None = None, timeout: int = 300):
    """``python -m <module> args`` from the repo root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", **(env or {})},
        timeout=timeout,
    )


def torchrun(
    *args: str,
    nproc: int = 2,
    timeout: int = 240,
    check: bool = True,
    env: dict | None = None,
    module: str = "trustregion.train",
):
    """``torchrun --standalone --nproc_per_node <nproc> -m <module> args`` from the repo root."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    environment = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    out = subprocess.run(
        [*cmd, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


class FaultHook(BaseHook):
    """TRUSTREGION_FAULT=step:N SIGKILLs the process after optimizer step N, as a crash would; save:N once the engine's
    part of step N's checkpoint is written (@rankR: on that rank alone); term:N sends SIGTERM after step N, as a
    cluster's preemption would; term-eval:N sends two SIGTERMs once step N's evaluation is computed (as a job's end
    may come during the final evaluation); term-export sends one during the export; fill:N:K fills the run dir's
    disk after step N, leaving K KiB; slow:S sleeps S seconds after every step, so a test can time Slurm's signals
    against steps."""

    def on_step_end(self, ctx) -> None:
        wanted, step = os.environ.get("TRUSTREGION_FAULT"), ctx.state.step
        if wanted and wanted.startswith("slow:"):
            time.sleep(float(wanted.split(":", 1)[1]))
        if wanted == f"step:{step}" or wanted == f"step:{step}@rank{ctx.engine.rank}":  # @rankR: that rank alone
            os.kill(os.getpid(), signal.SIGKILL)
        if wanted == f"term:{step}":
            os.kill(os.getpid(), signal.SIGTERM)
        if wanted and wanted.startswith(f"fill:{step}:"):
            fill_disk(ctx.run_dir, leave_kib=int(wanted.rsplit(":", 1)[1]))

    def on_eval(self, ctx, metrics: dict) -> None:
        if os.environ.get("TRUSTREGION_FAULT") == f"term-eval:{ctx.state.step}":
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    def on_save(self, ctx, directory: Path) -> None:
        wanted, step = os.environ.get("TRUSTREGION_FAULT"), ctx.state.step
        if wanted == f"save:{step}" or wanted == f"save:{step}@rank{ctx.engine.rank}":
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, ctx) -> None:
        if os.environ.get("TRUSTREGION_FAULT") == "term-export":
            os.kill(os.getpid(), signal.SIGTERM)


def fill_disk(directory: Path, leave_kib: int = 0) -> None:
    """Fill the device of ``directory`` with a file of zeros until ``leave_kib`` KiB are left (a disk running full)."""
    with open(Path(directory) / "filler", "wb") as f:
        while True:
            stat = os.statvfs(directory)
            left = stat.f_bavail * stat.f_frsize - leave_kib * 1024
            if left <= 0:
                return
            try:
                f.write(b"\0" * min(left, 1 << 20))
                f.flush()
            except OSError:
                return
