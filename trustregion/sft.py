"""Supervised fine-tuning, the stage before alignment: maximise log p(response | prompt) on the SFT corpus.

The SFT corpus is the data source's own (the toy task's process samples) or prompt + chosen of its
pairs. The result, ``<run dir>/policy``, starts alignment with ``model.path=<run dir>/policy``.

    python -m trustregion.sft                     # then: python -m trustregion.train model.path=...
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from trustregion.batches import BatchStream
from trustregion.config import register, validate
from trustregion.data import load_preferences
from trustregion.data.tokenize import PairCollator, tokenize_options, tokenize_sft
from trustregion.engine import Engine
from trustregion.errors import ConfigError, TrainingError
from trustregion.logger import RunLogger
from trustregion.models import load_policy, sequence_logps
from trustregion.objective import MetricBuffer, to_device
from trustregion.train import hydra_run_dir, report_errors, seed_everything

register()


def run_sft(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train ``cfg.model`` on the SFT corpus of ``cfg.dataset``; save it to ``run_dir/policy``."""
    validate(cfg)
    t, d = cfg.trainer, cfg.dataset
    run_dir.mkdir(parents=True, exist_ok=True)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed)
    data = load_preferences(d)
    policy, tokenizer = load_policy(cfg.model, data.texts() if cfg.model.path is None else None, t.seed)
    rows = tokenize_sft(data.sft_view(), tokenizer, d.max_length, d.max_prompt_length, **tokenize_options(d))
    per_epoch = len(rows) // t.batch_size
    if per_epoch == 0:
        raise ConfigError(f"trainer.batch_size={t.batch_size} exceeds the {len(rows)} SFT examples; lower trainer.batch_size")
    total = t.max_steps or max(1, int(t.epochs * per_epoch) // t.grad_accum)
    engine = Engine(policy, None, t, total)
    collator = PairCollator(tokenizer.pad_token_id, ("chosen",))
    stream = BatchStream(len(rows), t.batch_size, seed=t.seed, shuffle=t.shuffle)
    logger = RunLogger(run_dir, cfg, job_type="sft")
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    print(f"[trustregion.sft] {len(rows)} examples, {total} steps, run dir {run_dir}", flush=True)
    buffer, last, clock = MetricBuffer(), {}, time.perf_counter()
    try:
        for step in range(1, total + 1):
            for _ in range(t.grad_accum):
                batch = to_device(collator([rows[i] for i in stream.next()]), engine.device)
                logps, counts = sequence_logps(engine.policy, batch)
                loss = -logps.sum() / counts.sum()
                engine.backward(loss / t.grad_accum)
                buffer.add({"sft/loss": loss.detach()}, 1.0 / t.grad_accum)
            buffer.add({"grad_norm": engine.step()})
            if step % t.log_every == 0 or step == total:
                metrics = buffer.drain(engine)
                if not all(torch.isfinite(torch.tensor(list(metrics.values())))):
                    raise TrainingError(f"non-finite SFT loss by step {step}; lower trainer.lr")
                metrics.update({"lr": engine.lr(), "s_per_step": (time.perf_counter() - clock) / t.log_every})
                clock = time.perf_counter()
                logger.log(step, metrics)
                last = metrics
        engine.policy.save_pretrained(run_dir / "policy")
        tokenizer.save_pretrained(run_dir / "policy")
        logger.summary(last)
    except BaseException:
        logger.finish(exit_code=1)
        raise
    logger.finish()
    print(f"[trustregion.sft] saved {run_dir / 'policy'} (sft/loss {last.get('sft/loss', float('nan')):.4f})", flush=True)
    return last


@hydra.main(config_path="../conf", config_name="sft", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    run_dir, _ = hydra_run_dir()
    report_errors(run_sft)(cfg, run_dir)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
