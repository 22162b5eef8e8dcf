"""Shared test helpers: compose the Hydra config exactly as the CLI does, and run training in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Small and fast: the tiny model shrunk further, few pairs, few steps, no wandb.
FAST = [
    "logger=none",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.intermediate_size=64",
    "trainer.batch_size=8",
    "trainer.max_steps=4",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "eval.generate=false",
]
TOY = ["dataset.num_pairs=64", "dataset.eval_samples=16", "dataset.sft_samples=64"]


def compose(*overrides: str, config_name: str = "config"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trustregion.config import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


@pytest.fixture
def fast_cfg():
    """Compose the default experiment with the FAST overrides plus the test's own."""

    def make(*overrides: str):
        overrides = tuple(o for o in overrides if o)
        toy = [] if any(o.startswith("dataset=") for o in overrides) else TOY
        return compose(*FAST, *toy, *overrides)

    return make
