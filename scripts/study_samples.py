"""Sample generations of a study's runs at their gold peak and at their last evaluation, side by side, as markdown:
what the numbers of a study look like as text (the samples come from each run's ``eval_samples.jsonl``).

    python scripts/study_samples.py OUT [--seed 1] [--prompts 3] [--families dpo-frozen,dpo-soft] > OUT/samples.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gold_by_step(run: Path) -> dict[int, tuple[float, float]]:
    """step -> (mean gold, KL to the start) of each generation evaluation."""
    rows = read_jsonl(run / "metrics.jsonl")
    return {r["step"]: (r["eval/gold_reward"], r["eval/kl_sft"]) for r in rows if "eval/gold_reward" in r}


def section(family: str, run: Path, prompts: int) -> list[str]:
    evals = gold_by_step(run)
    samples = read_jsonl(run / "eval_samples.jsonl")
    peak, last = max(evals, key=lambda s: evals[s][0]), max(evals)
    lines = [f"### {family} ({run.name})", ""]
    for label, step in (("start", 0), ("peak gold", peak), ("last", last)):
        gold, kl = evals[step]
        lines.append(f"**{label}: step {step}**, mean gold {gold:.3f}, KL to the start {kl:.2f}")
        lines.append("")
        seen: set[str] = set()
        for s in (s for s in samples if s["step"] == step):
            if s["prompt"] in seen or len(seen) == prompts:
                continue
            seen.add(s["prompt"])
            text = (s["prompt"] + s["response"]).replace("\n", " ").replace("|", "\\|")
            lines.append(f"- gold {s['gold_reward']:+.2f}: {text}")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a study dir: <family>/seed<k>/ run dirs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=3, help="prompts shown per evaluation")
    parser.add_argument("--families", default="", help="comma-separated; default: every family dir")
    args = parser.parse_args()
    names = [f for f in args.families.split(",") if f] or sorted(
        d.name for d in args.out.iterdir() if (d / f"seed{args.seed}" / "eval_samples.jsonl").exists()
    )
    lines = [f"# Samples at the start, the gold peak and the last evaluation (seed {args.seed})", ""]
    for family in names:
        run = args.out / family / f"seed{args.seed}"
        if not (run / "eval_samples.jsonl").exists():
            lines += [f"### {family}: no eval_samples.jsonl in {run}", ""]
            continue
        lines += section(family, run, args.prompts)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
