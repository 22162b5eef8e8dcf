"""Sample and cache the sentiment task's prompts and pairs for several seeds, in one process, before a study.

Every run of a study needs the same prompts and, per seed, the same pairs; sampling them once here (with the threads
OMP_NUM_THREADS gives: the study script gives the cores the load average leaves idle) and caching them under ``dataset.cache_dir`` spares every later run the minutes it takes.

    python scripts/sentiment_pairs.py 1,2,3 experiment=sentiment_smollm2 model.path=DIR dataset.cache_dir=DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def skipped(reasons: dict[str, int]) -> str:
    """``43 held-out pairs within dataset.held_out_margin; 2 identical samples``, or ``none``."""
    return "; ".join(f"{n} {why}" for why, n in reasons.items()) or "none"


def main(argv: list[str]) -> None:
    if not argv or "=" in argv[0]:
        sys.exit("usage: python scripts/sentiment_pairs.py SEEDS [Hydra overrides, with dataset.cache_dir=...]")
    seeds, overrides = [int(s) for s in argv[0].split(",")], argv[1:]
    from trustregion.cli.app import compose
    from trustregion.console import quiet_third_party
    from trustregion.data import load_preferences

    quiet_third_party(verbose=False)  # as a run is: no third-party bars or deprecation chatter
    for seed in seeds:
        clock = time.perf_counter()
        cfg = compose(*overrides, f"trainer.seed={seed}")
        if not cfg.dataset.cache_dir:
            sys.exit("error: dataset.cache_dir is null: set it, or the pairs sampled here are thrown away")
        data = load_preferences(cfg.dataset)
        print(
            f"seed {seed}: {len(data.train)} training pairs, {len(data.eval)} held-out pairs of {len(data.prompts)} "
            f"held-out prompts (skipped: {skipped(data.report.reasons)}), {time.perf_counter() - clock:.0f} s"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
