"""The test environment (no wandb, no hub) and the ``fast_cfg`` fixture; shared helpers are in ``tests.helpers``."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers import FAST, TOY, compose  # noqa: E402 - after the environment above


@pytest.fixture
def fast_cfg():
    """Compose the default experiment with the FAST overrides plus the test's own."""

    def make(*overrides: str):
        overrides = tuple(o for o in overrides if o)
        toy = [] if any(o.startswith("dataset=") for o in overrides) else TOY
        return compose(*FAST, *toy, *overrides)

    return make


def pytest_collection_modifyitems(items) -> None:
    """Every test not marked ``unit`` is ``integration``: ``make test-fast`` runs ``-m unit``."""
    for item in items:
        if item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.integration)
