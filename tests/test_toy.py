"""The toy task: its Markov-chain language, its gold judge, its preference pairs and its config checks."""

from __future__ import annotations

import numpy as np
import pytest

from trustregion.data.toy import ECHO_BONUS, OFF_SUPPORT, ToyTask
from trustregion.errors import ConfigError

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast


@pytest.fixture(scope="module")
def task() -> ToyTask:
    return ToyTask(seed=0)


def allowed_walk(task: ToyTask, start: int, n: int) -> list[int]:
    """A walk that always takes the first allowed successor."""
    out, cur = [], start
    for _ in range(n):
        cur = int(task.next_ids[cur, 0])
        out.append(cur)
    return out


def disallowed_successor(task: ToyTask, prev: int) -> int:
    return next(t for t in range(task.vocab) if t not in set(task.next_ids[prev].tolist()))


def test_process_samples_are_in_domain(task):
    rng = np.random.default_rng(0)
    for _ in range(200):
        prompt = task.sample_prompt(rng)
        assert task.gold_reward(prompt, task.sample_response(prompt, rng))[1]


def test_gold_reward_is_the_mean_per_symbol_value_on_allowed_transitions(task):
    prompt = [1, 2, 3]
    response = allowed_walk(task, 3, task.response_len)
    values = [task.values[t] + (ECHO_BONUS if t == prompt[0] else 0.0) for t in response]
    assert task.gold_reward(prompt, response) == (pytest.approx(float(np.mean(values))), True)


def test_echoing_the_first_prompt_symbol_earns_the_bonus(task):
    response = allowed_walk(task, 3, task.response_len)
    with_echo = task.gold_reward([response[0], 2, 3], response)[0]
    without = task.gold_reward([next(t for t in range(task.vocab) if t not in response), 2, 3], response)[0]
    assert with_echo - without == pytest.approx(ECHO_BONUS * response.count(response[0]) / task.response_len)


def test_a_disallowed_transition_scores_off_support_and_leaves_the_domain(task):
    response = allowed_walk(task, 3, task.response_len)
    bad_symbol = disallowed_successor(task, response[3])
    bad = response[:4] + [bad_symbol] + response[5:]
    prompt = [next(t for t in range(task.vocab) if t not in bad), 2, 3]  # no echo bonus
    after = task.values[bad[5]] if bad[5] in task.next_ids[bad_symbol] else OFF_SUPPORT
    scores = [task.values[t] for t in response[:4]] + [OFF_SUPPORT, after] + [task.values[t] for t in response[6:]]
    assert task.gold_reward(prompt, bad) == (pytest.approx(float(np.mean(scores))), False)


def test_wrong_lengths_and_unknown_words_are_off_support(task):
    prompt = task.prompt_text([1, 2, 3])
    good = allowed_walk(task, 3, task.response_len)
    assert task.score_text(prompt, task.response_text(good[:-1]))[1] is False
    long_reward, long_ok = task.score_text(prompt, task.response_text(allowed_walk(task, 3, task.response_len + 4)))
    assert not long_ok and long_reward < task.score_text(prompt, task.response_text(good))[0]
    assert task.score_text(prompt, "hello world") == (OFF_SUPPORT, False)


def test_the_seed_fixes_the_language():
    a, b, c = ToyTask(seed=0), ToyTask(seed=0), ToyTask(seed=1)
    assert (a.next_ids == b.next_ids).all() and (a.values == b.values).all()
    assert not (a.next_ids == c.next_ids).all()


def test_symbols_are_single_tokens_of_the_tiny_tokenizer(task):
    from trustregion.models.loading import build_tokenizer

    rows = task.sft_rows(200, seed=3)
    tok = build_tokenizer([r["prompt"] for r in rows] + [r["response"] for r in rows], 512)
    response = rows[0]["response"]
    assert len(tok(response, add_special_tokens=False)["input_ids"]) == len(response.split())


def test_cold_labels_prefer_the_higher_gold_response(task):
    rows = task.preference_rows(200, seed=1, label_temperature=1e-4)
    gaps = [task.score_text(r["prompt"], r["chosen"])[0] - task.score_text(r["prompt"], r["rejected"])[0] for r in rows]
    assert min(gaps) >= 0.0


def test_hot_labels_are_close_to_coin_flips(task):
    rows = task.preference_rows(1000, seed=1, label_temperature=1e4)
    higher = [
        task.score_text(r["prompt"], r["chosen"])[0] > task.score_text(r["prompt"], r["rejected"])[0] for r in rows
    ]
    assert 0.45 < float(np.mean(higher)) < 0.55


def test_pairs_never_repeat_a_response(task):
    assert all(r["chosen"] != r["rejected"] for r in task.preference_rows(300, seed=1, label_temperature=0.25))


def compose(*overrides: str):
    from conftest import compose as compose_config

    return compose_config(*overrides)


def compose_toy(*overrides: str):
    return compose("dataset.sft_samples=256", *overrides).dataset


def in_domain_rate(data) -> float:
    task = data.task
    return float(np.mean([task.score_text(r["prompt"], r[k])[1] for r in data.train for k in ("chosen", "rejected")]))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A small random GPT-NeoX saved with its tokenizer: a stand-in SFT model whose samples are mostly off-support."""
    from trustregion.data import load_preferences
    from trustregion.models.loading import load_policy

    path = tmp_path_factory.mktemp("sft_policy")
    data = load_preferences(compose_toy("dataset.num_pairs=32", "dataset.eval_samples=8"))
    policy, tok = load_policy(
        compose("model.hidden_size=32", "model.num_layers=1").model,
        (t for r in data.sft for t in (r["prompt"], r["response"])),
        seed=0,
    )
    policy.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_pairs_can_be_sampled_from_a_saved_sft_model(saved_model):
    from trustregion.data import load_preferences

    data = load_preferences(
        compose_toy(
            "dataset.num_pairs=32", "dataset.eval_samples=8", "dataset.pair_source=sft", f"model.path={saved_model}"
        )
    )
    assert len(data.train) == 32 and len(data.eval) == 8
    assert in_domain_rate(data) < 0.5  # the random model's own samples, unlike the process's


def test_auto_pairs_come_from_the_model_being_aligned_when_there_is_one(saved_model):
    from trustregion.data import load_preferences

    with_model = load_preferences(
        compose_toy("dataset.num_pairs=32", "dataset.eval_samples=8", f"model.path={saved_model}")
    )
    without = load_preferences(compose_toy("dataset.num_pairs=32", "dataset.eval_samples=8"))
    assert in_domain_rate(with_model) < 0.5 and in_domain_rate(without) == 1.0


def test_sft_pairs_without_a_model_path_is_one_config_error():
    from trustregion.data import load_preferences

    with pytest.raises(ConfigError, match=r"dataset.pair_model is null but dataset.pair_source=sft: set model.path"):
        load_preferences(compose_toy("dataset.pair_source=sft"))


def test_more_successors_than_symbols_is_one_config_error():
    from trustregion.data import load_preferences

    with pytest.raises(
        ConfigError,
        match=r"dataset.successors=30 is invalid: set dataset.successors to an integer in \[1, "
        r"dataset.vocab=24\]",
    ):
        load_preferences(compose_toy("dataset.successors=30"))
