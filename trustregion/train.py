"""Trust-Region preference training: DPO, IPO or KTO against a frozen, soft- or hard-updated reference.

The recipe, top to bottom: load data and models; cache the SFT model's log-probs once; then per
optimizer step run the policy and the reference on the chosen/rejected batch (one concatenated
forward each), take the loss, step, apply the reference update rule, and log, evaluate and
checkpoint on their intervals; at the end save policy/ and reference/ with ``save_pretrained``.

    python -m trustregion.train method=ipo ref_update=hard ref_update.tau=64
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from trustregion import checkpoint as ckpt
from trustregion.batches import BatchStream
from trustregion.config import MethodName, register, validate
from trustregion.data import load_preferences
from trustregion.data.tokenize import (PairCollator, UnpairedCollator, padding_fraction, tokenize_options,
                                       tokenize_pairs, tokenize_unpaired)
from trustregion.errors import ConfigError, TrainingError, TrustRegionError
from trustregion.logger import RunLogger
from trustregion.objective import MetricBuffer, cached_logps, preference_step, to_device
from trustregion.models import load_policy, make_reference

register()


# --- setup ----------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def chunks_for(cfg: DictConfig) -> tuple[str, ...]:
    """Which sequences each pair contributes to a forward: KTO's canonical reference point adds a mismatched one."""
    if cfg.method.name == MethodName.kto and str(cfg.method.reference_point.value) == "mismatched":
        return ("chosen", "rejected", "mismatched")
    return ("chosen", "rejected")


def make_engine(cfg: DictConfig, policy, reference, total_steps: int):
    if cfg.deepspeed.stage > 0:
        from trustregion.distributed import DeepSpeedEngine

        return DeepSpeedEngine(cfg, policy, reference, total_steps)
    from trustregion.engine import Engine

    return Engine(policy, reference, cfg.trainer, total_steps)


def total_optimizer_steps(cfg: DictConfig, num_rows: int, world_size: int) -> int:
    t = cfg.trainer
    per_epoch = num_rows // (t.batch_size * world_size)
    if per_epoch == 0:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} (x {world_size} processes) exceeds the {num_rows} training pairs; "
            f"lower trainer.batch_size or use more data"
        )
    if t.max_steps is not None:
        return t.max_steps
    return max(1, int(t.epochs * per_epoch) // t.grad_accum)


def fault(point: str, step: int) -> None:
    """Testing hook: TRUSTREGION_FAULT=step:N (or save:N) SIGKILLs this process there, as a crash would."""
    if os.environ.get("TRUSTREGION_FAULT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


# --- the run -------------------------------------------------------------------------------------
def train(cfg: DictConfig, run_dir: Path, sweep_dir: str | None = None) -> dict[str, float]:
    """Run one experiment into ``run_dir``; returns the last logged metrics."""
    validate(cfg)
    t = cfg.trainer
    run_dir.mkdir(parents=True, exist_ok=True)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed)
    from trustregion.distributed import init_distributed, launched_world_size

    if cfg.deepspeed.stage > 0:
        init_distributed(cfg)
    elif launched_world_size() > 1:
        raise ConfigError(f"{launched_world_size()} processes were launched but deepspeed.stage=0: "
                          "set deepspeed=zero2 or deepspeed=zero3, or launch one process")

    data = load_preferences(cfg.dataset)
    policy, tokenizer = load_policy(cfg.model, data.texts() if cfg.model.path is None else None, t.seed)
    d, opts = cfg.dataset, tokenize_options(cfg.dataset)
    if data.kind == "unpaired":
        if cfg.method.name != MethodName.kto:
            raise ConfigError(f"dataset={d.name} holds unpaired examples: set method=kto, or use a paired dataset")
        train_rows, trunc = tokenize_unpaired(data.train, tokenizer, d.max_length, d.max_prompt_length, **opts)
        eval_rows, _ = tokenize_unpaired(data.eval, tokenizer, d.max_length, d.max_prompt_length, **opts)
        collator = UnpairedCollator(tokenizer.pad_token_id)
    else:
        chunks = chunks_for(cfg)
        mismatched = "mismatched" in chunks
        train_rows, trunc = tokenize_pairs(data.train, tokenizer, d.max_length, d.max_prompt_length, mismatched, **opts)
        eval_rows, _ = tokenize_pairs(data.eval, tokenizer, d.max_length, d.max_prompt_length, mismatched, **opts)
        collator = PairCollator(tokenizer.pad_token_id, chunks)

    reference = make_reference(policy)
    sft_model = make_reference(policy) if (cfg.eval.generate and data.task is not None) else None
    world = int(os.environ.get("WORLD_SIZE", "1")) if cfg.deepspeed.stage > 0 else 1
    total_steps = total_optimizer_steps(cfg, len(train_rows), world)
    engine = make_engine(cfg, policy, reference, total_steps)
    if sft_model is not None:
        sft_model = engine.prepare_frozen(sft_model) if hasattr(engine, "prepare_frozen") else sft_model.to(engine.device)
    r = cfg.ref_update
    updater = engine.updater(r.alpha, r.tau, str(r.zero3.value))
    lengths = train_rows["length"] if OmegaConf.select(d, "group_by_length", default=False) else None
    stream = BatchStream(len(train_rows), t.batch_size, engine.world_size, engine.rank, t.seed, t.shuffle, lengths=lengths)
    reference_from_cache = r.tau is None and engine.world_size == 1 and t.cache_reference

    identity = {"model": OmegaConf.to_container(cfg.model, resolve=True), "method": str(cfg.method.name.value),
                "world_size": engine.world_size}
    step, first_bad, last = 0, torch.tensor(-1, device=engine.device), {}
    resume_from = ckpt.resolve_resume(t.resume, run_dir)
    if resume_from is not None:
        ckpt.check_compatible(ckpt.read_meta(resume_from), identity, resume_from)
        engine.load(resume_from)
        loop = torch.load(resume_from / "loop.pt", weights_only=False)
        mine = torch.load(resume_from / f"rank{engine.rank}.pt", weights_only=False)
        step = loop["step"]
        stream.load_state_dict(loop["stream"])
        sft_train, sft_eval = loop["sft_train"], loop["sft_eval"]
        updater.load_state_dict(mine["updater"])
        ckpt.set_rng_state(mine["rng"])
    else:
        sft_train = cached_logps(engine, train_rows, collator, t.batch_size, bool(cfg.method.average_logps))
        sft_eval = cached_logps(engine, eval_rows, collator, t.batch_size, bool(cfg.method.average_logps))

    logger = RunLogger(run_dir, cfg, enabled=engine.is_main, sweep_dir=sweep_dir, resume_step=step if resume_from else None)
    if engine.is_main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in policy.parameters())
        print(f"[trustregion] {len(train_rows)} train / {len(eval_rows)} eval pairs, {total_steps} steps, "
              f"{n_params / 1e6:.2f}M params, run dir {run_dir}", flush=True)
    if step == 0:
        logger.log(0, {"world_size": engine.world_size, "data/train_pairs": len(train_rows), "data/skipped_rows": data.report.skipped,
                       "data/truncated_prompts": trunc.truncated_prompts,
                       "data/truncated_responses": trunc.truncated_responses,
                       "data/truncated_rows": trunc.truncated_rows,
                       **({"data/notes": " | ".join(data.report.notes)} if data.report.notes else {})})
        if t.eval_at_start:
            last = evaluate(engine, cfg, eval_rows, collator, sft_eval, data, tokenizer, sft_model, logger, 0, run_dir)

    def check_finite() -> None:
        if int(first_bad) >= 0:
            raise TrainingError(f"non-finite loss at step {int(first_bad)}; lower trainer.lr or method.beta "
                                f"(checkpoints and metrics up to the last good step are kept in {run_dir})")

    def save(at: int) -> None:
        check_finite()
        tmp = ckpt.begin(run_dir, at) if engine.is_main else None
        tmp = engine.broadcast_path(tmp) if engine.world_size > 1 else tmp
        engine.save(tmp, {})
        fault("save", at)
        torch.save({"updater": updater.state_dict(), "rng": ckpt.rng_state()}, tmp / f"rank{engine.rank}.pt")
        if engine.is_main:
            torch.save({"step": at, "stream": stream.state_dict(), "sft_train": sft_train, "sft_eval": sft_eval},
                       tmp / "loop.pt")
            ckpt.write_meta(tmp, {**identity, "step": at})
            OmegaConf.save(cfg, tmp / "config.yaml", resolve=True)
        engine.barrier()
        if engine.is_main:
            ckpt.commit(tmp, t.keep_last)
        engine.barrier()

    buffer = MetricBuffer()
    tokens = torch.zeros((), dtype=torch.long, device=engine.device)
    clock = time.perf_counter()
    try:
        while step < total_steps:
            for _ in range(t.grad_accum):
                idx = stream.next()
                batch = to_device(collator([train_rows[i] for i in idx]), engine.device)
                out = preference_step(engine, cfg, batch, sft_train[idx], reference_from_cache)
                engine.backward(out.loss / t.grad_accum)
                buffer.add(out.metrics, 1.0 / t.grad_accum)
                buffer.add({"data/padding_fraction": padding_fraction(batch)}, 1.0 / t.grad_accum)
                tokens = tokens + out.tokens
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(out.metrics["loss"]), step + 1, first_bad)
            grad_norm = engine.step()
            step += 1
            tic = time.perf_counter()
            updated = updater.maybe_update(step)
            fault("step", step)
            update_ms = (time.perf_counter() - tic) * 1e3
            buffer.add({"grad_norm": grad_norm})

            if step % t.log_every == 0 or step == total_steps:
                metrics = buffer.drain(engine)
                check_finite()
                elapsed = time.perf_counter() - clock
                diff_sq, norm_sq = updater.distance()
                stacked = engine.reduce_sum(torch.stack([diff_sq, norm_sq]).to(engine.device)).cpu()
                metrics.update({
                    "lr": engine.lr(),
                    "tokens_per_s": float(engine.reduce_sum(tokens)) / max(elapsed, 1e-9),
                    "ref_updates": updater.num_updates,
                    "ref/distance": float((stacked[0] / stacked[1].clamp(min=1e-30)).sqrt()),
                    "ref/update_ms": update_ms if updated else 0.0,
                    "epoch": stream.epoch + stream.position / max(1, stream.batches_per_epoch),
                })
                logger.log(step, metrics)
                last = metrics
                tokens.zero_()
                clock = time.perf_counter()
            if t.eval_every and step % t.eval_every == 0 and step < total_steps:
                last.update(evaluate(engine, cfg, eval_rows, collator, sft_eval, data, tokenizer, sft_model, logger, step, run_dir))
            if t.save_every and step % t.save_every == 0 and step < total_steps:
                save(step)
        last.update(evaluate(engine, cfg, eval_rows, collator, sft_eval, data, tokenizer, sft_model, logger, step, run_dir))
        save(step)
        if t.save_models:
            export_models(engine, tokenizer, run_dir)
        logger.summary(last)
    except BaseException:
        logger.finish(exit_code=1)
        raise
    logger.finish()
    return last


def evaluate(engine, cfg, eval_rows, collator, sft_eval, data, tokenizer, sft_model, logger, step, run_dir) -> dict:
    """Held-out preference metrics, plus generation-based ones where the task has a gold judge."""
    from trustregion.evaluation import evaluate_preferences

    engine.policy.eval()
    try:
        metrics = evaluate_preferences(engine, cfg, eval_rows, collator, sft_eval)
        if sft_model is not None:
            from trustregion.evaluation.generation import evaluate_generation

            metrics.update(evaluate_generation(engine, cfg, data, tokenizer, sft_model, logger, step, run_dir))
    finally:
        engine.policy.train()
    logger.log(step, metrics)
    return metrics


def export_models(engine, tokenizer, run_dir: Path) -> None:
    """policy/ and reference/ with save_pretrained, tokenizer beside each (consolidated under ZeRO-3)."""
    for which in ("policy", "reference"):
        if hasattr(engine, "export"):
            engine.export(which, run_dir / which)
        elif engine.is_main:
            engine.unwrap(which).save_pretrained(run_dir / which)
        if engine.is_main:
            tokenizer.save_pretrained(run_dir / which)
    engine.barrier()


# --- entry points --------------------------------------------------------------------------------
def hydra_run_dir() -> tuple[Path, str | None]:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    sweep = hc.sweep.dir if str(hc.mode) == "RunMode.MULTIRUN" else None
    return Path(hc.runtime.output_dir), sweep


def report_errors(fn):
    """Turn a TrustRegionError into one line on stderr and exit code 2 (HYDRA_FULL_ERROR=1 keeps the traceback)."""

    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrustRegionError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    run_dir, sweep = hydra_run_dir()
    try:
        report_errors(train)(cfg, run_dir, sweep)
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from trustregion.distributed import shutdown

            shutdown()


def prepare_launch(argv: list[str]) -> list[str]:
    """Adapt a multi-process launch to Hydra: take the deepspeed launcher's ``--local_rank``, agree on
    one run dir across ranks, and let only rank 0 write ``.hydra/``."""
    import importlib.util

    args = []
    for arg in argv:
        if arg.startswith("hydra/launcher=") and arg.split("=", 1)[1] in ("slurm", "local"):
            if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
                print(f"error: {arg} needs hydra-submitit-launcher: pip install hydra-submitit-launcher", file=sys.stderr)
                sys.exit(2)
        if arg.startswith("--local_rank"):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1] if "=" in arg else "0")
        else:
            args.append(arg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from trustregion.distributed import agree_on_run_time

        agree_on_run_time()
        if int(os.environ.get("RANK", "0")) > 0:
            args.append("hydra.output_subdir=null")
    return args


def main() -> None:
    sys.argv = [sys.argv[0], *prepare_launch(sys.argv[1:])]
    _main()


if __name__ == "__main__":
    main()
