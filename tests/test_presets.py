"""Model presets: each loads and trains through ``trustregion.train.train`` on a tiny random model of
its own architecture (saved with ``save_pretrained``) with an offline tokenizer of its model family."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.fixtures.tiny_models import save_tiny_gpt_neox, save_tiny_llama
from tests.helpers import compose, metrics
from trustregion.models.loading import load_policy

CONF = Path(__file__).resolve().parents[1] / "conf"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PYTHIA_PRESETS = ["pythia-410m", "pythia-1.4b", "pythia-2.8b", "pythia-6.9b"]
BF16 = "trainer.precision=bf16-mixed"  # the presets load bf16 weights: fp32 masters, bf16 compute

SMALL_RUN = [
    "experiment=toy_overopt",
    "logger=none",
    "trainer.batch_size=4",
    "trainer.max_steps=2",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "dataset.max_length=48",
    "dataset.max_prompt_length=32",
    "dataset.eval_samples=4",
    "trainer.num_threads=2",
]


@pytest.fixture(scope="module")
def neox_dir(tmp_path_factory) -> Path:
    return save_tiny_gpt_neox(tmp_path_factory.mktemp("tiny-neox"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def compose_cfg(overrides: list[str]):
    return compose(*overrides)


def hh_fixture() -> list[str]:
    return [
        "dataset=hh",
        "dataset.path=null",
        f"dataset.data_files={{train:{FIXTURES}/hh/train.jsonl,test:{FIXTURES}/hh/test.jsonl}}",
    ]


def ultrafeedback_fixture() -> list[str]:
    uf = FIXTURES / "ultrafeedback"
    return [
        "dataset=ultrafeedback",
        "dataset.path=null",
        f"dataset.data_files={{train_prefs:{uf}/train_prefs.parquet,test_prefs:{uf}/test_prefs.parquet}}",
    ]


def test_pythia_preset_loads_gpt_neox_with_a_pad_token_and_right_padding(neox_dir):
    cfg = compose_cfg(["model=pythia-2.8b", f"model.path={neox_dir}"])
    policy, tokenizer = load_policy(cfg.model, None, seed=0)
    assert type(policy).__name__ == "GPTNeoXForCausalLM"
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "right"
    assert str(next(policy.parameters()).dtype) == "torch.bfloat16"


def test_pythia_preset_trains_a_tiny_gpt_neox_on_hh(neox_dir, tmp_path):
    cfg = compose_cfg(["model=pythia-2.8b", f"model.path={neox_dir}", *hh_fixture(), *SMALL_RUN, BF16])
    from trustregion.train import train

    last = train(cfg, tmp_path)
    assert math.isfinite(last["loss"])
    assert [m["step"] for m in metrics(tmp_path) if "loss" in m] == [1, 2]
    assert (tmp_path / "policy" / "config.json").exists()


def test_llama3_preset_loads_a_llama_with_eos_padding_and_its_chat_template(llama_dir):
    cfg = compose_cfg(["model=llama3-8b", f"model.path={llama_dir}"])
    policy, tokenizer = load_policy(cfg.model, None, seed=0)
    assert type(policy).__name__ == "LlamaForCausalLM"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer.padding_side == "right"
    assert "<|start_header_id|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_llama3_preset_trains_a_tiny_llama_on_ultrafeedback(llama_dir, tmp_path):
    cfg = compose_cfg(["model=llama3-8b", f"model.path={llama_dir}", *ultrafeedback_fixture(), *SMALL_RUN, BF16])
    from trustregion.train import train

    last = train(cfg, tmp_path)
    assert math.isfinite(last["loss"])
    assert [m["step"] for m in metrics(tmp_path) if "loss" in m] == [1, 2]
    saved = json.loads((tmp_path / "policy" / "config.json").read_text())
    assert saved["model_type"] == "llama"


@pytest.mark.parametrize("preset", ["smollm2-135m", "pythia-410m", "llama3-8b"])
def test_a_pretrained_preset_records_no_tiny_model_shape(preset):
    from trustregion.config import TINY_SHAPE

    model = compose(f"model={preset}").model
    assert all(model[key] is None for key in TINY_SHAPE)


def test_the_tiny_model_without_its_shape_is_one_line():
    from trustregion.config import validate
    from trustregion.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.hidden_size=None is invalid: set model.hidden_size to an integer"):
        validate(compose("model=smollm2-135m", "model.path=null"))
