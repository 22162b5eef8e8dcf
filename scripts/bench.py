#!/usr/bin/env python
"""`make bench`: training throughput, reference-update cost, ZeRO-3 and a side-by-side with TRL's DPOTrainer.

    .venv/bin/python scripts/bench.py                # the full bench (under 30 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --quick        # a smoke version (a few minutes)
    .venv/bin/python scripts/bench.py --sections real   # one section: throughput, trl, update, zero3, real
    .venv/bin/python scripts/bench.py --profile      # also torch.profiler tables of ours and TRL
    .venv/bin/python scripts/bench.py --experiments  # package options not on by default (fused AdamW) vs baseline

Writes ``outputs/bench/<date>/bench.md`` and ``bench.json`` (``<date>-quick`` for ``--quick``; ``--out`` to
change) and prints the table.

How it measures (the same rules for every row):
- Every run is a fresh subprocess (``--worker``), so peak RSS (``ru_maxrss``) is that run's own and no
  state leaks between runs. Runs are interleaved in rounds (the order rotates each round; each TRL run
  comes right after the run of ours it is compared with); a row shows the median over rounds of each
  run's median step, its min-max over rounds, and the fastest single step of all rounds.
- Our loop is timed inside the real recipe (``trustregion.training.recipe.Recipe``): a step hook
  (``benchkit.workers.LoopTimer``, run after the reference-update hook) stamps the wall clock, so one
  step = the time between two stamps: collation, both forwards, loss, backward, clipping, AdamW, the
  reference update and the loop's own metric/log bookkeeping. The first ``warmup`` steps are dropped;
  after the last timed step the hook stops the run (the final evaluation and checkpoint are
  setup/teardown, not steps).
- TRL's ``DPOTrainer`` is timed the same way: a callback stamps ``on_step_end``; same model (a GPT-NeoX
  built by ``trustregion.models.loading.tiny_model`` from the same config and seed), same tokenizer, same toy
  pairs as a ``datasets.Dataset``, batch, lengths, fp32, threads, lr, clipping and constant schedule.
- Response tokens per step are counted from each batch's response (completion) mask, chosen + rejected.
- Real vocabularies (``--sections real``): each plan entry names its precisions (``benchkit.plans.REAL_PRECISIONS``:
  fp32, and bf16-mixed = ours with ``trainer.precision=bf16-mixed``, TRL with ``bf16=True``); our runs log every
  step and report the ``perf/mfu`` and ``perf/tflops`` their training rows log (``ThroughputHook``), over the
  timed steps; the report marks each goal met or not, a 16-bit miss with the matmul peaks measured in both dtypes.
- Threads (``--threads``, default auto): all cores when the 1-minute load average is under 0.75, else 1.
  With two threads on cores that other jobs keep busy, every parallel op waits for a descheduled
  partner thread (a 1M-element lerp went from 0.1 ms to 8 ms here), and the bench would time the
  scheduler. The choice and the load are written into the report.

The code is split by job under ``scripts/benchkit/``: ``plans`` (what runs), ``workers`` (each run, in its
own process), ``render`` (the report); this file orchestrates.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from benchkit.plans import (  # noqa: E402
    BATCH,
    BIG,
    CONFIGS,
    DATA,
    EXPERIMENTS,
    MODELS,
    PLANS,
    REAL_PLANS,
    REAL_TRL_PAIRS,
    TRL_CONFIGS,
    TRL_PAIRS,
    real_label,
)
from benchkit.render import fmt, fmt_load, fmt_ratio, med, paired_ratio, render, summarize  # noqa: E402


def run_worker(kind: str, spec: dict, timeout: float, log) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [PY, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec), "--result", result_path]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONPATH": str(REPO)}
    tic = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout)[-1500:], "wall_s": time.perf_counter() - tic}
        out = json.loads(Path(result_path).read_text())
        out["wall_s"] = time.perf_counter() - tic
        return out
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - tic}
    finally:
        Path(result_path).unlink(missing_ok=True)


def run_zero3(plan: dict, log) -> dict:
    """Two ranks under torchrun (gloo, 1 thread each): the update alone, then the real loop."""
    out = {}
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for mode in ("update", "train"):
        if mode == "train" and not plan["train_steps"]:
            continue
        with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
            result_path = f.name
        spec = {"mode": mode, **plan}
        cmd = [
            PY,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "scripts" / "bench_zero3.py"),
            "--spec",
            json.dumps(spec),
            "--result",
            result_path,
        ]
        tic = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
            if proc.returncode != 0:
                out[mode] = {"error": (proc.stderr or proc.stdout)[-1500:]}
            else:
                out[mode] = json.loads(Path(result_path).read_text())
        except subprocess.TimeoutExpired:
            out[mode] = {"error": "timed out after 420 s"}
        finally:
            Path(result_path).unlink(missing_ok=True)
        out[mode]["wall_s"] = time.perf_counter() - tic
        log(f"zero3 {mode}: {'error' if 'error' in out[mode] else 'ok'} ({out[mode]['wall_s']:.0f} s)")
    return out


def run_real(plan: dict, threads: int, out_dir: Path, log) -> dict:
    """Whole DPO steps at real vocabularies, ours and TRL's interleaved in rounds (each TRL run right after the
    run of ours it is compared with; the order rotates per round), in each precision an entry lists (fp32 unless
    it says), plus the log-prob head alone at the goal shape."""
    import bench_logps

    files, runs = {}, {}
    for entry in plan["runs"]:
        key = (entry["model"], entry["shape"])
        if key not in files:
            spec = {"model": key[0], "shape": key[1], "directory": str(out_dir / "real-models"), "eval_rows": 4}
            files[key] = run_worker(
                "real-prepare",
                {**spec, "total_steps": plan["warmup"] + plan["steps"] + 1, "threads": threads},
                timeout=600,
                log=log,
            )
    for r in range(max(e["rounds"] for e in plan["runs"])):
        for entry in plan["runs"]:
            if r >= entry["rounds"]:
                continue
            key = (entry["model"], entry["shape"])
            jobs = []
            for precision in entry.get("precisions", ["fp32"]):
                for config in entry["ours"]:
                    jobs.append(("real-ours", config, precision))
                    jobs += [("real-trl", t, precision) for t in entry["trl"] if REAL_TRL_PAIRS[t] == config]
            k = r % len(jobs)
            for kind, config, precision in jobs[k:] + jobs[:k]:
                label = real_label(config, precision)
                spec = {
                    "model": key[0],
                    "shape": key[1],
                    "config": config,
                    "precision": precision,
                    "files": files[key],
                    "eval_rows": 4,
                    "warmup": plan["warmup"],
                    "steps": entry.get("steps", plan["steps"]),
                    "threads": threads,
                    "overrides": entry.get("overrides", []),
                }
                res = run_worker(kind, spec, timeout=900, log=log)
                runs.setdefault(f"{key[0]}/{key[1]}/{label}", []).append(res)
                status = res.get("error", "").strip().splitlines()[-1:] or [
                    f"{med(res['step_s']):.2f} s/step, peak above between-steps "
                    f"{res.get('step_peak_above_mb', float('nan')):.0f} MB"
                    + (f", MFU {res['mfu']:.3f}" if "mfu" in res else "")
                ]
                log(f"round {r + 1} real {key[0]} {key[1]} {label}: {status[0][:200]} (wall {res['wall_s']:.0f} s)")
    head = {}
    for method in ("ours", "trl-response"):
        spec = {
            "section": "head",
            "model": "smollm2-135m-4l",
            "shape": "hh",
            "method": method,
            "reps": plan["head_reps"],
            "threads": threads,
        }
        try:
            head[method] = bench_logps.run_worker(spec, timeout=600)
        except Exception as e:  # noqa: BLE001 - a failed measurement is reported, not fatal
            head[method] = {"error": str(e)}
        seconds = head[method].get("s")
        log(f"real head {method}: " + (f"{seconds:.3f} s" if seconds is not None else head[method].get("error", "")))
    return {"files": {f"{m}/{s}": v for (m, s), v in files.items()}, "runs": runs, "head": head}


def machine_info() -> dict:
    import importlib.metadata as md

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "deepspeed", "trl", "datasets", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": gpu,
        "versions": versions,
        "loadavg_start": load,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke version (~2 min)")
    ap.add_argument("--out", default=None, help="output dir (default outputs/bench/<date>)")
    ap.add_argument(
        "--rounds", type=int, default=None, help="rounds of interleaved runs for every model (default: per plan)"
    )
    ap.add_argument("--budget", type=float, default=None, help="seconds after which no new round starts")
    ap.add_argument(
        "--sections",
        default="throughput,trl,update,zero3,real",
        help="comma-separated: throughput (our tiny runs), trl (TRL beside them), update (the update alone), "
        "zero3 (2 ranks), real (whole steps at real vocabularies vs TRL)",
    )
    ap.add_argument(
        "--threads",
        default="auto",
        help="torch threads per single-process run: a number, or auto (all cores if the 1-minute load "
        "average is under 0.75, else 1: two threads on cores that other jobs keep busy wait on each "
        "other at every parallel op, and then the scheduler is what gets measured)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also profile (torch.profiler) ours and TRL with a soft/synced reference on the tiny model",
    )
    ap.add_argument(
        "--experiments",
        action="store_true",
        help="only run package options that are off by default (fused AdamW) against the baseline",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        sys.path.insert(0, str(REPO))
        load = os.getloadavg()[0]
        from benchkit.real import REAL_WORKERS
        from benchkit.workers import WORKERS

        result = {**WORKERS, **REAL_WORKERS}[a.worker](json.loads(a.spec))
        result["load1_start"], result["load1_end"] = load, os.getloadavg()[0]
        Path(a.result).write_text(json.dumps(result))
        return

    plan = PLANS["quick" if a.quick else "full"]
    budget = a.budget or plan["budget_s"]
    load1 = os.getloadavg()[0]
    if a.threads == "auto":
        threads = (os.cpu_count() or 1) if load1 < 0.75 else 1
        threads_note = f"auto: 1-minute load {load1:.2f} at start -> {threads}"
    else:
        threads, threads_note = int(a.threads), "set with --threads"
    sections = set(a.sections.split(","))
    # A quick run never overwrites the day's full run.
    day = _dt.datetime.now().strftime("%Y-%m-%d")
    out_dir = Path(a.out) if a.out else REPO / "outputs" / "bench" / (f"{day}-quick" if a.quick else day)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench {time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    info = machine_info()
    log(
        f"{info['cpu_count']} CPUs ({info['cpu_model']}), load {fmt_load(info['loadavg_start'])}, torch {info['versions']['torch']}, "
        f"trl {info['versions']['trl']}; plan {'quick' if a.quick else 'full'}; {threads} thread(s) ({threads_note})"
    )
    if "trl" in sections and info["versions"]["trl"] == "not installed":
        log("trl is not installed: pip install -e '.[bench]' (skipping the TRL section)")
        sections.discard("trl")

    if a.experiments:
        run_experiments(a, threads, threads_note, out_dir, start, log, info)
        return
    # Jobs in time order: each TRL run right after the run of ours it is compared with.
    jobs: list[tuple[int, str, str, dict]] = []  # (rounds, key, kind, spec)
    for model, p in plan["models"].items():
        trl_for = {TRL_PAIRS[c]: c for c in p["trl"]} if "trl" in sections else {}
        ours = [c for c in CONFIGS if (c in p["configs"] and "throughput" in sections) or c in trl_for]
        for c in ours:
            steps = p["steps_hard"] if c == "tr-dpo-hard" else p["steps"]
            base = {"model": model, "warmup": p["warmup"], "steps": steps, "threads": threads}
            jobs.append((p["rounds"], f"{model}/{c}", "ours", {**base, "config": c}))
            if c in trl_for:
                jobs.append(
                    (
                        p["rounds"],
                        f"{model}/{trl_for[c]}",
                        "trl",
                        {**base, "steps": p["steps"], "trl": TRL_CONFIGS[trl_for[c]]},
                    )
                )
    runs: dict = {}
    extras: dict = {}
    walls: dict = {}
    rounds = a.rounds or max([j[0] for j in jobs], default=0)

    def do_round(r: int) -> None:
        todo = [j for j in jobs if (a.rounds or j[0]) > r]
        k = r % max(1, len(todo))
        for _, key, kind, spec in todo[k:] + todo[:k]:  # rotate the order each round
            res = run_worker(kind, spec, timeout=600, log=log)
            runs.setdefault(key, []).append(res)
            walls[key] = res["wall_s"]
            if "error" in res:
                log(f"round {r + 1} {key}: ERROR {res['error'].strip().splitlines()[-1][:200]}")
            else:
                log(
                    f"round {r + 1} {key}: {med(res['step_s']) * 1e3:.1f} ms/step (min {min(res['step_s']) * 1e3:.1f}), "
                    f"{res['peak_rss_mb']:.0f} MB, load {res['load1_start']:.1f}, wall {res['wall_s']:.0f} s"
                )

    rounds_done, skipped = 0, 0
    if jobs:
        do_round(0)
        rounds_done = 1
    if "real" in sections:
        log("real vocabularies: whole DPO steps, ours and TRL ...")
        tic = time.perf_counter()
        extras["real"] = run_real(REAL_PLANS["quick" if a.quick else "full"], threads, out_dir, log)
        budget += time.perf_counter() - tic  # the budget is for the toy rounds
    if "update" in sections:
        log("reference update alone ...")
        extras["update"] = run_worker("update", {**plan["update"], "threads": threads}, timeout=600, log=log)
        if "error" in extras["update"]:
            log("update: ERROR " + extras["update"]["error"].strip().splitlines()[-1][:200])
    if "zero3" in sections:
        log("ZeRO-3, 2 ranks ...")
        extras["zero3"] = run_zero3(plan["zero3"], log)
    for r in range(1, rounds):
        expected = sum(walls.get(key, 0) for n, key, _, _ in jobs if (a.rounds or n) > r)
        if time.perf_counter() - start + expected > budget:
            skipped = rounds - r
            log(f"time budget of {budget:.0f} s: skipping the last {skipped} round(s) (--budget to change)")
            break
        do_round(r)
        rounds_done += 1

    missed = [
        k
        for k in runs
        if k.split("/")[1] in TRL_PAIRS
        and (paired_ratio(runs[k], runs.get(k.split("/")[0] + "/" + TRL_PAIRS[k.split("/")[1]], [])) or (9,))[0] < 1.3
    ]
    if missed and not a.profile and not a.quick and time.perf_counter() - start < budget:
        log(f"ours is under 1.3x TRL's speed for {', '.join(missed)}: profiling both to show where the time goes")
    if a.profile or (missed and not a.quick and time.perf_counter() - start < budget):
        log("profiling ours and TRL (tiny, soft/synced reference) ...")
        p = {"model": "tiny", "warmup": 4, "steps": 12, "threads": threads, "profile": True}
        extras["profile"] = {
            "ours (tr-dpo-soft)": run_worker("ours", {**p, "config": "tr-dpo-soft"}, timeout=600, log=log),
            "TRL (synced)": run_worker("trl", {**p, "trl": TRL_CONFIGS["trl-synced"]}, timeout=600, log=log),
        }
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - start
    settings = {
        "plan": "quick" if a.quick else "full",
        "rounds": rounds_done,
        "rounds_skipped": skipped,
        "batch_pairs": BATCH,
        "threads": threads,
        "threads_note": threads_note,
        "models": MODELS,
        "data_overrides": DATA,
        "configs": CONFIGS,
        "trl_configs": TRL_CONFIGS,
        "plan_detail": plan,
        "big_update_model": BIG,
    }
    report = {"machine": info, "settings": settings, "runs": runs, **extras}
    md_text = render(report)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    (out_dir / "bench.md").write_text(md_text)
    print(md_text)
    log(f"wrote {out_dir / 'bench.md'} and bench.json")


def run_experiments(a, threads, threads_note, out_dir, start, log, info) -> None:
    rounds = a.rounds or 2
    runs: dict = {}
    for r in range(rounds):
        for model, warmup, steps in (("tiny", 4, 24), ("small", 2, 5)):
            names = list(EXPERIMENTS)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                spec = {
                    "model": model,
                    "config": "tr-dpo-soft",
                    "warmup": warmup,
                    "steps": steps,
                    "threads": threads,
                    "overrides": EXPERIMENTS[name],
                }
                res = run_worker("ours", spec, timeout=600, log=log)
                runs.setdefault(f"{model}/{name}", []).append(res)
                log(
                    f"round {r + 1} {model}/{name}: "
                    + (f"ERROR {res['error'][-200:]}" if "error" in res else f"{med(res['step_s']) * 1e3:.1f} ms/step")
                )
    head = run_worker("head", {"threads": threads, "reps": 8}, timeout=600, log=log)
    L = [
        f"# Proposed trustregion/ changes, behind config flags ({_dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"TR-DPO soft, real loop, {threads} thread(s) ({threads_note}), {rounds} round(s); ratio = per-round "
        "s/step ÷ baseline (median, range).",
        "",
        "| model | variant | s/step (median) | range | ÷ baseline (wall) | CPU s/step | ÷ baseline (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, res in runs.items():
        model, name = key.split("/")
        sm = summarize(res)
        pr = paired_ratio(res, runs[f"{model}/baseline"]) if name != "baseline" else None
        pc = paired_ratio(res, runs[f"{model}/baseline"], "cpu_step_s") if name != "baseline" else None
        L.append(
            f"| {model} | {name} | {fmt(sm and sm['median_s'], '.4f')} | "
            f"{fmt(sm and sm['min_s'], '.4f')}–{fmt(sm and sm['max_s'], '.4f')} | {fmt_ratio(pr)} | "
            f"{fmt(sm and sm['cpu_s'], '.4f')} | {fmt_ratio(pc)} |"
        )
    if "error" not in head:
        L += [
            "",
            "AdamW step alone (all parameters with gradients):",
            "",
            "| model | parameters | optimizer | ms/step (median) | range |",
            "|---|---|---|---|---|",
        ]
        for name, d in head["optim"].items():
            for k, ms in d["ms"].items():
                L.append(f"| {name} | {d['params']:,} | {k} | {med(ms):.2f} | {min(ms):.2f}–{max(ms):.2f} |")
    text = "\n".join(L) + "\n"
    (out_dir / "experiments.md").write_text(text)
    (out_dir / "experiments.json").write_text(
        json.dumps({"machine": info, "runs": runs, "head": head}, indent=1, default=str)
    )
    print(text)
    log(f"wrote {out_dir / 'experiments.md'}")


if __name__ == "__main__":
    main()
