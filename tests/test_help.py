"""``--help`` lists the groups a user picks from and every setting with its value and meaning, from the schemas."""

from __future__ import annotations

import pytest

from tests.helpers import cli
from trustregion.cli.app import compose
from trustregion.cli.help import field_meanings, groups, help_text


def leaf_settings(node, path=""):
    from omegaconf import DictConfig, OmegaConf

    meanings = field_meanings(OmegaConf.get_type(node))
    for key in node:
        full = f"{path}.{key}" if path else str(key)
        child = None if OmegaConf.is_missing(node, key) else node[key]
        if isinstance(child, DictConfig):
            yield from leaf_settings(child, full)
        else:
            yield full, meanings.get(str(key), "")


@pytest.mark.unit
@pytest.mark.parametrize("config_name", ["config", "sft"])
def test_every_setting_of_every_group_option_has_a_meaning(config_name):
    undocumented = set()
    for group, options in groups(config_name):
        for option in options:
            try:
                cfg = compose(f"{group}={option}", config_name=config_name)
            except Exception:  # noqa: BLE001 - an option of a group this command does not compose
                continue
            undocumented |= {key for key, meaning in leaf_settings(cfg) if not meaning}
    assert sorted(undocumented) == []


@pytest.mark.unit
def test_help_lists_the_groups_not_the_schemas_and_follows_the_overrides():
    text = help_text("trustregion-train", "config", ["method=kto"])
    assert "schema" not in text and "  ref_update  hard, kl_budget, none, schedule, soft*" in text
    assert "method.desirable_weight = 1.0" in text and "λ_D: the weight of a desirable" in text


def test_the_command_line_help_prints_it_and_hydras_stays_under_hydra_help():
    out = cli("--help")
    assert out.returncode == 0 and "trainer.lr = 0.0003" not in out.stdout and "trainer.lr = 1e-06" in out.stdout
    assert "AdamW's learning rate" in out.stdout
    assert cli("--hydra-help").stdout.startswith("Hydra (")  # Hydra's own flags
