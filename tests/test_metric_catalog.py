"""Every metric a run logs is in the catalog (trustregion/metric_catalog.py), which the documentation's metrics
reference is written from: a new metric without a meaning fails here."""

from __future__ import annotations

import pytest

from tests.helpers import FAST, REPO, TOY, compose, metrics
from trustregion.metric_catalog import CATALOG, markdown_table, meaning

HH = ["dataset=hh", "dataset.path=null", f"dataset.data_files={{train:{REPO}/tests/fixtures/hh/train.jsonl}}"]
RUNS = {  # between them: generation, every built-in rule's fields, LoRA's factors error, held-out pairs, unpaired KTO
    "soft_generation": ["eval.generate=true", "eval.prompts=4", "trainer.eval_every=2"],
    "kl_budget": ["ref_update=kl_budget"],
    "schedule": ["ref_update=schedule"],
    "lora_factors": ["peft=lora", "peft.reference=factors", "peft.factors_error=true"],
    "kto_unpaired": ["method=kto", "dataset=kto_unpaired", "dataset.path=null",
                     f"dataset.data_files={{train:{REPO}/tests/fixtures/kto/unpaired.jsonl}}", "dataset.eval_samples=4"],
    "hh": [*HH, "dataset.eval_samples=4"],
}  # fmt: skip


@pytest.fixture(scope="module")
def logged_keys(tmp_path_factory) -> set[str]:
    from trustregion.sft import run_sft
    from trustregion.train import train

    root, keys = tmp_path_factory.mktemp("runs"), set()
    for name, overrides in RUNS.items():
        toy = [] if any(o.startswith("dataset=") for o in overrides) else TOY
        train(compose(*FAST, *toy, "trainer.max_steps=4", *overrides), root / name)
        keys |= {k for row in metrics(root / name) for k in row}
    sft = [o for o in FAST if not o.startswith(("experiment=", "eval."))]
    run_sft(compose(*sft, *TOY, "trainer.max_steps=2", config_name="sft"), root / "sft")
    return keys | {k for row in metrics(root / "sft") for k in row}


def test_every_logged_metric_has_a_meaning_in_the_catalog(logged_keys):
    assert sorted(k for k in logged_keys if meaning(k) is None) == []


@pytest.mark.unit
def test_the_metrics_reference_is_the_catalogs():
    """The metrics reference (trustregion.docs writes it) holds the catalog's tables, every metric once."""
    from trustregion import metric_catalog
    from trustregion.docs import metrics_reference

    sections = (metric_catalog.TRAINING, metric_catalog.REFERENCE, metric_catalog.DATA, metric_catalog.EVALUATION)
    page = metrics_reference()
    assert all(markdown_table(rows) in page for rows in sections)
    assert sorted(name for rows in sections for name, _ in rows) == sorted(name for name, _ in CATALOG)


@pytest.mark.unit
def test_a_name_appears_once_in_the_catalog():
    names = [name for name, _ in CATALOG]
    assert len(names) == len(set(names))
