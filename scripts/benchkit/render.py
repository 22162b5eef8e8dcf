"""The bench's report: medians and per-round ratios, rendered as ``bench.md``."""

from __future__ import annotations

import datetime as _dt
import statistics

from benchkit.plans import (
    BF16_GOAL,
    BF16_MEMORY_GOAL,
    BF16_MFU_GOAL,
    CONFIGS,
    MODELS,
    REAL_GOAL,
    REAL_LORA,
    REAL_TRL_PAIRS,
    TRL_CONFIGS,
    TRL_PAIRS,
    real_label,
    split_label,
)
from benchkit.shapes import SHAPES


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, spec=".1f", none="–"):
    if x is None or (isinstance(x, float) and x != x):
        return none
    return format(x, spec)


def summarize(results: list[dict]) -> dict | None:
    ok = [r for r in results if "error" not in r and r.get("step_s")]
    if not ok:
        return None
    per_run = [med(r["step_s"]) for r in ok]
    cpu_runs = [med(r["cpu_step_s"]) for r in ok if r.get("cpu_step_s")]
    means = [statistics.fmean(r["step_s"]) for r in ok]
    upd = [u for r in ok for u in r.get("update_ms", [])]
    return {
        "median_s": med(per_run),
        "min_s": min(per_run),
        "max_s": max(per_run),
        "mean_s": med(means),
        "cpu_s": med(cpu_runs),
        "cpu_min_s": min(cpu_runs, default=None),
        "cpu_max_s": max(cpu_runs, default=None),
        "best_s": min(x for r in ok for x in r["step_s"]),
        "tokens": med([r["tokens_per_step"] for r in ok]),
        "n": len(ok),
        "runs": per_run,
        "update_ms": med(upd) if upd else None,
        "updates": len(upd) / len(ok),
        "rss": med([r["peak_rss_mb"] for r in ok]),
        "params": ok[0].get("params"),
        "vocab": ok[0].get("vocab"),
        "threads": ok[0].get("threads"),
        "errors": len(results) - len(ok),
        "optimizer": ok[0].get("optimizer"),
        "load": med([r["load1_start"] for r in ok if "load1_start" in r]),
    }


def paired_ratio(a: list[dict], b: list[dict], key: str = "step_s") -> tuple[float, float, float] | None:
    """Per-round ratio of run medians a/b (runs of the same round are next to each other in time)."""
    ratios = [
        med(x[key]) / med(y[key])
        for x, y in zip(a, b)
        if "error" not in x and "error" not in y and x.get(key) and y.get(key)
    ]
    if not ratios:
        return None
    return med(ratios), min(ratios), max(ratios)


def render(rep: dict) -> str:
    m, s, runs = rep["machine"], rep["settings"], rep["runs"]
    v = m["versions"]
    any_run = next((r for rs in runs.values() for r in rs if "lr" in r), {})
    th = s["threads"]
    L = [
        f"# trustregion bench ({_dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"- Machine: {m['cpu_count']} CPUs, {m['cpu_model']}{', GPU ' + m['gpu'] if m['gpu'] else ''}; "
        f"load average at start {fmt_load(m['loadavg_start'])}, at end {fmt_load(m.get('loadavg_end'))} "
        "(other jobs share these cores: compare rows by their per-round spread)",
        f"- Versions: torch {v['torch']}, transformers {v['transformers']}, deepspeed {v['deepspeed']}, trl {v['trl']}, "
        f"datasets {v['datasets']}, accelerate {v['accelerate']}, Python {m['python']}",
        f"- Settings: plan {s['plan']}, {s['rounds']} round(s) of interleaved runs"
        f"{' (' + str(s['rounds_skipped']) + ' skipped: time budget)' if s['rounds_skipped'] else ''}, "
        f"batch {s['batch_pairs']} pairs, fp32, {th} torch thread(s) per process ({s['threads_note']}), toy pairs "
        f"with 32-token prompts and 64-token responses (+EOS: 97 tokens per sequence, max_length 128), AdamW "
        f"lr {any_run.get('lr')}, clip {any_run.get('max_grad_norm')}, {any_run.get('schedule')} LR; "
        f"total wall time {m['wall_s']:.0f} s",
        "- s/step: median over rounds of each run's median step (range = min-max over rounds); best step = the "
        "fastest single step of all rounds (other jobs only ever add time, so it is the steadiest estimate of an idle "
        "machine); mean = mean step incl. periodic logging and updates; tok/s = response tokens (chosen+rejected) per step / median s/step; "
        "RSS = peak resident memory of that run's process (ru_maxrss, includes imports); CPU s/step = the process's "
        "CPU time per step (time.process_time, all threads; other jobs still inflate it through shared caches and "
        "sibling hyperthreads, and with several threads it counts spinning)",
        "",
    ]
    models = sorted({k.split("/")[0] for k in runs}, key=lambda x: list(MODELS).index(x))
    for model in models:
        rows = {k.split("/")[1]: summarize(vs) for k, vs in runs.items() if k.startswith(model + "/")}
        ours = [c for c in CONFIGS if c in rows]
        if not ours:
            continue
        first = next((r for r in rows.values() if r), None)
        L += [
            f"## Training throughput: {model} model ({MODELS[model]['hidden_size']} hidden, {MODELS[model]['num_layers']} layers, "
            f"{(first or {}).get('params') or 0:,} parameters, vocab {(first or {}).get('vocab')})",
            "",
            "| run | s/step (median) | range over rounds | best step | mean s/step | CPU s/step | resp. tok/s | ÷ DPO frozen (no cache): median (per-round range); best; CPU | ref update ms | updates per run | peak RSS MB | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        base = runs.get(f"{model}/dpo-frozen")
        for c in ours:
            r = rows[c]
            if r is None:
                L.append(f"| {c} | failed | | | | | | | | | | |")
                continue
            ratio = paired_ratio(runs[f"{model}/{c}"], base) if base and c != "dpo-frozen" else None
            cratio = paired_ratio(runs[f"{model}/{c}"], base, "cpu_step_s") if base and c != "dpo-frozen" else None
            bratio = (
                r["best_s"] / rows["dpo-frozen"]["best_s"] if rows.get("dpo-frozen") and c != "dpo-frozen" else None
            )
            L.append(
                f"| {c} | {r['median_s']:.4f} | {r['min_s']:.4f}–{r['max_s']:.4f} | {r['best_s']:.4f} | {r['mean_s']:.4f} | "
                f"{fmt(r['cpu_s'], '.4f')} | {r['tokens'] / r['median_s']:,.0f} | "
                f"{fmt_ratio(ratio)}; {fmt(bratio, '.3f')}; {fmt(cratio and cratio[0], '.3f')} | {fmt(r['update_ms'], '.2f')} | "
                f"{r['updates']:.0f} | {r['rss']:.0f} | {fmt(r['load'], '.1f')} |"
            )
        soft, frozen, cached = rows.get("tr-dpo-soft"), rows.get("dpo-frozen"), rows.get("dpo-frozen-cached")
        if soft and frozen:
            pr = paired_ratio(runs[f"{model}/tr-dpo-soft"], runs[f"{model}/dpo-frozen"])
            direct = (soft["update_ms"] or 0) / 1e3 / soft["median_s"]
            spread = (frozen["max_s"] - frozen["min_s"]) / frozen["median_s"]
            verdict = "met" if direct < 0.03 else "NOT met"
            L += [
                "",
                f"Goal TR soft within 3 % of frozen DPO (no cache): **{verdict}** by the direct measure: the update "
                f"inside the soft runs takes {soft['update_ms']:.2f} ms = {100 * direct:.2f} % of the soft step. "
                f"End to end, soft/frozen: per-round median steps {fmt_ratio(pr)} (median, range), best steps "
                f"{soft['best_s'] / frozen['best_s']:.3f}; for scale, frozen DPO's own median step moved by "
                f"{100 * spread:.0f} % between rounds.",
            ]
            if cached:
                pc = paired_ratio(runs[f"{model}/tr-dpo-soft"], runs[f"{model}/dpo-frozen-cached"])
                L.append(
                    f"Against frozen DPO with the cached-reference shortcut: soft/cached = {fmt_ratio(pc)}, best steps "
                    f"{soft['best_s'] / cached['best_s']:.3f} "
                    "(the shortcut skips the reference forward, which no moving reference can)."
                )
        hard = rows.get("tr-dpo-hard")
        if hard and hard["update_ms"]:
            L.append(
                f"Hard update (τ=64): {hard['update_ms']:.2f} ms per update (a copy), amortized "
                f"{hard['update_ms'] / 64:.3f} ms/step = {100 * hard['update_ms'] / 64 / 1e3 / hard['median_s']:.3f} % of a step."
            )
        elif hard:
            L.append(
                "Hard update (τ=64): no update inside the timed window (under 64 steps): its rows time the steps "
                "between updates; one update costs about a copy (see the update-alone table)."
            )
        L.append("")
    trl_rows = [(k.split("/")[0], k.split("/")[1]) for k in runs if k.split("/")[1] in TRL_CONFIGS]
    if trl_rows:
        L += [
            "## Side by side with TRL's DPOTrainer",
            "",
            "Same GPT-NeoX (built from the same config and seed), same tokenizer and toy pairs (`datasets.Dataset`), "
            f"batch 8, max_length 128, fp32, {th} thread(s), lr/clip/schedule as ours; TRL: gradient checkpointing off, "
            "bf16 off, its default optimizer. Speed-up = TRL s/step ÷ ours, per round (runs next to each other), median and range.",
            "",
            "| model | ours | TRL | ours / TRL s/step (median) | speed-up (×), per round | ours / TRL best step | speed-up, best (×) | ours / TRL CPU s/step | speed-up, CPU (×) | ≥ 1.3× (median; best; CPU) | ours / TRL update ms | ours / TRL peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for model, c in trl_rows:
            t, o = summarize(runs[f"{model}/{c}"]), summarize(runs.get(f"{model}/{TRL_PAIRS[c]}", []))
            if t is None or o is None:
                L.append(f"| {model} | {TRL_PAIRS[c]} | {c} | failed | | | | | | | | |")
                continue
            pr = paired_ratio(runs[f"{model}/{c}"], runs[f"{model}/{TRL_PAIRS[c]}"])
            pc = paired_ratio(runs[f"{model}/{c}"], runs[f"{model}/{TRL_PAIRS[c]}"], "cpu_step_s")
            best = t["best_s"] / o["best_s"]
            verdict = "; ".join(
                "–" if x is None else ("yes" if x >= 1.3 else "no") for x in (pr and pr[0], best, pc and pc[0])
            )
            L.append(
                f"| {model} | {TRL_PAIRS[c]} | {c} | {o['median_s']:.4f} / {t['median_s']:.4f} | {fmt_ratio(pr, '.2f')} | "
                f"{o['best_s']:.4f} / {t['best_s']:.4f} | {best:.2f} | "
                f"{fmt(o['cpu_s'], '.4f')} / {fmt(t['cpu_s'], '.4f')} | {fmt(pc and pc[0], '.2f')} | {verdict} | "
                f"{fmt(o['update_ms'], '.2f')} / {fmt(t['update_ms'], '.2f')} | {o['rss']:.0f} / {t['rss']:.0f} |"
            )
        opt = next((summarize(runs[f"{mm}/{cc}"]) or {} for mm, cc in trl_rows), {}).get("optimizer")
        L += ["", f"TRL's optimizer: {opt}; ours: torch AdamW (foreach=True). Goal: ours ≥ 1.3× faster.", ""]
    up = rep.get("update")
    if up and "error" not in up:
        L += [
            f"## Reference update alone (one update, {th} thread(s))",
            "",
            "Bytes moved per element (fp32): copy reads the policy and writes the reference (8); a lerp reads both "
            "and writes one (12); mul_ then add_ make two passes (8 + 12 = 20). GB/s = that traffic ÷ time.",
            "",
            "| model | parameters | method | ms/update (median) | range | GB/s | × copy |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in up.items():
            if not isinstance(r, dict) or "methods" not in r:
                continue
            copy_ms = med(next(iter(r["methods"].values()))["ms"])
            for meth, d in r["methods"].items():
                ms = med(d["ms"])
                gbs = r["elements"] * d["bytes_per_elem"] / (ms / 1e3) / 1e9
                L.append(
                    f"| {name} | {r['params']:,} | {meth} | {ms:.3f} | {min(d['ms']):.3f}–{max(d['ms']):.3f} | "
                    f"{gbs:.1f} | {ms / copy_ms:.2f} |"
                )
        L.append("")
    elif up:
        L += ["## Reference update alone", "", f"failed: {up['error'].strip().splitlines()[-1]}", ""]
    z = rep.get("zero3")
    if z:
        L += render_zero3(z, runs, th)
    if rep.get("profile"):
        L += render_profile(rep["profile"])
    if rep.get("real"):
        L += render_real(rep["real"])
    return "\n".join(L) + "\n"


def render_zero3(z: dict, runs: dict, threads: int) -> list[str]:
    L = ["## ZeRO-3, 2 ranks (torchrun, gloo on CPU, 1 thread per rank)", ""]
    u = z.get("update", {})
    if "error" in u:
        L += [f"update timing failed: {u['error'].strip().splitlines()[-1]}", ""]
    elif u:
        L += [
            "Bytes each update must move, N = parameter elements (fp32, 4 bytes), W = 2 ranks: sharded = 0 (each rank "
            "lerps its own shard, persistent parameters none with threshold 0); gathered = all-gather policy + "
            "all-gather reference + broadcast of the edited reference from rank 0 = 3·(W−1)·N·4 bytes received in "
            "total over the ranks. Loopback bytes: /proc/net/dev `lo` counter during the updates, minus a "
            "barrier-only baseline, per update (TCP framing included; other jobs' loopback traffic may add to it).",
            "",
            "| model | N parameters | update | ms/update (median) | range | bytes by formula | loopback bytes measured |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, r in u.get("models", {}).items():
            for mode in ("sharded", "gathered"):
                d = r[mode]
                formula = 0 if mode == "sharded" else 3 * (r["world_size"] - 1) * r["elements"] * 4
                L.append(
                    f"| {model} | {r['elements']:,} | {mode} | {med(d['ms']):.2f} | {min(d['ms']):.2f}–{max(d['ms']):.2f} | "
                    f"{formula / 1e6:.2f} MB | {d['lo_bytes'] / 1e6:.2f} MB |"
                )
            L.append(
                f"| {model} | | gathered ÷ sharded | {med(r['gathered']['ms']) / max(med(r['sharded']['ms']), 1e-9):.0f}× | | | |"
            )
        L.append("")
    t = z.get("train")
    if t and "error" in t:
        L += [f"ZeRO-3 training timing failed: {t['error'].strip().splitlines()[-1]}", ""]
    elif t:
        one = summarize(runs.get("tiny/tr-dpo-soft", []))
        zs = med(t["step_s"])
        L += [
            f"Per step, tiny model, TR-DPO soft, 8 pairs per step: ZeRO-3 at 2 ranks (4 pairs each, 1 thread each) "
            f"{zs:.4f} s/step (range of run {min(t['step_s']):.4f}–{max(t['step_s']):.4f}, update {fmt(med(t['update_ms']), '.2f')} ms, "
            f"peak RSS rank 0 {t['peak_rss_mb']:.0f} MB) vs 1 process (8 pairs, {threads} thread(s), median of the rounds) "
            f"{fmt(one['median_s'] if one else None, '.4f')} s/step: ratio {fmt(zs / one['median_s'] if one else None, '.2f')}×.",
            "",
        ]
    return L


def render_profile(prof: dict) -> list[str]:
    ok = {k: v["profile"] for k, v in prof.items() if "profile" in v}
    if not ok:
        return ["## Profile", "", "failed", ""]
    names = list(ok)
    L = [
        "## Profile: self CPU time per step by operator (torch.profiler, tiny model)",
        "",
        "| operator | " + " | ".join(f"{n} ms/step" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    ops = []
    for n in names:
        for t in ok[n]["top"]:
            if t["op"] not in ops:
                ops.append(t["op"])
    table = {n: {t["op"]: t["self_ms_per_step"] for t in ok[n]["top"]} for n in names}
    for op in ops:
        L.append(f"| {op[:60]} | " + " | ".join(fmt(table[n].get(op), ".2f", "(not in top 15)") for n in names) + " |")
    L.append("| **all operators** | " + " | ".join(f"**{ok[n]['total_ms_per_step']:.1f}**" for n in names) + " |")
    L.append(
        "| wall clock, median step while profiled | "
        + " | ".join(f"{med(prof[n]['step_s']) * 1e3:.1f}" for n in names)
        + " |"
    )
    math_ops = (
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::_scaled_dot_product",
        "aten::gelu",
        "aten::native_layer_norm",
    )
    shares = []
    for n in names:
        model_ms = sum(t["self_ms_per_step"] for t in ok[n]["top"] if t["op"].startswith(math_ops))
        shares.append(
            f"{n}: {model_ms:.1f} of {ok[n]['total_ms_per_step']:.1f} ms "
            f"({100 * model_ms / max(ok[n]['total_ms_per_step'], 1e-9):.0f} %)"
        )
    L += [
        "",
        "Model math (matmuls, attention, GELU, LayerNorm; forward and backward, from the top 15) per step: "
        + "; ".join(shares)
        + ". The rest is copies, element-wise ops, the loss, metrics and the optimizer.",
    ]
    return L + [""]


def _rate(r: dict) -> float:
    """Response tokens per second of one run (its median step)."""
    return r["tokens_per_step"] / med(r["step_s"])


def _paired(a: list[dict], b: list[dict], value) -> tuple[float, float, float] | None:
    """Per-round ratios value(a)/value(b) over rounds where both ran: (median, min, max)."""
    ratios = [value(x) / value(y) for x, y in zip(a, b) if "error" not in x and "error" not in y and x.get("step_s")]
    return (med(ratios), min(ratios), max(ratios)) if ratios else None


def _median_of(runs: list[dict], key: str) -> float:
    return med([r[key] for r in runs if key in r])


def render_real(real: dict) -> list[str]:
    """Whole steps at real vocabularies beside TRL, the head alone, and the issue's goals marked met or not."""
    runs, goals = real["runs"], []
    L = [
        "## Real vocabularies: whole DPO steps, ours vs TRL's DPOTrainer",
        "",
        "Random-init models with real widths and vocabularies (scripts/benchkit/shapes.py), 4 pairs per batch, fp32 "
        "unless a row says bf16-mixed (ours `trainer.precision=bf16-mixed`, TRL `bf16=True`: both autocast over fp32 "
        "weights); "
        "rows of random words, one token each (HH-like: prompts "
        f"{SHAPES['hh'][0][0]}–{SHAPES['hh'][0][1]}, responses {SHAPES['hh'][1][0]}–{SHAPES['hh'][1][1]} tokens; "
        f"TL;DR-like: {SHAPES['tldr'][0][0]}–{SHAPES['tldr'][0][1]} and {SHAPES['tldr'][1][0]}–{SHAPES['tldr'][1][1]}). "
        "Ours through the real recipe (`model.path=<dir> dataset=jsonl`), TRL 1.16's DPOTrainer on the same files; "
        "soft = α 0.6 every step (TRL: `sync_ref_model`, mixup 0.6, every step); frozen = our default (log-probs "
        "cached, no reference model) vs TRL's `precompute_ref_log_probs`. tok/s = response tokens per second "
        "(steps see rows of different lengths); between = RSS between steps (models, gradients, optimizer state); "
        "above = the largest rise above it within a step; ratios are per round (ours right before TRL), median (range); "
        "TFLOP/s and MFU = `perf/tflops` and `perf/mfu` as our training rows log them (median over timed steps; "
        "TRL logs none).",
        "",
        "| model, rows | run | s/step | resp. tok/s | TFLOP/s | MFU | between MB | above MB | peak RSS MB | "
        "ours ÷ TRL tok/s | above ÷ TRL's |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in runs))
    for key in keys:
        model, shape = key.split("/")
        labels = [k.rsplit("/", 1)[1] for k in runs if k.rsplit("/", 1)[0] == key]
        for label in labels:
            rs = [r for r in runs[f"{key}/{label}"] if "error" not in r and r.get("step_s")]
            if not rs:
                err = runs[f"{key}/{label}"][-1].get("error", "no steps").strip().splitlines()[-1:]
                L.append(f"| {key} | {label} | failed: {err[0][:120] if err else ''} | | | | | | | | |")
                continue
            config, precision = split_label(label)
            trl = next(
                (
                    real_label(t, precision)
                    for t, ours in REAL_TRL_PAIRS.items()
                    if ours == config and f"{key}/{real_label(t, precision)}" in runs
                ),
                None,
            )
            speed = above = None
            if trl is not None:
                speed = _paired(runs[f"{key}/{label}"], runs[f"{key}/{trl}"], _rate)
                above = _paired(
                    runs[f"{key}/{label}"], runs[f"{key}/{trl}"], lambda r: r.get("step_peak_above_mb", float("nan"))
                )
            L.append(
                f"| {model}, {shape} | {label} | {med([med(r['step_s']) for r in rs]):.2f} | "
                f"{med([_rate(r) for r in rs]):.0f} | {fmt(_median_of(rs, 'tflops'), '.3f')} | "
                f"{fmt(_median_of(rs, 'mfu'), '.3f')} | {_median_of(rs, 'between_steps_mb'):.0f} | "
                f"{_median_of(rs, 'step_peak_above_mb'):.0f} | {_median_of(rs, 'peak_rss_mb'):.0f} | "
                f"{fmt_ratio(speed, '.2f')} | {fmt_ratio(above, '.2f')} |"
            )
            if (model, shape) == REAL_GOAL and trl is not None:
                goals.append((f"whole step, ours {label} ≥ 2.5× {trl}'s rate ({model}, {shape})", speed, 2.5, ">="))
                goals.append((f"peak above between-steps, ours {label} ≤ 0.5× {trl}'s", above, 0.5, "<="))
    L.append("")
    L += _precision_lines(runs, goals)
    head = real.get("head", {})
    if all("s" in head.get(m, {}) for m in ("ours", "trl-response")):
        ratio = head["trl-response"]["s"] / head["ours"]["s"]
        mem = head["ours"]["peak_mb"] / head["trl-response"]["peak_mb"]
        L += [
            f"Log-prob forward + backward alone on the same hidden states ({REAL_GOAL[0]}, {REAL_GOAL[1]}; "
            "scripts/bench_logps.py's head section): ours "
            f"{head['ours']['s']:.3f} s, peak {head['ours']['peak_mb']:.0f} MB; TRL's response-only chunked head "
            f"(its GPU algorithm, in torch) {head['trl-response']['s']:.3f} s, {head['trl-response']['peak_mb']:.0f} MB.",
            "",
        ]
        goals.append(("head alone ≥ 1.5× faster than TRL's response-only head", (ratio, ratio, ratio), 1.5, ">="))
        goals.append(("head alone: peak ≤ 0.5× TRL's response-only head's", (mem, mem, mem), 0.5, "<="))
    frozen, soft = runs.get("/".join(REAL_GOAL) + "/frozen"), runs.get("/".join(REAL_GOAL) + "/soft")
    if frozen and soft:
        ok = [r for r in frozen + soft if "error" not in r]
        params = next((r["params"] for r in ok if r.get("params")), None)
        saved = _median_of(soft, "between_steps_mb") - _median_of(frozen, "between_steps_mb")
        L += [
            f"Frozen reference not built (log-probs cached): between-steps RSS {_median_of(frozen, 'between_steps_mb'):.0f} "
            f"MB vs {_median_of(soft, 'between_steps_mb'):.0f} MB with a (moving) reference: {saved:.0f} MB saved; one "
            f"copy of the model's fp32 weights is {fmt(params and params * 4 / 2**20, '.0f')} MB.",
            "",
        ]
    lora_frozen = runs.get("/".join(REAL_GOAL) + "/LoRA frozen")
    if lora_frozen and soft:
        base = _median_of(lora_frozen, "peak_rss_mb")
        L += [
            "LoRA (rank 8, every linear layer) on the same model and batch, peak RSS and between-steps RSS against "
            f"LoRA + frozen ({base:.0f} MB peak, {_median_of(lora_frozen, 'between_steps_mb'):.0f} MB between): "
            f"full fine-tuning + soft {_median_of(soft, 'peak_rss_mb') / base:.2f}× peak",
        ]
        for config in REAL_LORA[1:]:
            rs = runs.get("/".join(REAL_GOAL) + "/" + config)
            if rs and any("error" not in r for r in rs):
                ratio = _median_of(rs, "peak_rss_mb") / base
                L[-1] += f"; {config} {ratio:.2f}× ({med([med(r['step_s']) for r in rs if 'step_s' in r]):.2f} s/step)"
                goals.append((f"{config}: peak RSS ≤ 1.15× LoRA + frozen's", (ratio, ratio, ratio), 1.15, "<="))
        L[-1] += f"; LoRA + frozen {med([med(r['step_s']) for r in lora_frozen if 'step_s' in r]):.2f} s/step."
        L.append("")
    if goals:
        L += ["### Goals", "", "| goal | measured, median (range) | status |", "|---|---|---|"]
        for name, value, bound, op, *why in goals:
            met = value is not None and (value[0] >= bound if op == ">=" else value[0] <= bound)
            status = "met" if met else "NOT met" + "".join(f": {w}" for w in why if w)
            L.append(f"| {name} | {fmt_ratio(value, '.2f')} | {status} |")
        L.append("")
    return L


def _precision_lines(runs: dict, goals: list) -> list[str]:
    """The matmul peak each precision's MFU divides by, each 16-bit row's rate against its fp32 row (per round),
    and the precision goal at the goal shape, a miss with its measured reason."""
    peaks: dict[str, list[float]] = {}  # GFLOP/s: perf/tflops ÷ perf/mfu is the peak the ThroughputHook measured
    for k, rs in runs.items():
        peaks.setdefault(split_label(k.rsplit("/", 1)[1])[1], []).extend(
            r["tflops"] * 1e3 / r["mfu"] for r in rs if r.get("mfu")
        )
    peak = {p: med(v) for p, v in peaks.items() if v}
    if not peak:
        return []
    L = [
        "MFU divides the model FLOP/s (trustregion/models/flops.py) by this machine's matmul peak measured at the "
        "start of each run in its compute dtype: "
        + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peak.items())
        + " (median over runs)."
    ]
    ratios, fp32_mfu = [], []
    for k, rs in runs.items():
        key, label = k.rsplit("/", 1)
        config, precision = split_label(label)
        base = runs.get(f"{key}/{config}")
        if precision == "fp32" or not base:
            continue
        ratio = _paired(rs, base, _rate)
        ratios.append(f"{key} {config} {fmt_ratio(ratio, '.2f')}")
        if "fp32" in peak and any(r.get("tflops") for r in rs):  # an emulated 16-bit peak is no yardstick
            fp32_mfu.append(f"{key} {label} {_median_of(rs, 'tflops') * 1e3 / peak['fp32']:.3f}")
        if tuple(key.split("/")) == REAL_GOAL and config in REAL_TRL_PAIRS.values():
            why = None
            if peak.get(precision, 0.0) < peak.get("fp32", 0.0):
                why = (
                    f"no native {precision.split('-')[0]} matmul on this machine (measured peak "
                    f"{peak[precision]:.1f} GFLOP/s vs fp32 {peak['fp32']:.1f})"
                )
            goals.append(
                (f"whole step, ours {label} ≥ {BF16_GOAL:g}× ours {config}'s (fp32) rate", ratio, BF16_GOAL, ">=", why)
            )
            mfu = _median_of(rs, "mfu") if any(r.get("mfu") for r in rs) else None
            emulated = "met only against an emulated peak" if why and mfu and mfu >= BF16_MFU_GOAL else None
            goals.append(
                (
                    f"ours {label}: MFU ≥ {BF16_MFU_GOAL:g} of the measured {precision.split('-')[0]} matmul peak"
                    + (f" ({emulated}: no bf16 units here)" if emulated else ""),
                    None if mfu is None else (mfu, mfu, mfu),
                    BF16_MFU_GOAL,
                    ">=",
                    why,
                )
            )
            memory = _median_of(rs, "peak_rss_mb") / _median_of(base, "peak_rss_mb")
            goals.append(
                (
                    f"ours {label}: peak RSS ≤ {BF16_MEMORY_GOAL:g}× ours {config}'s (fp32)",
                    (memory, memory, memory),
                    BF16_MEMORY_GOAL,
                    "<=",
                    "autocast keeps fp32 weights and casts copies per op; no 16-bit weight storage",
                )
            )
    if ratios:
        L[-1] += " Response tokens/s against the same run in fp32, median (range) per round: " + "; ".join(ratios) + "."
    if fp32_mfu:
        L[-1] += " The same model FLOP/s over the fp32 peak: " + "; ".join(fp32_mfu) + "."
    return L + [""]


def fmt_ratio(r, spec=".3f"):
    if not r:
        return "–"
    return f"{format(r[0], spec)} ({format(r[1], spec)}–{format(r[2], spec)})"


def fmt_load(load):
    return "–" if not load else ", ".join(f"{x:.1f}" for x in load)
