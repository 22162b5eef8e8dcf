"""Whole DPO steps at real vocabularies: our recipe and TRL's DPOTrainer on the same model files and rows.

The model (random init, real widths and vocabulary) and the rows are written once per (model, shape) by
``worker_real_prepare``; our run loads them as a user would (``model.path=<dir> dataset=jsonl
dataset.path=<file>``), TRL's through ``from_pretrained`` and ``datasets``. ``spec["precision"]`` (a key of
``REAL_PRECISIONS``) sets ``trainer.precision`` for ours and ``bf16`` for TRL. Our runs also return the model FLOPs
utilisation the training rows log (``perf/mfu``, ``perf/tflops``: ``ThroughputHook``), median over timed steps.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchkit.plans import (
    REAL_CONFIGS,
    REAL_PAIRS_PER_BATCH,
    REAL_PRECISIONS,
    REAL_TRL,
    compose,
    quiet,
    trainer_overrides,
)
from benchkit.shapes import prepare
from benchkit.workers import LoopTimer, peak_memory, run_loop, run_trl


def worker_real_prepare(spec: dict) -> dict:
    quiet()
    rows = REAL_PAIRS_PER_BATCH * (spec["total_steps"] + 2) + spec["eval_rows"]
    return prepare(spec["model"], spec["shape"], rows, Path(spec["directory"]))


def real_config(spec: dict, overrides: list[str]):
    total = spec["warmup"] + spec["steps"] + 1
    files = spec["files"]
    return compose(
        *trainer_overrides(total, spec["threads"], REAL_PAIRS_PER_BATCH),
        f"model.path={files['model_dir']}",
        f"model.name=bench-{spec['model']}",
        "model.logps=chunked",
        "dataset=jsonl",
        f"dataset.path={files['data']}",
        f"dataset.max_length={files['max_length']}",
        f"dataset.max_prompt_length={files['max_prompt']}",
        f"dataset.eval_samples={spec['eval_rows']}",
        "trainer.eval_at_start=false",
        "trainer.log_every=1",  # a perf/mfu row per step (the ThroughputHook's), the warm-up's dropped
        *overrides,
    )


def worker_real_ours(spec: dict) -> dict:
    quiet()
    t0 = time.perf_counter()
    precision = REAL_PRECISIONS[spec.get("precision", "fp32")]["ours"]
    cfg = real_config(spec, [*REAL_CONFIGS[spec["config"]], *precision, *spec.get("overrides", [])])
    timer = LoopTimer(spec["warmup"] + spec["steps"] + 1)
    with tempfile.TemporaryDirectory(prefix="bench-real-") as run_dir:
        run_loop(cfg, Path(run_dir), timer)
    out = timer.result(spec["warmup"])
    out.update(peak_memory(timer.memory), params=timer.params, vocab=timer.vocab, setup_s=timer.stamps[0] - t0)
    return out


def worker_real_trl(spec: dict) -> dict:
    quiet()
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trustregion.models.loading import make_reference

    torch.set_num_threads(spec["threads"])
    cfg = real_config(spec, REAL_CONFIGS["frozen"])
    torch.manual_seed(cfg.trainer.seed)
    files = spec["files"]
    policy = AutoModelForCausalLM.from_pretrained(files["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(files["model_dir"])
    rows = datasets.load_dataset("json", data_files=files["data"], split="train")
    trl_spec = {**spec, "trl": REAL_TRL[spec["config"]], **REAL_PRECISIONS[spec.get("precision", "fp32")]["trl"]}
    return run_trl(trl_spec, cfg, policy, make_reference(policy), tokenizer, rows, REAL_PAIRS_PER_BATCH)


REAL_WORKERS = {"real-prepare": worker_real_prepare, "real-ours": worker_real_ours, "real-trl": worker_real_trl}
