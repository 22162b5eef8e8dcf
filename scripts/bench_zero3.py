"""torchrun worker of scripts/bench.py: DeepSpeed ZeRO-3 at 2 ranks (gloo on CPU).

    python -m torch.distributed.run --standalone --nproc_per_node 2 scripts/bench_zero3.py --spec '{...}' --result out.json

``mode=update``: one engine per model, built as train.py builds it; the reference update alone, sharded
(each rank lerps its own ``ds_tensor`` shards) against gathered (``GatheredParameters``), interleaved,
each between two barriers; the loopback interface's byte counter is read around each update.
``mode=train``: the real loop with the step hook of benchkit.workers; rank 0 writes the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from benchkit.plans import CONFIGS, compose, loop_overrides, quiet  # noqa: E402
from benchkit.workers import LoopTimer, peak_memory, run_loop  # noqa: E402


def loopback_bytes() -> int:
    """Bytes received on ``lo`` so far (gloo's TCP traffic between local ranks goes through it)."""
    try:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    except OSError:
        pass
    return 0


def update_mode(spec: dict) -> dict:
    import torch
    import torch.distributed as dist

    from trustregion.data import load_preferences
    from trustregion.engines.launch import init_distributed
    from trustregion.engines.zero_internals import numel, shard
    from trustregion.models.loading import load_policy, make_reference
    from trustregion.reference.select import make_applier
    from trustregion.reference.zero3 import GatheredApplier
    from trustregion.training.recipe import make_engine

    out: dict = {"models": {}}
    for model in spec["models"]:
        cfg = compose(*loop_overrides(model, 10, 1, batch=4), "deepspeed=zero3", *CONFIGS["tr-dpo-soft"])
        init_distributed(cfg.deepspeed.backend, cfg.trainer.device, cfg.trainer.num_threads)
        torch.set_num_threads(1)
        data = load_preferences(cfg.dataset)
        policy, _ = load_policy(cfg.model, data.texts(), cfg.trainer.seed)
        reference = make_reference(policy)
        with torch.no_grad():  # policy and reference differ, as during training
            for p in policy.parameters():
                p.add_(1e-3)
        engine = make_engine(cfg, policy, reference, total_steps=10)
        world = engine.world_size
        gathered = GatheredApplier(engine.unwrap("policy"), engine.unwrap("reference"))
        updaters = {"sharded": make_applier(engine), "gathered": gathered, "barrier only": None}
        pol = list(engine.unwrap("policy").parameters())
        elements = sum(numel(p) for p in pol)
        shard_elements = sum(shard(p).numel() for p in pol)
        times = {k: [] for k in updaters}
        lo = {k: [] for k in updaters}
        reps = spec["reps"] if model == "tiny" else max(3, spec["reps"] // 4)  # gathered is slow on larger models
        with torch.no_grad():
            for rep in range(reps + 1):
                names = list(updaters)
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for name in order:
                    dist.barrier()
                    b0 = loopback_bytes()
                    tic = time.perf_counter()
                    if updaters[name] is not None:
                        updaters[name].apply(0.6)
                    dist.barrier()
                    dt = time.perf_counter() - tic
                    b1 = loopback_bytes()
                    if rep > 0:
                        times[name].append(dt * 1e3)
                        lo[name].append(b1 - b0)
        base = statistics.median(lo["barrier only"])
        out["models"][model] = {
            "elements": elements,
            "shard_elements_per_rank": shard_elements,
            "world_size": world,
            "persistent": sum(1 for p in pol if p.ds_persist),
            **{
                name: {"ms": times[name], "lo_bytes": max(0.0, statistics.median(lo[name]) - base)} for name in updaters
            },
            "barrier_lo_bytes": base,
        }
        del engine, updaters, policy, reference
    out.update(peak_memory())
    return out


def train_mode(spec: dict) -> dict:
    total = spec["train_warmup"] + spec["train_steps"] + 1
    cfg = compose(*loop_overrides("tiny", total, 1, batch=4), "deepspeed=zero3", *CONFIGS["tr-dpo-soft"])
    timer = LoopTimer(total)
    run_loop(cfg, Path(spec["run_dir"]), timer)
    out = timer.result(spec["train_warmup"])
    out.update(peak_memory())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--result", required=True)
    a = ap.parse_args()
    quiet()
    spec = json.loads(a.spec)
    import torch.distributed as dist

    try:
        if spec["mode"] == "update":
            result = update_mode(spec)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-z3-") as tmp:
                # every rank must use the same run dir: rank 0's
                from trustregion.engines.launch import agree_on_run_time  # starts the process group

                agree_on_run_time()
                box = [tmp]
                dist.broadcast_object_list(box, src=0)
                result = train_mode({**spec, "run_dir": box[0]})
                dist.barrier()
        if int(os.environ.get("RANK", "0")) == 0:
            Path(a.result).write_text(json.dumps(result))
    finally:
        from trustregion.engines.launch import shutdown

        shutdown()


if __name__ == "__main__":
    main()
