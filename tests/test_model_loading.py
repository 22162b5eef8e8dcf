"""Loading models and tokenizers: a preset's loading details follow the weights, and a failure is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.tiny_models import save_tiny_llama
from trustregion.errors import ConfigError
from trustregion.models.loading import gguf_to_load, load_policy

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast


def test_a_gguf_preset_loads_the_plain_model_that_the_sft_stage_saved(fast_cfg, tmp_path):
    saved = save_tiny_llama(tmp_path / "sft-policy")  # save_pretrained output: config.json, safetensors, tokenizer
    cfg = fast_cfg("model=smollm2-135m", f"model.path={saved}")
    assert cfg.model.gguf_file  # the preset names its GGUF file ...
    policy, tokenizer = load_policy(cfg.model, None, seed=0)  # ... which the SFT output does not have
    assert type(policy).__name__ == "LlamaForCausalLM" and tokenizer.pad_token_id is not None


def test_the_gguf_file_is_used_where_it_lies(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "config.json").write_text("{}")
    assert gguf_to_load(str(tmp_path), "model.gguf") == "model.gguf"
    assert gguf_to_load("org/hub-name", "model.gguf") == "model.gguf"


def test_a_dir_that_holds_no_model_is_one_error_naming_the_path(fast_cfg, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(
        ConfigError,
        match=rf"model.path={tmp_path}: cannot load the tokenizer \(.*; set model.path to "
        r"a dir written by save_pretrained",
    ):
        load_policy(fast_cfg(f"model.path={tmp_path}").model, None, seed=0)


def test_a_missing_model_dir_ends_the_run_with_one_line_and_exit_code_2(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    hh = Path(__file__).parent / "fixtures" / "hh" / "train.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trustregion.train",
            f"model.path={tmp_path}/nope",
            "logger=none",
            "dataset=hh",
            f"dataset.path={hh}",
            "dataset.eval_split=null",
            "dataset.eval_samples=4",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: model.path={tmp_path}/nope: no such directory; set model.path to a saved "
        "model dir (e.g. <sft run dir>/policy) or a hub name"
    )
