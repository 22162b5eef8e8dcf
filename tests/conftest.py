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
    "experiment=toy_overopt",
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
    """The config the CLI composes from conf/ with these overrides (the one compose helper of the tests)."""
    from trustregion.cli import compose as cli_compose

    if config_name == "judge":
        from trustregion.judge import register_judge

        register_judge()
    return cli_compose(*overrides, config_name=config_name)


@pytest.fixture
def fast_cfg():
    """Compose the default experiment with the FAST overrides plus the test's own."""

    def make(*overrides: str):
        overrides = tuple(o for o in overrides if o)
        toy = [] if any(o.startswith("dataset=") for o in overrides) else TOY
        return compose(*FAST, *toy, *overrides)

    return make
