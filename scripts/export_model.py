"""Save a model preset (e.g. the GGUF SmolLM2) as a plain ``save_pretrained`` dir with its tokenizer.

Loading SmolLM2 from its GGUF file dequantizes it (about 25 s); a study that starts 15 runs and samples its
prompts and pairs from the same model loads this dir instead (a second or two).

    python scripts/export_model.py OUT_DIR [model=smollm2-135m] [other Hydra overrides]
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    if not argv or "=" in argv[0]:
        sys.exit("usage: python scripts/export_model.py OUT_DIR [model=smollm2-135m] [overrides]")
    out, overrides = Path(argv[0]), argv[1:] or ["model=smollm2-135m"]
    from trustregion.cli.app import compose
    from trustregion.console import quiet_third_party
    from trustregion.models.loading import load_policy

    quiet_third_party(verbose=False)  # as a run is: no third-party bars or deprecation chatter
    cfg = compose(*overrides)
    model, tokenizer = load_policy(cfg.model, None, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"saved {cfg.model.name} to {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
