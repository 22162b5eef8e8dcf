"""The recipe's loop as a spec: SFT on the same loop, unpaired KTO, LR schedules, log-prob averaging,
length grouping, non-finite losses on any micro-batch, and that the toy task's margins rise."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, compose, torchrun
from tests.helpers import metrics as rows
from trustregion.engines.base import lr_lambda
from trustregion.errors import TrainingError
from trustregion.models.loading import sequence_logps
from trustregion.sft import run_sft
from trustregion.train import train
from trustregion.training.hooks import BaseHook, StepTimeHook
from trustregion.training.recipe import Recipe
from trustregion.training.stages import PreferenceStage

FIX = REPO / "tests" / "fixtures"
SFT_FAST = [
    "experiment=toy_sft",
    "logger=none",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.intermediate_size=64",
    "trainer.batch_size=16",
    "trainer.max_steps=6",
    "trainer.log_every=2",
    "dataset.num_pairs=64",
    "dataset.eval_samples=16",
    "dataset.sft_samples=64",
]
UNPAIRED = [
    "dataset=kto_unpaired",
    f"dataset.path={FIX}/kto/unpaired.jsonl",
    "dataset.eval_split=null",
    "dataset.eval_samples=6",
    "dataset.max_length=128",
    "dataset.max_prompt_length=64",
]


def sft_cfg(*overrides: str):
    return compose(*SFT_FAST, *overrides, config_name="sft")


# --- SFT on the alignment loop ----------------------------------------------------------------------
def test_sft_logs_its_loss_saves_the_policy_and_a_checkpoint(tmp_path):
    last = run_sft(sft_cfg(), tmp_path)
    assert [r["step"] for r in rows(tmp_path)] == [0, 2, 4, 6]
    assert set(rows(tmp_path)[0]) == {"step", "data/sft_examples", "data/skipped_rows", "data/truncated_rows"}
    assert set(rows(tmp_path)[1]) == {"step", "sft/loss", "grad_norm", "lr", "s_per_step"}
    assert math.isfinite(last["sft/loss"])
    assert (tmp_path / "policy" / "model.safetensors").exists() and (tmp_path / "policy" / "tokenizer.json").exists()
    assert (tmp_path / "checkpoints" / "step_000006" / "COMPLETE").exists()


def test_sft_config_carries_no_method_and_no_reference_update():
    cfg = sft_cfg()
    assert "method" not in cfg and "ref_update" not in cfg


def test_sft_killed_and_resumed_logs_the_same_losses_and_weights(tmp_path):
    full = tmp_path / "full"
    run_sft(sft_cfg(), full)
    run = tmp_path / "run"
    run_sft(sft_cfg("trainer.max_steps=4", "trainer.save_every=2"), run)  # stands in for a run cut at step 4
    run_sft(sft_cfg("trainer.resume=latest"), run)
    losses = [[r["sft/loss"] for r in rows(d) if "sft/loss" in r] for d in (full, run)]
    assert losses[0] == losses[1]
    a, b = load_file(str(full / "policy" / "model.safetensors")), load_file(str(run / "policy" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_step_time_divides_by_the_steps_run_since_the_last_log():
    hook = StepTimeHook()
    ctx = SimpleNamespace(state=SimpleNamespace(step=0))
    hook.on_train_start(ctx)
    ctx.state.step = 4
    hook.clock -= 2.0  # two seconds for four steps
    metrics: dict = {}
    hook.on_log(ctx, metrics)
    assert metrics["s_per_step"] == pytest.approx(0.5, rel=0.05)


# --- the loop with other data and options ------------------------------------------------------------
def test_unpaired_kto_trains_through_the_loop(fast_cfg, tmp_path):
    last = train(fast_cfg("method=kto", *UNPAIRED, "trainer.batch_size=4"), tmp_path)
    assert math.isfinite(last["loss"])
    assert rows(tmp_path)[0]["data/train_pairs"] == 24
    trained = [r for r in rows(tmp_path) if "loss" in r]
    assert [r["step"] for r in trained] == [1, 2, 3, 4]
    assert "logps/completion" in trained[0] and "rewards/margins" in trained[0]


@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.5, 1.0, 1.0, 2 / 3, 1 / 3]),
        ("cosine", [0.5, 1.0, 1.0, 0.75, 0.25]),
    ],
)
def test_lr_schedules_warm_up_linearly_then_hold_or_decay(schedule, expected):
    f = lr_lambda(schedule, warmup=2, total=5)
    assert [f(s) for s in range(5)] == pytest.approx(expected)


def test_the_loop_logs_the_scheduled_lr(fast_cfg, tmp_path):
    train(fast_cfg("trainer.schedule=linear", "trainer.lr=1e-3", "trainer.warmup_steps=2"), tmp_path)
    # logged after step s: the multiplier of step s (0-based): warm-up 0.5, 1; then linear decay over 2 steps
    assert [r["lr"] for r in rows(tmp_path) if "lr" in r] == pytest.approx([1e-3, 1e-3, 5e-4, 0.0])


def test_average_logps_are_per_token_means():
    torch.manual_seed(0)
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    batch = {
        "input_ids": torch.randint(0, 64, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
        "response_mask": mask,
    }
    total, counts = sequence_logps(model, batch)
    mean, _ = sequence_logps(model, batch, average=True)
    assert counts.tolist() == [3, 5]
    torch.testing.assert_close(mean, total / counts)


def test_average_logps_in_the_loop_log_per_token_log_probs(fast_cfg, tmp_path):
    train(fast_cfg("method=ipo", "method.average_logps=true"), tmp_path / "mean")
    train(fast_cfg("method=ipo"), tmp_path / "sum")
    first = {k: next(r for r in rows(tmp_path / k) if "loss" in r) for k in ("mean", "sum")}
    per_token = first["sum"]["logps/chosen"] / first["sum"]["lengths/chosen"]
    assert first["mean"]["logps/chosen"] == pytest.approx(per_token, rel=0.05)


def test_group_by_length_batches_rows_of_similar_length_in_the_loop(fast_cfg, tmp_path):
    files = [f"dataset.data_files={{train:{FIX}/hh/train.jsonl,test:{FIX}/hh/test.jsonl}}"]
    common = [
        "dataset=hh",
        "dataset.path=null",
        *files,
        "dataset.max_length=64",
        "dataset.max_prompt_length=48",
        "trainer.batch_size=2",
        "dataset.eval_samples=2",
    ]
    train(fast_cfg(*common, "dataset.group_by_length=true"), tmp_path / "grouped")
    train(fast_cfg(*common), tmp_path / "plain")
    padding = {k: [r["data/padding_fraction"] for r in rows(tmp_path / k) if "loss" in r] for k in ("grouped", "plain")}
    assert sum(padding["grouped"]) < sum(padding["plain"])


class NaNOnFirstMicroBatch:
    """Wraps an objective: a NaN loss on the first micro-batch of optimizer step ``at`` (of two)."""

    def __init__(self, objective, recipe, at: int) -> None:
        self.objective, self.recipe, self.at, self.calls = objective, recipe, at, 0

    def __call__(self, *args, **kwargs):
        out = self.objective(*args, **kwargs)
        self.calls += 1
        if self.recipe.state.step + 1 == self.at and self.calls % 2 == 1:
            out.loss = out.loss * float("nan")
        return out


def test_non_finite_loss_on_a_micro_batch_before_the_last_names_its_step(fast_cfg, tmp_path):
    recipe = Recipe(
        fast_cfg("trainer.grad_accum=2", "trainer.log_every=10", "trainer.max_steps=4"), tmp_path, PreferenceStage()
    )
    recipe.setup()
    recipe.objective = NaNOnFirstMicroBatch(recipe.objective, recipe, at=2)
    with pytest.raises(TrainingError, match="non-finite loss at step 2;"):
        recipe.train()


def test_margins_and_accuracy_rise_on_the_toy_task(fast_cfg, tmp_path):
    train(fast_cfg("ref_update=none", "trainer.max_steps=40", "trainer.log_every=10", "trainer.lr=1e-3"), tmp_path)
    logged = [r for r in rows(tmp_path) if "loss" in r]
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"] + 0.1
    assert logged[-1]["rewards/accuracies"] > max(0.7, logged[0]["rewards/accuracies"])
    assert logged[-1]["loss"] < logged[0]["loss"]


@pytest.mark.slow
def test_bf16_reference_under_zero3_updates_the_whole_copy_parameters(tmp_path):
    # ZeRO-3 keeps parameters below the persistence threshold whole on every rank, and the forward reads
    # that copy: the update must mix it too (through an fp32 master for bf16), or the reference's forward,
    # and so the losses, drift from the run where every parameter is sharded.
    from tests.helpers import FAST, TOY

    common = [
        *FAST,
        *TOY,
        "deepspeed=zero3",
        "trainer.precision=bf16-mixed",
        "ref_update=soft",
        "ref_update.alpha=0.5",
        "ref_update.tau=1",
        "trainer.max_steps=4",
        "trainer.lr=3e-3",
        "trainer.cache_reference=false",
    ]
    torchrun(*common, "deepspeed.param_persistence_threshold=300", f"hydra.run.dir={tmp_path / 'whole'}")
    torchrun(*common, "deepspeed.param_persistence_threshold=0", f"hydra.run.dir={tmp_path / 'sharded'}")
    losses = {k: [r["loss"] for r in rows(tmp_path / k) if "loss" in r] for k in ("whole", "sharded")}
    assert losses["whole"] == pytest.approx(losses["sharded"], abs=1e-6)


class Recorder(BaseHook):
    """Counts the events the recipe sends its hooks."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_train_start(self, ctx) -> None:
        self.events.append(("start", ctx.state.step))

    def on_step_end(self, ctx) -> None:
        self.events.append(("step", ctx.state.step))

    def on_log(self, ctx, metrics) -> None:
        self.events.append(("log", ctx.state.step))
        metrics["recorded"] = 1.0

    def on_eval(self, ctx, metrics) -> None:
        self.events.append(("eval", ctx.state.step))

    def on_save(self, ctx, directory) -> None:
        assert directory.name == f".tmp-step_{ctx.state.step:06d}"  # not committed yet
        self.events.append(("save", ctx.state.step))

    def on_train_end(self, ctx) -> None:
        self.events.append(("end", ctx.state.step))


def test_hooks_see_every_step_log_evaluation_and_checkpoint_in_order(fast_cfg, tmp_path):
    hook = Recorder()
    cfg = fast_cfg("trainer.log_every=2", "trainer.eval_every=2", "trainer.save_every=3")
    Recipe(cfg, tmp_path, PreferenceStage(), extra_hooks=[hook]).run()
    assert hook.events == [
        ("eval", 0),
        ("start", 0),
        ("step", 1),
        ("step", 2),
        ("log", 2),
        ("eval", 2),
        ("step", 3),
        ("save", 3),
        ("step", 4),
        ("log", 4),
        ("eval", 4),
        ("save", 4),
        ("end", 4),
    ]
    assert all(r["recorded"] == 1.0 for r in rows(tmp_path) if "loss" in r)


def test_both_engines_implement_every_method_of_the_engine_protocol():
    import inspect

    from trustregion.engines.base import Engine
    from trustregion.engines.local import LocalEngine
    from trustregion.engines.zero import DeepSpeedEngine

    wanted = {n for n, f in vars(Engine).items() if inspect.isfunction(f) and not n.startswith("_")}
    for cls in (LocalEngine, DeepSpeedEngine):
        for name in wanted:
            mine, theirs = inspect.signature(getattr(cls, name)), inspect.signature(getattr(Engine, name))
            assert list(mine.parameters) == list(theirs.parameters), (cls.__name__, name)


def test_the_final_checkpoint_can_leave_the_optimizer_state_out(fast_cfg, tmp_path):
    from trustregion.errors import ConfigError

    train(fast_cfg("trainer.max_steps=4", "trainer.save_every=2", "trainer.final_optimizer_state=false"), tmp_path)
    middle = torch.load(tmp_path / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    final = torch.load(tmp_path / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
    assert "optimizer" in middle and "optimizer" not in final and "policy" in final
    with pytest.raises(ConfigError, match="this final checkpoint holds no optimizer state"):
        train(fast_cfg("trainer.max_steps=6", "trainer.resume=latest"), tmp_path)


def test_a_second_run_in_a_run_dir_in_use_stops_with_one_line(fast_cfg, tmp_path):
    import fcntl

    from trustregion.errors import ConfigError

    held = open(tmp_path / ".lock", "a+")  # as another process holds it (the lock is per open file)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("pid 4242")
    held.flush()
    with pytest.raises(ConfigError, match=rf"the run dir {tmp_path} is in use by pid 4242; wait for it to end"):
        train(fast_cfg(), tmp_path)
    held.close()
    train(fast_cfg("trainer.max_steps=1"), tmp_path)  # free again


def test_the_run_dir_lock_is_shared_within_a_process_and_released_by_its_last_holder(tmp_path):
    import fcntl

    from trustregion.training.rundir import lock_run_dir

    first, second = lock_run_dir(tmp_path), lock_run_dir(tmp_path)
    other = open(tmp_path / ".lock", "a+")
    first.close()
    with pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    second.close()
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    other.close()


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(fast_cfg, tmp_path, capsys, caplog):
    from trustregion.errors import ConfigError

    train(fast_cfg("trainer.max_steps=4", "trainer.save_every=2"), tmp_path)
    state = tmp_path / "checkpoints" / "step_000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # cut short, as a full disk would leave it
    with pytest.raises(ConfigError, match=r"step_000004: state.pt does not match its checksum"):
        train(fast_cfg("trainer.max_steps=6", f"trainer.resume={state.parent}"), tmp_path / "explicit")
    caplog.set_level("INFO", logger="trustregion")
    train(fast_cfg("trainer.max_steps=6", "trainer.resume=latest"), tmp_path)
    said = capsys.readouterr().out + caplog.text
    assert "does not match its checksum" in said and "trying step_000002" in said
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]  # steps 3-4 run again from step 2


def test_save_final_false_writes_no_final_checkpoint_but_still_exports_the_models(fast_cfg, tmp_path):
    train(fast_cfg("trainer.max_steps=4", "trainer.save_every=2", "trainer.save_final=false"), tmp_path)
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step_000002"]
    assert (tmp_path / "policy" / "model.safetensors").exists()
