"""Settings a run accepts but that cannot act as set are said at its start, one line each."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, TOY, cli, compose
from trustregion.training.notices import notices


def own_pairs(tmp_path, n: int = 40):
    rows = [{"prompt": f"Question {i}?", "chosen": f"A good answer {i}.", "rejected": f"No {i}."} for i in range(n)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_on_a_few_rows_with_the_default_warm_up_warns_that_the_lr_never_arrives_and_names_the_held_out_rows(
    tmp_path,
):
    data = own_pairs(tmp_path)
    out = cli(
        "dataset=local", f"dataset.path={data}", "logger=none", "model.hidden_size=32", "model.num_layers=1",
        f"hydra.run.dir={tmp_path / 'sft'}", module="trustregion.sft",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    console = out.stdout + out.stderr
    assert "warning: trainer.warmup_steps=100 is not below the run's 4 optimizer steps" in console
    assert "note: 8 rows are held out for evaluation and not trained on" in console


@pytest.mark.unit
def test_rule_settings_a_frozen_reference_never_reads_are_named():
    assert notices(compose(*FAST, *TOY, "ref_update=none", "ref_update.alpha=0.3"), 4) == [
        "note: ref_update.alpha=0.3 does nothing here: the rule (frozen) reads no alpha"
    ]


@pytest.mark.unit
def test_lora_settings_without_lora_are_named_and_a_plain_run_has_no_notice():
    assert notices(compose(*FAST, *TOY, "peft.rank=16"), 4) == [
        "note: peft.rank=16 does nothing here: peft=none trains every weight"
    ]
    assert notices(compose(*FAST, *TOY), 4) == []
