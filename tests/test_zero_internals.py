"""DeepSpeed's private attributes that ``trustregion.engines.zero_internals`` relies on, pinned on the installed
version: an upgrade that renames one fails here, not deep inside a run."""

from __future__ import annotations

import pytest

from tests.helpers import FAST, TOY, compose
from trustregion.training.recipe import Recipe
from trustregion.training.stages import PreferenceStage


@pytest.fixture(scope="module")
def zero3_engine(tmp_path_factory):
    recipe = Recipe(
        compose(*FAST, *TOY, "deepspeed=zero3", "deepspeed.param_persistence_threshold=300"),
        tmp_path_factory.mktemp("z"),
        PreferenceStage(),
    )
    recipe.setup()
    yield recipe.engine
    recipe.logger.finish()
    recipe.run_dir_lock.close()


def test_zero3_shards_are_flat_partitions_of_whole_parameters(zero3_engine):
    from trustregion.engines.zero_internals import is_persistent, is_zero3, numel, shard

    params = list(zero3_engine.unwrap("policy").parameters())
    assert all(is_zero3(p) for p in params)
    assert any(is_persistent(p) for p in params) and not all(is_persistent(p) for p in params)
    for p in params:
        assert shard(p).dim() == 1 and shard(p).numel() >= numel(p) > 0  # one rank: the whole, padded


def test_zero3_consolidated_state_dict_has_whole_tensors(zero3_engine):
    from trustregion.engines.zero_internals import consolidated_state_dict, numel

    state = consolidated_state_dict(zero3_engine.policy)
    sizes = {name: numel(p) for name, p in zero3_engine.unwrap("policy").named_parameters()}
    assert {k: v.numel() for k, v in state.items() if k in sizes} == sizes


def test_universal_checkpoint_switch_is_restored_after_loading(zero3_engine):
    from trustregion.engines.zero_internals import universal_checkpoint_loading

    with universal_checkpoint_loading(zero3_engine.policy):
        assert zero3_engine.policy._config.load_universal_checkpoint is True
    assert zero3_engine.policy._config.load_universal_checkpoint is False
