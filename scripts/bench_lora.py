#!/usr/bin/env python
"""`make bench-lora`: peak memory and step time of LoRA + moving reference vs full fine-tuning + moving reference
vs LoRA + frozen reference, on the same model, data and batch.

    .venv/bin/python scripts/bench_lora.py                  # 4 runs per setting, interleaved
    .venv/bin/python scripts/bench_lora.py --rounds 1 --steps 6

Every run is a fresh subprocess of the real recipe (``trustregion.recipe.Recipe``), so its peak RSS
(``ru_maxrss``) is its own; a step hook stamps the wall clock after each optimizer step (after the reference
update) and, after the last timed step, records the peak RSS and ends the process (the final evaluation and
checkpoint are teardown, not steps). A row: median over runs of each run's median step, and of peak RSS.
Writes ``outputs/bench-lora/<date>/bench_lora.md`` and prints it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# GPT-NeoX, hidden 512, 4 layers (about 13M weights): big enough that weights, not the interpreter, show in RSS.
MODEL = ["model.hidden_size=512", "model.num_layers=4", "model.num_heads=8", "model.intermediate_size=2048"]
COMMON = [
    "experiment=toy_overopt",
    "logger=none",
    "eval.generate=false",
    "trainer.eval_at_start=false",
    "trainer.batch_size=16",
    "trainer.log_every=1000",
    "trainer.save_models=false",
    "dataset.num_pairs=512",
    *MODEL,
]
MOVING = ["ref_update=soft", "ref_update.alpha=0.1", "ref_update.tau=1"]
LORA = ["peft=lora", "peft.rank=8", "peft.target_modules=[all-linear]"]
SETTINGS = {
    "full FT + moving (soft, α 0.1, τ 1)": ["peft=none", *MOVING],
    "LoRA + frozen": [*LORA, "ref_update=none"],
    "LoRA + moving, factors": [*LORA, *MOVING, "peft.reference=factors", "peft.factors_error=false"],
    "LoRA + moving, exact": [*LORA, *MOVING, "peft.reference=exact"],
}


def worker(overrides: list[str], steps: int, warmup: int, result: str) -> None:
    """One run: the recipe with a step timer that writes the result and ends the process after the last step."""
    import resource
    import time

    sys.path.insert(0, str(REPO))
    from trustregion.cli import compose
    from trustregion.hooks import BaseHook
    from trustregion.recipe import Recipe

    class StepClock(BaseHook):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_start(self, recipe) -> None:
            self.stamps = [time.perf_counter()]

        def on_step_end(self, recipe) -> None:
            self.stamps.append(time.perf_counter())
            if len(self.stamps) == warmup + steps + 1:
                times = [b - a for a, b in zip(self.stamps, self.stamps[1:])][warmup:]
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
                Path(result).write_text(json.dumps({"step_s": statistics.median(times), "peak_mib": peak}))
                os._exit(0)

    cfg = compose(*COMMON, *overrides, f"trainer.max_steps={warmup + steps + 1}")
    with tempfile.TemporaryDirectory() as run_dir:
        Recipe(cfg, Path(run_dir), extra_hooks=[StepClock()]).run()


def run(overrides: list[str], steps: int, warmup: int) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        result = f.name
    cmd = [sys.executable, __file__, "--worker", json.dumps(overrides), "--steps", str(steps)]
    cmd += ["--warmup", str(warmup), "--result", result]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"{overrides}: {proc.stderr[-1500:]}")
        return json.loads(Path(result).read_text())
    finally:
        Path(result).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4, help="runs per setting, interleaved")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-lora" / f"{_dt.date.today()}")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker), args.steps, args.warmup, args.result)
        return
    got: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    names = list(SETTINGS)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # the order rotates each round
            got[name].append(run(SETTINGS[name], args.steps, args.warmup))
            print(f"round {r + 1}: {name}: {got[name][-1]}", flush=True)
    frozen_peak = statistics.median(x["peak_mib"] for x in got["LoRA + frozen"])
    frozen_step = statistics.median(x["step_s"] for x in got["LoRA + frozen"])
    lines = [
        f"threads {os.environ.get('OMP_NUM_THREADS', '1')}, model {' '.join(MODEL)}, batch 16 pairs, "
        f"{args.rounds} runs x {args.steps} timed steps",
        "",
        "| setting | peak RSS (MiB) | vs LoRA + frozen | step (ms) | vs LoRA + frozen |",
        "|---|---|---|---|---|",
    ]
    for name, runs in got.items():
        peak = statistics.median(x["peak_mib"] for x in runs)
        step = statistics.median(x["step_s"] for x in runs)
        lines.append(
            f"| {name} | {peak:.0f} | {peak / frozen_peak:.2f}x | {1e3 * step:.1f} | {step / frozen_step:.2f}x |"
        )
    report = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_lora.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
