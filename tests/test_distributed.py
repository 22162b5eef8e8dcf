"""Two CPU processes (gloo) under DeepSpeed ZeRO: same training as one process, reference updated shard by shard."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import FAST, FAULTS, REPO, TOY, compose, logged, losses, torchrun, weights
from trustregion.train import train

SLOW = pytest.mark.slow  # variants of what the unmarked tests cover: make test-all

COMMON = [*FAST, *TOY, "ref_update=soft", "ref_update.alpha=0.5", "ref_update.tau=2", "trainer.max_steps=4"]


def distances(run_dir):
    return logged(run_dir, "ref/distance")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one")
    train(compose(*COMMON, "trainer.batch_size=16"), run_dir)
    return run_dir


UNPAIRED = [
    "dataset=kto_unpaired",
    f"dataset.path={REPO}/tests/fixtures/kto/unpaired.jsonl",
    "dataset.eval_split=null",
    "dataset.eval_samples=4",
    "dataset.max_length=128",
    "dataset.max_prompt_length=64",
]


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(["method=ipo"], marks=SLOW),
        ["method=kto", "method.reference_point=paired"],  # z carries gradients: its all-reduce must too
        pytest.param(["method=kto", "method.reference_point=mismatched"], marks=SLOW),
        pytest.param(["method=kto", *UNPAIRED], marks=SLOW),
    ],
    ids=["ipo", "kto-paired", "kto-mismatched", "kto-unpaired"],
)
def test_two_ranks_under_zero3_train_the_objective_of_one_process(tmp_path, method):
    # KTO's reference point z is a batch mean: it must be the mean over every rank's micro-batch.
    unpaired = "dataset=kto_unpaired" in method
    batch = 4 if unpaired else 8
    # In 4 steps the mismatched z stays near its clamp at 0, so those cases check the plumbing; the paired
    # case (and tests/test_kto_ranks.py, with z > 0) fail when z is a rank's own mean.
    common = [*(o for o in COMMON if not (unpaired and o in TOY)), *method, "trainer.seed=3"]
    train(compose(*common, f"trainer.batch_size={2 * batch}"), tmp_path / "one")
    torchrun(*common, "deepspeed=zero3", f"trainer.batch_size={batch}", f"hydra.run.dir={tmp_path / 'two'}")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    for which in ("policy", "reference"):
        one, two = weights(tmp_path / "one", which), weights(tmp_path / "two", which)
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["deepspeed=zero2"], marks=SLOW),
        ["deepspeed=zero3"],
        # Small parameters stay whole on every rank (persistent): the update must reach those copies too.
        pytest.param(["deepspeed=zero3", "deepspeed.param_persistence_threshold=300"], marks=SLOW),
        pytest.param(["deepspeed=zero3", "deepspeed.reference_update=gathered"], marks=SLOW),
    ],
    ids=["zero2", "zero3-sharded", "zero3-persistent", "zero3-gathered"],
)
def test_two_ranks_match_one_process(one_process, tmp_path, options):
    torchrun(*COMMON, *options, "trainer.batch_size=8", f"hydra.run.dir={tmp_path}")
    assert losses(tmp_path) == pytest.approx(losses(one_process), abs=1e-5)
    assert distances(tmp_path) == pytest.approx(distances(one_process), rel=1e-4)
    ref_one, ref_two = weights(one_process, "reference"), weights(tmp_path, "reference")
    assert ref_one.keys() == ref_two.keys()
    for key in ref_one:
        torch.testing.assert_close(ref_two[key], ref_one[key], atol=1e-6, rtol=0)


def test_two_ranks_under_zero3_evaluate_by_generation_as_one_process(tmp_path):
    """Greedy samples (the same on any layout) scored on the partitioned model: the same gold and KLs as one process."""
    evaluate = [*COMMON, "eval.generate=true", "eval.greedy=true", "eval.prompts=6", "trainer.eval_every=2"]
    train(compose(*evaluate, "trainer.batch_size=16"), tmp_path / "one")
    torchrun(*evaluate, "deepspeed=zero3", "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'two'}")
    for key in ("eval/gold_reward", "eval/kl_sft", "eval/kl_ref", "eval/response_tokens", "eval/sft_gold_reward"):
        one, two = logged(tmp_path / "one", key), logged(tmp_path / "two", key)
        assert len(one) == 3 and two == pytest.approx(one, abs=1e-4), key


def test_two_ranks_killed_and_resumed_log_the_same_metrics(tmp_path):
    base = [*COMMON, "deepspeed=zero3", "trainer.batch_size=8", "trainer.max_steps=6", "trainer.save_every=2"]
    torchrun(*base, f"hydra.run.dir={tmp_path / 'full'}")
    run = tmp_path / "killed"
    killed = torchrun(*base, FAULTS, f"hydra.run.dir={run}", check=False, env={"TRUSTREGION_FAULT": "step:5"})
    assert killed.returncode != 0
    torchrun(*base, f"hydra.run.dir={run}", "trainer.resume=latest")
    assert losses(run) == losses(tmp_path / "full")
    full, resumed = weights(tmp_path / "full", "reference"), weights(run, "reference")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@SLOW
def test_submitit_local_launcher_runs_a_two_job_sweep_of_two_rank_jobs(tmp_path):
    # The Slurm launcher's code path (submitit), with its local executor: each job starts 2 tasks.
    args = [
        "--multirun",
        *FAST,
        *TOY,
        "trainer.max_steps=2",
        "hydra/launcher=local",
        "hydra.launcher.tasks_per_node=2",
        "deepspeed=zero3",
        "ref_update.alpha=0.1,0.5",
        f"hydra.sweep.dir={tmp_path}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "trustregion.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for job in ("0", "1"):
        first = json.loads((tmp_path / job / "metrics.jsonl").read_text().splitlines()[0])
        assert first["world_size"] == 2
        assert len(losses(tmp_path / job)) == 2


def test_slurm_launcher_starts_one_task_per_gpu():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trustregion.train",
            "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.partition=gpu",
            "--cfg",
            "hydra",
            "--resolve",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    launcher = __import__("yaml").safe_load(out.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["tasks_per_node"] == 4 and launcher["gpus_per_node"] == 4 and launcher["partition"] == "gpu"


@SLOW
def test_sft_at_two_ranks_under_zero3_matches_one_process(tmp_path):
    sft = [
        "experiment=toy_sft",
        "logger=none",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.intermediate_size=64",
        "trainer.max_steps=3",
        "trainer.log_every=1",
        *TOY,
    ]
    from trustregion.sft import run_sft

    run_sft(compose(*sft, "trainer.batch_size=16", config_name="sft"), tmp_path / "one")
    torchrun(
        *sft, "deepspeed=zero3", "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'two'}", module="trustregion.sft"
    )
    one, two = (logged(tmp_path / d, "sft/loss") for d in ("one", "two"))
    assert two == pytest.approx(one, abs=1e-5)
    assert (tmp_path / "two" / "policy" / "model.safetensors").exists()
