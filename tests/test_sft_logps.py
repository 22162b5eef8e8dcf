"""trainer.sft_logps_cache: the SFT log-probs scored by one run are read by the next run of the same setting only."""

from __future__ import annotations

import json

import pytest
import torch

from trustregion.config import validate
from trustregion.errors import ConfigError


def run(fast_cfg, run_dir, cache_dir, *overrides: str) -> list[dict]:
    from trustregion.train import train

    train(
        fast_cfg("ref_update=none", f"trainer.sft_logps_cache={cache_dir}", "trainer.max_steps=1", *overrides), run_dir
    )
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def first_step(rows: list[dict]) -> dict:
    return next(r for r in rows if r["step"] == 1 and "ref/logps/chosen" in r)


def test_a_second_run_reads_the_log_probs_the_first_run_scored(fast_cfg, tmp_path):
    cache = tmp_path / "cache"
    first = first_step(run(fast_cfg, tmp_path / "a", cache))
    (path,) = cache.glob("sft-logps-*.pt")
    saved = torch.load(path, weights_only=True)
    saved["train"] += 1.0  # marked, so that a run reading the file shows it
    torch.save(saved, path)
    second = first_step(run(fast_cfg, tmp_path / "b", cache))
    assert second["ref/logps/chosen"] == pytest.approx(first["ref/logps/chosen"] + 1.0, abs=1e-5)


def test_another_model_or_other_rows_miss_instead_of_reading_a_stale_file(fast_cfg, tmp_path):
    cache = tmp_path / "cache"
    run(fast_cfg, tmp_path / "a", cache)
    run(fast_cfg, tmp_path / "b", cache, "trainer.seed=2")  # the tiny model's weights follow the seed
    run(fast_cfg, tmp_path / "c", cache, "dataset.num_pairs=48")
    assert len(list(cache.glob("sft-logps-*.pt"))) == 3


def test_an_unreadable_file_is_scored_again_and_replaced(fast_cfg, tmp_path):
    cache = tmp_path / "cache"
    first = first_step(run(fast_cfg, tmp_path / "a", cache))
    (path,) = cache.glob("sft-logps-*.pt")
    path.write_bytes(b"cut short")
    again = first_step(run(fast_cfg, tmp_path / "b", cache))
    assert again["ref/logps/chosen"] == pytest.approx(first["ref/logps/chosen"], abs=1e-6)
    assert torch.load(path, weights_only=True)["train"].shape[0] > 0


@pytest.mark.unit
def test_the_cache_under_deepspeed_is_a_config_error(fast_cfg, tmp_path):
    cfg = fast_cfg("deepspeed=zero2", f"trainer.sft_logps_cache={tmp_path}")
    with pytest.raises(ConfigError, match="trainer.sft_logps_cache"):
        validate(cfg)
