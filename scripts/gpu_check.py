"""The GPU check (``make gpu-check``): bf16-mixed under ZeRO-3 on one GPU at the real-vocabulary shape (SmolLM2-135M's
widths cut to 4 layers, vocab 49,152, HH-like rows), ours beside TRL's DPOTrainer in bf16, over nccl.

Prints and writes ``outputs/gpu-check/<time>/gpu_check.md``: s/step, response tokens/s, MFU (ours, against the GPU's
measured bf16 matmul peak) and peak CUDA memory. ``--device cpu --steps 2`` is a smoke run of the same path here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def ours(files: dict, device: str, steps: int, run_dir: Path) -> dict:
    """Our recipe under torchrun (one process, ZeRO-3, nccl on a GPU), as a user launches it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m"]
    args = [
        "trustregion.train",
        f"model.path={files['model_dir']}",
        "model.logps=chunked",
        "dataset=jsonl",
        f"dataset.path={files['data']}",
        f"dataset.max_length={files['max_length']}",
        f"dataset.max_prompt_length={files['max_prompt']}",
        "dataset.eval_samples=4",
        "deepspeed=zero3",
        "trainer.precision=bf16-mixed",
        f"trainer.device={device}",
        "trainer.batch_size=4",
        f"trainer.max_steps={steps}",
        f"trainer.log_every={max(1, steps // 2)}",
        "trainer.eval_at_start=false",
        "trainer.save_models=false",
        "ref_update=soft",
        "ref_update.alpha=0.6",
        "ref_update.tau=1",
        "logger=none",
        "eval.generate=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"error: our run failed: {out.stderr.strip().splitlines()[-1:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss" in r][-1]
    return {k: last[k] for k in ("tokens_per_s", "perf/mfu", "perf/tflops", "perf/peak_memory_mb")}


def trl(files: dict, steps: int) -> dict:
    """TRL's DPOTrainer in bf16 on the same model files and rows (synced reference, α 0.6 every step)."""
    import datasets
    import torch
    from benchkit.plans import REAL_CONFIGS, REAL_TRL
    from benchkit.real import real_config
    from benchkit.workers import run_trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trustregion.models.loading import make_reference

    spec = {"files": files, "warmup": 1, "steps": steps, "threads": torch.get_num_threads(), "eval_rows": 4}
    cfg = real_config(spec, REAL_CONFIGS["frozen"])
    policy = AutoModelForCausalLM.from_pretrained(files["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(files["model_dir"])
    rows = datasets.load_dataset("json", data_files=files["data"], split="train")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    res = run_trl(
        {**spec, "trl": REAL_TRL["TRL synced"], "bf16": True}, cfg, policy, make_reference(policy), tokenizer, rows, 4
    )
    s = statistics.median(res["step_s"])
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return {"tokens_per_s": res["tokens_per_step"] / s, "s_per_step": s, "perf/peak_memory_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a smoke run of the same path)")
    parser.add_argument("--steps", type=int, default=20)
    a = parser.parse_args()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: make gpu-check needs a CUDA GPU (torch.cuda.is_available() is false on this machine)")
    from benchkit.shapes import prepare

    out = ROOT / "outputs" / "gpu-check" / time.strftime("%Y-%m-%d_%H-%M-%S")
    files = prepare("smollm2-135m-4l", "hh", 4 * (a.steps + 4) + 4, out / "models")
    mine, theirs = ours(files, a.device, a.steps, out / "ours"), trl(files, a.steps)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    lines = [
        f"# GPU check: {gpu}, torch {torch.__version__}, {a.steps} steps, bf16",
        "",
        "| run | resp. tok/s | MFU | peak memory MB |",
        "|---|---|---|---|",
        f"| ours, ZeRO-3 bf16-mixed, soft α 0.6 | {mine['tokens_per_s']:.0f} | {mine['perf/mfu']:.3f} | "
        f"{mine['perf/peak_memory_mb']:.0f} |",
        f"| TRL DPOTrainer bf16, synced α 0.6 | {theirs['tokens_per_s']:.0f} | | {theirs['perf/peak_memory_mb']:.0f} |",
        "",
        f"ours ÷ TRL tokens/s: {mine['tokens_per_s'] / theirs['tokens_per_s']:.2f}",
    ]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
