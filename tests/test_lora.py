"""LoRA with a moving reference: the reference delta against an fp64 recomputation, bad input, resume, export."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.helpers import FAST, FAULTS, TOY, cli, compose, losses, metrics, torchrun
from trustregion.config import ModelConfig, PeftConfig
from trustregion.errors import ConfigError
from trustregion.models.loading import sequence_logps, tiny_model
from trustregion.models.lora import load_policy_state, low_rank_factors, policy_state, wrap_policy
from trustregion.reference.adapter import AdapterApplier, build_reference
from trustregion.train import train

pytest.importorskip("peft")


def peft_cfg(**kw):
    return OmegaConf.structured(PeftConfig(name="lora", rank=4, alpha=8.0, **kw))


def tiny_base(vocab: int = 64):
    cfg = OmegaConf.structured(ModelConfig(hidden_size=32, num_layers=2, intermediate_size=64, num_heads=4))
    return tiny_model(cfg, vocab, seed=0)


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (4, 12), generator=g)
    response = torch.zeros(4, 12, dtype=torch.bool)
    response[:, 6:] = True
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": response}


def train_a_little(policy, g: torch.Generator) -> None:
    """Stand-in for an optimizer step: move every LoRA factor (B too, so s*B*A is not 0)."""
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def saved_deltas(directory, scale: float) -> dict[str, torch.Tensor]:
    """s*B*A per module in fp64, read back from a PEFT adapter dir."""
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if key.endswith("lora_A.weight"):
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = tensors[key.replace("lora_A", "lora_B")]
            out[name] = scale * b.double() @ a.double()
    return out


def run_updates(tmp_path, mode: str, alpha: float, tau: int, steps: int = 6):
    """A LoRA policy and its moving reference through ``steps`` steps; the fp64 delta_ref from the saved adapters."""
    base = tiny_base()
    policy = wrap_policy(copy.deepcopy(base), peft_cfg(reference=mode, factors_error=True))
    reference = build_reference(policy, peft_cfg(reference=mode, factors_error=True), moving=True)
    updater = AdapterApplier(reference)
    scale = reference.layers[0].scale
    exact = {
        layer.name: torch.zeros(layer.B.shape[0], layer.A.shape[1], dtype=torch.float64) for layer in reference.layers
    }
    g = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        train_a_little(policy, g)
        if step % tau == 0:
            updater.apply(alpha)
            policy.save_pretrained(str(tmp_path / f"step{step}"))
            for name, d in saved_deltas(tmp_path / f"step{step}", scale).items():
                exact[name] = alpha * d + (1 - alpha) * exact[name]
    return base, policy, reference, updater, exact


def full_model_logps(base, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-probs of a plain model whose adapted weights are W0 + delta, summed in fp64 (then stored in fp32)."""
    full = copy.deepcopy(base)
    with torch.no_grad():
        for name, d in deltas.items():
            w = full.get_submodule(name).weight
            w.copy_(w.double() + d)
    return sequence_logps(full, batch())[0].double()


@pytest.mark.parametrize("alpha, tau", [(0.3, 1), (0.6, 2), (1.0, 3)])
def test_exact_reference_equals_the_base_plus_the_fp64_delta_at_any_alpha(tmp_path, alpha, tau):
    base, _, reference, _, exact = run_updates(tmp_path, "exact", alpha, tau)
    got = sequence_logps(reference, batch())[0].double()
    assert torch.allclose(got, full_model_logps(base, exact), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tau", [1, 2])
def test_factors_reference_is_exact_for_the_hard_update(tmp_path, tau):
    base, _, reference, _, exact = run_updates(tmp_path, "factors", 1.0, tau)
    got = sequence_logps(reference, batch())[0].double()
    assert torch.allclose(got, full_model_logps(base, exact), atol=1e-5, rtol=0)


def test_factors_error_logged_matches_the_fp64_computation(tmp_path):
    _, _, reference, updater, exact = run_updates(tmp_path, "factors", 0.3, 1)
    factors = dict(zip([layer.name for layer in reference.layers], reference.deltas()))
    num = sum(((factors[n].double() - exact[n]) ** 2).sum() for n in exact)
    den = sum((exact[n] ** 2).sum() for n in exact)
    logged = updater.metrics()["ref/factors_error"]
    assert logged > 1e-3  # the product of lerps is not the lerp of products
    assert logged == pytest.approx(float((num / den).sqrt()), rel=1e-4)


@pytest.mark.parametrize("mode", ["exact", "factors"])
def test_distance_is_the_relative_distance_of_all_weights(tmp_path, mode):
    base, policy, reference, updater, _ = run_updates(tmp_path, mode, 0.5, 2, steps=5)
    ref_delta = {x.name: d.double() for x, d in zip(reference.layers, reference.deltas())}
    pol_delta = {x.name: x.delta().double() for x in reference.layers}
    diff = sum(((ref_delta[n] - pol_delta[n]) ** 2).sum() for n in ref_delta)
    norm = 0.0
    for name, p in base.named_parameters():
        owner = name.removesuffix(".weight")
        norm += ((p.double() + pol_delta[owner]) ** 2).sum() if owner in pol_delta else (p.double() ** 2).sum()
    d, n = updater.distance()
    assert float((d / n).sqrt()) == pytest.approx(float((diff / norm).sqrt()), rel=1e-5)


def test_exact_reference_exports_at_the_rank_its_updates_made_and_scores_like_the_run(tmp_path):
    from peft import PeftModel

    # 3 updates (tau 1) of rank-4 products: delta_ref has rank <= 12, below min(out, in) = 32 of every module.
    base, _, reference, _, exact = run_updates(tmp_path, "exact", 0.3, 1, steps=3)
    reference.save_pretrained(tmp_path / "ref")
    ranks = json.loads((tmp_path / "ref" / "adapter_config.json").read_text())["rank_pattern"]
    assert len(ranks) == len(reference.layers) and max(ranks.values()) <= 3 * 4
    exported = saved_deltas(tmp_path / "ref", 1.0)
    for layer, delta in zip(reference.layers, reference.deltas()):
        torch.testing.assert_close(exported[layer.name], delta.double(), atol=1e-6, rtol=0)
        torch.testing.assert_close(exported[layer.name], exact[layer.name], atol=1e-6, rtol=0)
    adapter = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ref")
    assert torch.allclose(sequence_logps(adapter, batch())[0], sequence_logps(reference, batch())[0], atol=1e-5)


def test_low_rank_factors_find_the_numerical_rank_without_a_full_svd():
    g = torch.Generator().manual_seed(0)
    product = lambda m, r, n: torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g)  # noqa: E731
    for m, n, r in [(300, 200, 7), (200, 300, 40), (50, 40, 40), (50, 40, 45)]:
        delta = product(m, r, n)
        a, b = low_rank_factors(delta, start=4)
        assert a.shape == (min(r, m, n), n) and b.shape == (m, min(r, m, n))
        assert float((b @ a - delta).norm() / delta.norm()) < 1e-6
    # fp32 rounding is no rank: a rank-5 delta plus noise at 1e-9 of it exports at rank 5 (the old 1e-12 rule kept 200)
    delta = product(300, 5, 200)
    noisy = delta + 1e-9 * delta.abs().max() * torch.randn(300, 200, generator=g)
    assert low_rank_factors(noisy)[0].shape[0] == 5
    a, b = low_rank_factors(torch.zeros(30, 20))
    assert a.shape == (1, 20) and not b.any()


def test_the_reference_leaves_the_policy_unchanged_and_training(tmp_path):
    _, policy, reference, _, _ = run_updates(tmp_path, "exact", 0.5, 1)
    policy.train()
    before = sequence_logps(policy, batch())[0]
    sequence_logps(reference, batch())
    assert policy.training
    assert torch.equal(sequence_logps(policy, batch())[0], before)
    assert not torch.allclose(sequence_logps(reference, batch())[0], before)


def test_frozen_reference_of_a_fresh_adapter_is_the_base():
    base = tiny_base()
    policy = wrap_policy(copy.deepcopy(base), peft_cfg())
    train_a_little(policy, torch.Generator().manual_seed(0))
    reference = build_reference(policy, peft_cfg(), moving=False)
    assert reference.kind == "base"
    assert torch.allclose(sequence_logps(reference, batch())[0], sequence_logps(base, batch())[0], atol=1e-6)


def test_auto_picks_exact_when_the_dense_delta_is_small_next_to_the_base():
    # A 2048-token vocabulary: embeddings 131k weights; query_key_value 2 x 96x32 = 6k (5 %), all-linear 16k (11 %).
    policy = wrap_policy(tiny_base(vocab=2048), peft_cfg(target_modules=["query_key_value"]))
    assert build_reference(policy, peft_cfg(), moving=True).kind == "exact"
    policy = wrap_policy(tiny_base(vocab=64), peft_cfg())  # all-linear is 80 % of a 64-token model's weights
    assert build_reference(policy, peft_cfg(), moving=True).kind == "factors"


# --- bad input: one line each -------------------------------------------------------------------------
def test_a_target_module_that_matches_nothing_is_named():
    with pytest.raises(ConfigError, match="'q_proj' matches no module.*query_key_value"):
        wrap_policy(tiny_base(), peft_cfg(target_modules=["q_proj"]))


def test_a_model_peft_cannot_wrap_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="PEFT cannot wrap this model") as e:
        wrap_policy(tiny_base(), peft_cfg(target_modules=["final_layer_norm"]))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mode", ["exact", "factors"])
def test_an_explicit_reference_mode_with_a_frozen_reference_is_refused(fast_cfg, tmp_path, mode):
    with pytest.raises(ConfigError, match=f"peft.reference={mode} is for a moving reference but ref_update=none"):
        train(fast_cfg("peft=lora", f"peft.reference={mode}", "ref_update=none"), tmp_path)


def test_exact_reference_under_zero3_is_refused_with_the_reason(fast_cfg, tmp_path):
    with pytest.raises(ConfigError, match="peft.reference=exact does not run under deepspeed=zero3.*partitions"):
        train(fast_cfg("peft=lora", "peft.reference=exact", "deepspeed=zero3"), tmp_path)


# --- end to end -----------------------------------------------------------------------------------------
LORA = ["peft=lora", "peft.rank=4", "ref_update=soft", "ref_update.alpha=0.3"]


def test_checkpoint_holds_the_policy_adapter_and_the_exact_reference_delta_not_the_base(fast_cfg, tmp_path):
    train(fast_cfg(*LORA, "peft.reference=exact"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
    assert any("lora_A.default" in k for k in state["policy"]) and any("lora_B.default" in k for k in state["policy"])
    assert all(".lora_" in k for k in state["policy"])  # the frozen base is reloaded on resume, not saved
    assert state["reference"] and all(k.startswith("delta_") for k in state["reference"])
    # The exported reference has the rank its updates made: at most rank 4 per update, here below min(out, in) = 32.
    updates = [r["ref_updates"] for r in metrics(tmp_path) if "ref_updates" in r][-1]
    ranks = json.loads((tmp_path / "reference" / "adapter_config.json").read_text())["rank_pattern"].values()
    assert 1 <= updates and max(ranks) <= 4 * updates < 32


def test_lora_resume_from_adapters_alone_matches_the_uninterrupted_run_bit_for_bit(fast_cfg, tmp_path):
    run = [*LORA, "peft.reference=exact", "trainer.save_every=2", "trainer.lr=3e-3"]
    train(fast_cfg(*run), tmp_path / "full")
    train(fast_cfg(*run, "trainer.max_steps=2"), tmp_path / "cut")
    train(fast_cfg(*run, "trainer.resume=latest"), tmp_path / "cut")
    assert losses(tmp_path / "cut")[-2:] == losses(tmp_path / "full")[-2:]
    full, cut = (
        torch.load(d / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
        for d in (tmp_path / "full", tmp_path / "cut")
    )
    for part in ("policy", "reference"):
        assert full[part].keys() == cut[part].keys()
        assert all(torch.equal(full[part][k], cut[part][k]) for k in full[part]), part


def test_policy_state_is_the_adapters_and_loads_back_onto_a_fresh_base():
    policy = wrap_policy(tiny_base(), peft_cfg())
    train_a_little(policy, torch.Generator().manual_seed(0))
    state = policy_state(policy)
    assert state.keys() == {k for k in policy.state_dict() if ".lora_" in k}
    fresh = wrap_policy(tiny_base(), peft_cfg())
    load_policy_state(fresh, state)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in policy.state_dict().items())
    load_policy_state(fresh, policy.state_dict())  # a checkpoint written with the base (before this rule) loads too
    with pytest.raises(RuntimeError, match="does not fit this policy"):
        load_policy_state(fresh, {k: v for k, v in state.items() if "lora_B" not in k})


def test_checkpoint_holds_both_adapters_under_factors(fast_cfg, tmp_path):
    train(fast_cfg(*LORA, "peft.reference=factors", "peft.factors_error=false"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
    for adapter in ("default", "reference"):
        assert any(f"lora_A.{adapter}" in k for k in state["policy"]), adapter
        assert any(f"lora_B.{adapter}" in k for k in state["policy"]), adapter
    assert all(".lora_" in k for k in state["policy"])


def test_export_writes_peft_adapters_and_merged_models_that_score_like_the_run(fast_cfg, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train(fast_cfg(*LORA, "peft.reference=exact", "peft.export_merged=true"), tmp_path)
    b = batch()
    for which in ("policy", "reference"):
        assert (tmp_path / which / "adapter_model.safetensors").exists()
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / f"{which}_merged")
        adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / which)
        assert torch.allclose(sequence_logps(adapter, b)[0], sequence_logps(merged, b)[0], atol=1e-4)


def test_killed_lora_run_resumes_to_the_same_losses_and_reference(tmp_path):

    base = [
        *FAST,
        *TOY,
        *LORA,
        "peft.reference=factors",
        "peft.factors_error=true",
        "trainer.max_steps=6",
        "trainer.save_every=2",
    ]
    train(compose(*base), tmp_path / "full")
    run = tmp_path / "killed"
    assert cli(*base, FAULTS, f"hydra.run.dir={run}", env={"TRUSTREGION_FAULT": "step:3"}).returncode == -9
    train(compose(*base, "trainer.resume=latest"), run)
    rows = lambda d: [(r["loss"], r["ref/factors_error"]) for r in metrics(d) if "loss" in r]  # noqa: E731
    assert rows(run) == rows(tmp_path / "full")
    a = load_file(str(run / "reference" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "full" / "reference" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sft_trains_an_adapter_that_the_preference_stage_starts_from(fast_cfg, tmp_path):
    from tests.helpers import compose
    from trustregion.sft import run_sft

    fast = [o for o in FAST if not o.startswith(("experiment", "eval"))]
    run_sft(compose(*fast, *TOY, "peft=lora", "trainer.lr=1e-2", config_name="sft"), tmp_path / "sft")
    adapter = load_file(str(tmp_path / "sft" / "policy" / "adapter_model.safetensors"))
    assert max(t.abs().max() for k, t in adapter.items() if "lora_B" in k) > 1e-3  # the adapter moved off the base
    assert (tmp_path / "sft" / "policy" / "adapter_config.json").exists()
    cfg = fast_cfg(
        f"model.path={tmp_path / 'sft' / 'base'}",
        "peft=lora",
        f"peft.adapter_path={tmp_path / 'sft' / 'policy'}",
        "ref_update=none",
        "trainer.cache_reference=false",
    )
    train(cfg, tmp_path / "dpo")
    first = next(r for r in metrics(tmp_path / "dpo") if "loss" in r)
    assert abs(first["logratio/policy_ref"]) < 1e-6  # the reference is the starting adapter, not the bare base
    assert abs(first["rewards_sft/margins"]) < 1e-6


def test_prompt_sharing_with_lora_is_refused(fast_cfg, tmp_path):
    with pytest.raises(ConfigError, match="model.share_prompt=true is not supported with peft=lora"):
        train(fast_cfg("peft=lora", "model.logps=chunked", "model.share_prompt=true"), tmp_path)


@pytest.mark.slow
def test_two_ranks_under_zero2_match_one_process(tmp_path):

    common = [*FAST, *TOY, *LORA, "peft.reference=exact", "ref_update.tau=2", "trainer.lr=3e-3"]
    train(compose(*common, "trainer.batch_size=16"), tmp_path / "one")
    torchrun(*common, "deepspeed=zero2", "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'two'}")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    one, two = saved_deltas(tmp_path / "one" / "reference", 1.0), saved_deltas(tmp_path / "two" / "reference", 1.0)
    assert one.keys() == two.keys()
    for key in one:  # the exported factors are an SVD (signs are free): compare the deltas they make
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_two_ranks_under_zero3_match_one_process_with_factors_lerped_shard_by_shard(tmp_path):

    common = [*FAST, *TOY, *LORA, "peft.reference=factors", "peft.factors_error=false", "ref_update.tau=2"]
    common += ["trainer.lr=3e-3", "trainer.cache_reference=false"]
    train(compose(*common, "trainer.batch_size=16"), tmp_path / "one")
    torchrun(*common, "deepspeed=zero3", "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'two'}")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    one = load_file(str(tmp_path / "one" / "reference" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "reference" / "adapter_model.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_zero3_lora_checkpoint_leaves_the_base_out_and_resumes_to_the_same_reference(tmp_path):
    common = [*FAST, *TOY, *LORA, "peft.reference=factors", "peft.factors_error=false", "ref_update.tau=2"]
    common += ["trainer.lr=3e-3", "trainer.cache_reference=false", "deepspeed=zero3", "trainer.batch_size=8"]
    common += ["trainer.save_every=2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    torchrun(*common, f"hydra.run.dir={full}")
    torchrun(*common, "trainer.max_steps=2", f"hydra.run.dir={cut}")
    torchrun(*common, "trainer.resume=latest", f"hydra.run.dir={cut}")
    for states in (cut / "checkpoints" / "step_000002" / "deepspeed" / "policy").glob("*model_states.pt"):
        saved = torch.load(states, weights_only=False)
        assert saved["module"] and all(".lora_" in k for k in saved["module"]), states.name  # no frozen base
        assert saved.get("frozen_param_fragments") is None, states.name
    assert losses(cut)[-2:] == pytest.approx(losses(full)[-2:], abs=1e-6)
    a = load_file(str(cut / "reference" / "adapter_model.safetensors"))
    b = load_file(str(full / "reference" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # the reference adapter, lerped shard by shard, came back from the reference's own files
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_resuming_a_lora_checkpoint_without_lora_is_refused(fast_cfg, tmp_path):
    train(fast_cfg(*LORA, "peft.reference=exact"), tmp_path)
    with pytest.raises(
        ConfigError, match=r"model differs \(model.peft: rank=4, .* -> None\); resume with the checkpoint's settings"
    ):
        train(fast_cfg("ref_update=soft", "ref_update.alpha=0.3", "trainer.resume=latest"), tmp_path)
