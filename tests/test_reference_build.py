"""Which reference a run builds (``ReferencePlan``): a frozen one on one process is cached, not built (but LoRA's view
of the base is built, being nearly free); a moving one is built and updated; SFT builds none; the SFT model is kept
only for generation evaluation."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trustregion.config import ModelConfig, PeftConfig
from trustregion.engines.base import OptimSettings
from trustregion.engines.local import LocalEngine
from trustregion.models.loading import tiny_model
from trustregion.models.lora import wrap_policy
from trustregion.reference.adapter import AdapterReference
from trustregion.reference.build import ReferencePlan
from trustregion.reference.rules import EveryTau, Frozen
from trustregion.reference.update import ReferenceUpdate

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast


def plan(uses_reference=True, moves=False, cache=True, world_size=1, lora=False, generate=False) -> ReferencePlan:
    return ReferencePlan.decide(
        uses_reference=uses_reference, moves=moves, cache=cache, world_size=world_size, lora=lora, generate=generate
    )


@pytest.mark.parametrize(
    "kwargs,reference,cached,moves",
    [
        ({}, False, True, False),  # frozen on one process: its log-probs are the cached SFT ones, no model
        ({"cache": False}, True, False, False),  # trainer.cache_reference=false: built, run every step
        ({"world_size": 2}, True, False, False),  # several processes: built (each rank scores its own rows)
        ({"lora": True}, True, True, False),  # LoRA: the base's view is built, its log-probs still cached
        ({"moves": True}, True, False, True),  # moving: built and updated, never cached
        ({"moves": True, "lora": True}, True, False, True),
        ({"uses_reference": False, "moves": True}, False, False, False),  # SFT: no reference at all
    ],
)
def test_the_plan_builds_caches_and_moves_the_reference_where_the_run_needs_it(kwargs, reference, cached, moves):
    p = plan(**kwargs)
    assert (p.reference, p.cached, p.moves) == (reference, cached, moves)
    assert p.reference_forward == (reference and not cached)


def test_the_sft_model_is_kept_only_for_generation_evaluation():
    policy = nn.Linear(4, 3)
    assert plan(generate=False).build(policy, None, sharded=False) == (None, None)
    reference, sft_model = plan(moves=True, generate=True).build(policy, None, sharded=False)
    for model in (reference, sft_model):
        assert model is not policy and not any(p.requires_grad for p in model.parameters())
        assert torch.equal(model.weight, policy.weight) and model.weight.data_ptr() != policy.weight.data_ptr()


def test_under_lora_the_reference_is_a_view_of_the_policys_own_base():
    base = tiny_model(OmegaConf.structured(ModelConfig(hidden_size=32, num_layers=1, intermediate_size=64)), 64, 0)
    peft = OmegaConf.structured(PeftConfig(name="lora", rank=4, alpha=8.0))
    policy = wrap_policy(base, peft)
    reference, _ = plan(lora=True).build(policy, peft, sharded=False)
    assert isinstance(reference, AdapterReference) and reference.kind == "base"


def test_an_update_is_built_only_where_the_reference_moves():
    policy, reference = nn.Linear(4, 3), nn.Linear(4, 3).requires_grad_(False)
    engine = LocalEngine(policy, reference, OptimSettings(lr=1e-3, total_steps=10, device="cpu"))
    soft = EveryTau(OmegaConf.create({"alpha": 0.5, "tau": 2}))
    assert isinstance(plan(moves=True).update(soft, engine), ReferenceUpdate)
    assert plan(cache=False).update(Frozen(None), engine) is None
    assert plan(uses_reference=False, moves=True).update(soft, engine) is None
