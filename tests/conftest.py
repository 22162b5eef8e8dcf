"""The test environment (no wandb, no hub) and the ``fast_cfg`` fixture; shared helpers are in ``tests.helpers``."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

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


# Seconds each test file took, written by `make test-durations`. make test runs files longest first (xdist keeps a
# file on one worker), so that no worker is left alone with a long file at the end.
DURATIONS = Path(__file__).with_name("durations.json")
STORE_DURATIONS = "TRUSTREGION_STORE_DURATIONS"


def pytest_collection_modifyitems(items) -> None:
    """Every test not marked ``unit`` is ``integration`` (``make test-fast`` runs ``-m unit``); files longest first."""
    for item in items:
        if item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.integration)
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    items.sort(key=lambda item: -seconds.get(item.path.name, 0.0))  # stable: a file's own order is kept


_seconds: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report) -> None:
    """With TRUSTREGION_STORE_DURATIONS set, add each phase's time (setup, call, teardown) to its file's total."""
    if os.environ.get(STORE_DURATIONS) and not os.environ.get("PYTEST_XDIST_WORKER"):
        _seconds[report.nodeid.split("::")[0].rsplit("/", 1)[-1]] += report.duration


def pytest_sessionfinish(session) -> None:
    """Merge this session's file totals into tests/durations.json (files not run keep their earlier times)."""
    if not _seconds:
        return
    earlier = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    merged = {**earlier, **{name: round(s, 1) for name, s in _seconds.items()}}
    DURATIONS.write_text(json.dumps(dict(sorted(merged.items(), key=lambda kv: -kv[1])), indent=1) + "\n")
