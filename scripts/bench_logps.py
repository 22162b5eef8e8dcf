"""Benchmark trustregion.models.logps.response_logps (chunked, response-only LM head) at real vocabularies, on CPU.

    python scripts/bench_logps.py [--quick] [--sections head,step] [--rounds N]

Models are random-init, built offline from configs with real vocabularies (SmolLM2-135M's shape cut to 4
layers, Pythia-410m's widths cut to 2 layers, a Llama-3-like 128k-vocab model with 2 small layers); rows are
random token ids with HH-like or TL;DR-like prompt/response lengths, 4 pairs per batch, fp32.

Sections (each configuration in its own process, so peaks do not mix; configurations interleaved in rounds):
  head  log-prob forward+backward alone on the same hidden states: ours (chunked, response rows only) vs the
        full-logits path (models.sequence_logps' head) vs TRL 1.16's ChunkedLogProbFunction on response rows
        only (its CUDA path, run with its torch tiles) and on every position (what DPOTrainer runs on CPU).
  step  a whole DPO step (policy forward+backward, reference forward without grad, AdamW step), ours on/off.
Peak = VmHWM (reset through /proc/self/clear_refs) minus VmRSS between steps.
Writes outputs/bench_logps/<date>/bench_logps{,-quick}.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from benchkit.shapes import MODELS, SHAPES, build_model  # noqa: E402

HEAD_METHODS = ["ours", "full", "trl-response", "trl-cpu-all"]
STEP_METHODS = ["ours", "full"]
PAIRS = 4
CHUNK_TOKENS = 1024


# --- measurement helpers (worker side) --------------------------------------------------------------
def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure(fn, reps: int) -> dict:
    """Run ``fn`` once to warm up, then ``reps`` times: median seconds and the largest peak RSS above the level between runs."""
    import gc

    fn()
    times, peaks = [], []
    for _ in range(reps):
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _status_kb("VmRSS")
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        peaks.append((_status_kb("VmHWM") - base) / 1024)
    return {"s": statistics.median(times), "times": times, "peak_mb": max(peaks)}


def build_batch(shape: str, vocab: int, seed: int = 0) -> dict:
    import torch

    from trustregion.data.tokenize import PairCollator

    g = torch.Generator().manual_seed(seed)
    (p_lo, p_hi), (r_lo, r_hi) = SHAPES[shape]

    def ids(lo: int, hi: int) -> list[int]:
        n = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    rows = [
        {"prompt_ids": ids(p_lo, p_hi), "chosen_ids": ids(r_lo, r_hi), "rejected_ids": ids(r_lo, r_hi), "index": i}
        for i in range(PAIRS)
    ]
    return PairCollator(pad_token_id=0)(rows)


def head_fn(method: str, model, batch: dict):
    """A closure: per-sequence log-probs from fixed hidden states through the head, forward + backward."""
    import torch

    from trustregion.models.logps import head_logps

    with torch.no_grad():
        hidden0 = model.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
    head = model.get_output_embeddings()
    mask = batch["response_mask"][:, 1:]
    labels_all = batch["input_ids"][:, 1:]
    weights = torch.linspace(-1.0, 1.0, mask.shape[0])  # a fixed upstream gradient per sequence

    def per_sequence(token_logps, seq):
        return torch.zeros(mask.shape[0]).index_add(0, seq, token_logps)

    def run():
        head.weight.grad = None
        hidden = hidden0.detach().requires_grad_(True)
        if method == "ours":
            seq, pos = mask.nonzero(as_tuple=True)
            logps = per_sequence(head_logps(hidden[seq, pos], head, labels_all[seq, pos], CHUNK_TOKENS), seq)
        elif method == "full":  # models.sequence_logps after the body
            logits = head(hidden)[:, :-1].float()
            tok = torch.gather(logits, 2, labels_all.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            logps = tok.masked_fill(~mask, 0.0).sum(-1)
        elif method == "trl-response":  # TRL's compact (CUDA) path: response rows only, its torch tiles
            from trl.kernels import ChunkedLogProbFunction
            from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

            seq, pos = mask.nonzero(as_tuple=True)
            tok = ChunkedLogProbFunction.apply(
                hidden[seq, pos],
                head.weight,
                head.bias,
                labels_all[seq, pos],
                1.0,
                _CHUNKED_LOGPROB_CHUNK_SIZE,
                None,
                1.0,
                ("log_probs",),
            )[0]
            logps = per_sequence(tok, seq)
        elif method == "trl-cpu-all":  # what add_fused_lm_head does off CUDA/XPU: every position scored
            from trl.kernels import ChunkedLogProbFunction
            from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

            flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
            tok = ChunkedLogProbFunction.apply(
                flat,
                head.weight,
                head.bias,
                labels_all.reshape(-1),
                1.0,
                _CHUNKED_LOGPROB_CHUNK_SIZE,
                None,
                1.0,
                ("log_probs",),
            )[0]
            logps = tok.view(mask.shape).masked_fill(~mask, 0.0).sum(-1)
        else:
            raise ValueError(method)
        (logps * weights).sum().backward()

    return run


def step_fn(method: str, model, batch: dict):
    """A closure: one DPO step (policy fwd+bwd, reference fwd without grad, AdamW step)."""
    import copy
    from functools import partial

    import torch

    from trustregion.models.loading import sequence_logps
    from trustregion.models.logps import response_logps
    from trustregion.objectives.losses import dpo_loss

    logps_fn = partial(response_logps, chunk_tokens=CHUNK_TOKENS) if method == "ours" else sequence_logps
    reference = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, foreach=True)

    def run():
        opt.zero_grad(set_to_none=True)
        pol, _ = logps_fn(model, batch)
        with torch.no_grad():
            ref, _ = logps_fn(reference, batch)
        pol, ref = pol.view(2, -1), ref.view(2, -1)
        losses, _, _ = dpo_loss(pol[0], pol[1], ref[0], ref[1], beta=0.1)
        losses.mean().backward()
        opt.step()

    return run


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    model = build_model(spec["model"])
    batch = build_batch(spec["shape"], MODELS[spec["model"]]["vocab"])
    fn = (head_fn if spec["section"] == "head" else step_fn)(spec["method"], model, batch)
    out = measure(fn, spec["reps"])
    out["tokens"] = int(batch["attention_mask"].sum())
    out["response_tokens"] = int(batch["response_mask"][:, 1:].sum())
    out["seq_len"] = int(batch["input_ids"].shape[1])
    return out


# --- orchestration -----------------------------------------------------------------------------------
def run_worker(spec: dict, timeout: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ratio(results: list[dict], num: str, den: str, key: str) -> list[float]:
    """Per-round ratios num/den of ``key`` (rounds where both ran)."""
    out = []
    for r in results:
        a, b = r.get(num, {}), r.get(den, {})
        if key in a and key in b and b[key] > 0:
            out.append(a[key] / b[key])
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f}" + (f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else "")


def summarize(results: dict, args) -> tuple[str, dict]:
    lines, goals = [], {}
    if "head" in results:
        lines += [
            "## (a) log-prob forward+backward alone, same hidden states (median s; peak MB above between-steps RSS)",
            "",
            "| model | shape | resp. tokens | ours s | full s | TRL resp. s | TRL CPU-all s | TRL-resp/ours time | full/ours time "
            "| ours peak | full peak | TRL-resp peak | TRL-CPU-all peak | ours/TRL-resp peak |",
            "|" + "---|" * 15,
        ]
        for (model, shape), rounds in results["head"].items():
            med = {
                m: statistics.median([r[m]["s"] for r in rounds if "s" in r.get(m, {})] or [float("nan")])
                for m in HEAD_METHODS
            }
            pk = {
                m: statistics.median([r[m]["peak_mb"] for r in rounds if "peak_mb" in r.get(m, {})] or [float("nan")])
                for m in HEAD_METHODS
            }
            speed = ratio(rounds, "trl-response", "ours", "s")
            mem = ratio(rounds, "ours", "trl-response", "peak_mb")
            tokens = next((r["ours"]["response_tokens"] for r in rounds if "response_tokens" in r.get("ours", {})), "?")
            lines.append(
                f"| {model} | {shape} | {tokens} | {med['ours']:.3f} | {med['full']:.3f} | {med['trl-response']:.3f} | "
                f"{med['trl-cpu-all']:.3f} | {fmt(speed)} | {fmt(ratio(rounds, 'full', 'ours', 's'))} | {pk['ours']:.0f} | "
                f"{pk['full']:.0f} | {pk['trl-response']:.0f} | {pk['trl-cpu-all']:.0f} | {fmt(mem)} |"
            )
            if model == "smollm2-135m-4l" and shape == "hh":
                goals["ours ≥ 1.5× faster than TRL response-only head (49k, HH)"] = (
                    fmt(speed),
                    bool(speed) and statistics.median(speed) >= 1.5,
                )
                goals["ours peak ≤ 0.5× TRL response-only head's (49k, HH)"] = (
                    fmt(mem),
                    bool(mem) and statistics.median(mem) <= 0.5,
                )
        lines.append("")
    if "step" in results:
        lines += [
            "## (b) whole DPO step (policy fwd+bwd, reference fwd, AdamW), ours on/off",
            "",
            "| model | shape | tokens | ours s/step | full s/step | ours tok/s | full tok/s | full/ours time | ours peak MB | full peak MB | ours/full peak |",
            "|" + "---|" * 11,
        ]
        for (model, shape), rounds in results["step"].items():
            med = {
                m: statistics.median([r[m]["s"] for r in rounds if "s" in r.get(m, {})] or [float("nan")])
                for m in STEP_METHODS
            }
            pk = {
                m: statistics.median([r[m]["peak_mb"] for r in rounds if "peak_mb" in r.get(m, {})] or [float("nan")])
                for m in STEP_METHODS
            }
            tokens = next((r["ours"]["tokens"] for r in rounds if "tokens" in r.get("ours", {})), 0)
            lines.append(
                f"| {model} | {shape} | {tokens} | {med['ours']:.3f} | {med['full']:.3f} | {tokens / med['ours']:.0f} | "
                f"{tokens / med['full']:.0f} | {fmt(ratio(rounds, 'full', 'ours', 's'))} | {pk['ours']:.0f} | {pk['full']:.0f} | "
                f"{fmt(ratio(rounds, 'ours', 'full', 'peak_mb'))} |"
            )
        lines.append("")
    if goals:
        lines += ["## Goals", "", "| goal | measured (median per-round ratio, range) | status |", "|---|---|---|"]
        lines += [f"| {g} | {v} | {'met' if ok else 'not met'} |" for g, (v, ok) in goals.items()]
        lines.append("")
    return "\n".join(lines), {g: {"value": v, "met": ok} for g, (v, ok) in goals.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="SmolLM2 shape, HH rows, one repetition per process, no TRL CPU-all column (about two minutes)",
    )
    ap.add_argument("--sections", default="head,step", help="comma-separated: head, step")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--no-trl-cpu-all", action="store_true", help="skip TRL's every-position CPU path (the slowest column)"
    )
    ap.add_argument("--tag", default=None, help="output file stem suffix, so several runs of a day sit side by side")
    ap.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--shapes", default=None, help="comma-separated subset of " + ",".join(SHAPES))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    sections = [s for s in args.sections.split(",") if s]
    models = args.models.split(",") if args.models else (["smollm2-135m-4l"] if args.quick else list(MODELS))
    shapes = args.shapes.split(",") if args.shapes else (["hh"] if args.quick else list(SHAPES))
    rounds = args.rounds or (2 if args.quick else 3)
    reps = {"head": 1 if args.quick else 3, "step": 1 if args.quick else 2}
    t_start, load_start = time.time(), loadavg()
    results: dict = {s: {(m, sh): [] for m in models for sh in shapes} for s in sections}
    for rnd in range(rounds):
        for section in sections:
            methods = HEAD_METHODS if section == "head" else STEP_METHODS
            if (args.quick or args.no_trl_cpu_all) and section == "head":
                methods = [m for m in methods if m != "trl-cpu-all"]  # the slowest, and not the goal's baseline
            for key in results[section]:
                order = methods[rnd % len(methods) :] + methods[: rnd % len(methods)]  # rotate the order per round
                row = {}
                for method in order:
                    spec = {
                        "section": section,
                        "model": key[0],
                        "shape": key[1],
                        "method": method,
                        "reps": reps[section],
                        "threads": args.threads,
                    }
                    row[method] = run_worker(spec, timeout=900)
                    status = row[method].get("error") or f"{row[method]['s']:.3f}s peak {row[method]['peak_mb']:.0f}MB"
                    print(f"round {rnd} {section} {key[0]} {key[1]} {method}: {status}", flush=True)
                results[section][key].append(row)
    wall, load_end = time.time() - t_start, loadavg()
    table, goals = summarize(results, args)
    cmd = " ".join(["python", "scripts/bench_logps.py", *sys.argv[1:]])
    header = (
        f"# bench_logps ({datetime.datetime.now():%Y-%m-%d %H:%M})\n\n`{cmd}`: {rounds} rounds, {args.threads} threads, fp32, "
        f"{PAIRS} pairs per batch, chunk_tokens={CHUNK_TOKENS}; wall {wall:.0f} s; load average (1/5/15 min) "
        f"{load_start} at start, {load_end} at end. Ratios are per round (each configuration in its own process), "
        f"median (min–max).\n"
    )
    text = header + "\n" + table
    print(text)
    out_dir = REPO / "outputs" / "bench_logps" / f"{datetime.date.today():%Y-%m-%d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "bench_logps" + ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
    (out_dir / f"{stem}.md").write_text(text)
    raw = {s: {f"{m}/{sh}": rows for (m, sh), rows in res.items()} for s, res in results.items()}
    (out_dir / f"{stem}.json").write_text(
        json.dumps(
            {
                "command": cmd,
                "wall_s": wall,
                "load_start": load_start,
                "load_end": load_end,
                "goals": goals,
                "results": raw,
            },
            indent=1,
        )
    )
    print(f"wrote {out_dir / stem}.md and .json")


if __name__ == "__main__":
    main()
