"""Data sources on fixture files in each source's own schema: what rows they give, and how they count
the rows they cannot use."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from tests.helpers import compose
from trustregion.data import load_preferences
from trustregion.data.tldr import PROMPT_TEMPLATE
from trustregion.errors import DataError

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast

CONF = Path(__file__).resolve().parents[1] / "conf"
FIX = Path(__file__).resolve().parent / "fixtures"


def dataset_cfg(source: str, *overrides: str):
    return compose(f"dataset={source}", *overrides).dataset


def files(**splits: Path) -> list[str]:
    inner = ",".join(f"{k}:{v}" for k, v in splits.items())
    return ["dataset.path=null", f"dataset.data_files={{{inner}}}"]


def hh(*overrides: str):
    return dataset_cfg("hh", *files(train=FIX / "hh/train.jsonl", test=FIX / "hh/test.jsonl"), *overrides)


def tldr(*overrides: str):
    return dataset_cfg(
        "tldr",
        "dataset.subset=null",
        *files(train=FIX / "tldr/comparisons_train.jsonl", validation=FIX / "tldr/comparisons_validation.jsonl"),
        *overrides,
    )


def ultrafeedback(*overrides: str):
    return dataset_cfg(
        "ultrafeedback",
        *files(
            train_prefs=FIX / "ultrafeedback/train_prefs.parquet", test_prefs=FIX / "ultrafeedback/test_prefs.parquet"
        ),
        *overrides,
    )


# --- HH-RLHF -------------------------------------------------------------------------------------
def test_hh_prompt_runs_through_the_last_shared_assistant_marker():
    data = load_preferences(hh())
    for row in data.train:
        assert row["prompt"].startswith("\n\nHuman:") and row["prompt"].endswith("\n\nAssistant:")
        assert "\n\nHuman:" not in row["chosen"] and "\n\nAssistant:" not in row["chosen"]


def test_hh_prompt_plus_each_response_gives_back_the_original_dialogues():
    import json

    originals = {(r["chosen"], r["rejected"]) for r in map(json.loads, open(FIX / "hh/train.jsonl"))}
    data = load_preferences(hh())
    assert {(r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]) for r in data.train} == originals


def test_hh_multi_turn_dialogue_keeps_earlier_turns_in_the_prompt():
    data = load_preferences(hh())
    multi = [r for r in data.train if r["prompt"].count("\n\nHuman:") == 2]
    assert multi and all(r["prompt"].count("\n\nAssistant:") == 2 for r in multi)


def test_hh_uses_the_test_split_for_evaluation():
    data = load_preferences(hh())
    assert len(data.train) == 32 and len(data.eval) == 8


def test_hh_bad_rows_are_skipped_and_counted_by_reason():
    data = load_preferences(
        dataset_cfg(
            "hh",
            f"dataset.path={FIX}/hh/bad_rows.jsonl",
            "dataset.eval_split=null",
            "dataset.on_bad_row=skip",
            "dataset.eval_samples=0",
        )
    )
    report = data.report
    assert (report.kept, report.skipped) == (4, 4)
    assert set(report.reasons) == {
        "the dialogues differ before the last assistant turn (a response holds a further turn)",
        "no 'Assistant:' turn in the dialogue; is this HH-RLHF data?",
        "field 'chosen' is empty",
        "'chosen' and 'rejected' are identical",
    }


def test_hh_dialogues_differing_before_the_last_turn_fail_naming_file_and_row(tmp_path):
    lines = open(FIX / "hh/train.jsonl").read().splitlines()[:2]
    lines.append(
        '{"chosen": "\\n\\nHuman: Hi?\\n\\nAssistant: Hello!\\n\\nHuman: Bye?\\n\\nAssistant: Bye.", '
        '"rejected": "\\n\\nHuman: Hi?\\n\\nAssistant: Go.\\n\\nHuman: Bye?\\n\\nAssistant: Bye."}'
    )
    (tmp_path / "hh.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load_preferences(dataset_cfg("hh", f"dataset.path={tmp_path}/hh.jsonl", "dataset.eval_split=null"))
    assert str(e.value) == (
        f"{tmp_path}/hh.jsonl line 3: the dialogues differ before the last assistant turn "
        "(a response holds a further turn) (fix the row, or set dataset.on_bad_row=skip "
        "to drop bad rows)"
    )


# --- TL;DR ---------------------------------------------------------------------------------------
def test_tldr_comparisons_build_the_documented_prompt():
    import json

    first = json.loads(open(FIX / "tldr/comparisons_train.jsonl").readline())
    info = first["info"]
    expected = PROMPT_TEMPLATE.format(subreddit=info["subreddit"], title=info["title"], post=info["post"])
    assert expected.startswith(f"SUBREDDIT: r/{info['subreddit']}\nTITLE: ") and expected.endswith("\nTL;DR:")
    data = load_preferences(tldr())
    rows = [r for r in data.train if r["prompt"] == expected] + [r for r in data.eval if r["prompt"] == expected]
    assert len(rows) == 1
    chosen = first["summaries"][first["choice"]]["text"]
    assert rows[0]["chosen"] == " " + chosen.strip()


def test_tldr_news_article_rows_of_the_validation_split_are_counted_as_bad_rows():
    data = load_preferences(tldr("dataset.on_bad_row=skip"))
    assert data.report.eval_skipped == 1 and len(data.eval) == 6
    assert data.report.reasons == {"not a Reddit post (a news article row: info.post is missing)": 1}


def test_tldr_prompt_chosen_rejected_form_is_detected_and_drops_a_repeated_tldr():
    data = load_preferences(
        dataset_cfg(
            "tldr", "dataset.subset=null", f"dataset.path={FIX}/tldr/pairs_train.jsonl", "dataset.eval_split=null"
        )
    )
    row = data.train[0]
    assert row["prompt"].startswith("SUBREDDIT: r/") and row["prompt"].endswith("TL;DR:")
    assert row["chosen"].startswith(" ") and not row["chosen"].startswith(" TL;DR")


def test_tldr_comparisons_and_pairs_forms_give_the_same_pairs():
    from_comparisons = load_preferences(
        dataset_cfg(
            "tldr", "dataset.subset=null", "dataset.eval_split=null", f"dataset.path={FIX}/tldr/comparisons_train.jsonl"
        )
    )
    from_pairs = load_preferences(
        dataset_cfg(
            "tldr", "dataset.subset=null", "dataset.eval_split=null", f"dataset.path={FIX}/tldr/pairs_train.jsonl"
        )
    )
    assert from_comparisons.train.to_list() == from_pairs.train.to_list()


# --- UltraFeedback -------------------------------------------------------------------------------
def test_ultrafeedback_keeps_the_conversation_before_the_answer_and_the_final_answers():
    data = load_preferences(ultrafeedback())
    original = Dataset.from_parquet(str(FIX / "ultrafeedback/train_prefs.parquet"))
    by_question = {r["prompt"]: r for r in original}
    for row in data.train:
        question = next(m["content"] for m in row["prompt_messages"] if m["content"].startswith("Give me tip"))
        source = by_question[question]
        assert row["prompt_messages"] == [{"role": m["role"], "content": m["content"]} for m in source["chosen"][:-1]]
        assert (row["chosen"], row["rejected"]) == (source["chosen"][-1]["content"], source["rejected"][-1]["content"])
        assert row["prompt"].endswith("\n\nAssistant:")  # the plain rendering for tokenizers without a template


def test_ultrafeedback_conversations_that_differ_before_the_answer_are_bad_rows(tmp_path):
    rows = Dataset.from_parquet(str(FIX / "ultrafeedback/train_prefs.parquet")).to_list()[:6]
    rows[2]["rejected"][0]["content"] = "A different question."
    Dataset.from_list(rows).to_parquet(str(tmp_path / "prefs.parquet"))
    data = load_preferences(
        dataset_cfg(
            "ultrafeedback",
            f"dataset.path={tmp_path}/prefs.parquet",
            "dataset.split=train",
            "dataset.eval_split=null",
            "dataset.on_bad_row=skip",
        )
    )
    assert data.report.reasons == {"the conversations differ before the final assistant message": 1}


# --- unpaired KTO --------------------------------------------------------------------------------
def test_kto_unpaired_rows_hold_prompt_completion_and_a_boolean_label():
    data = load_preferences(
        dataset_cfg("kto_unpaired", f"dataset.path={FIX}/kto/unpaired.jsonl", "dataset.eval_split=null")
    )
    assert data.kind == "unpaired"
    assert data.train.column_names == ["prompt", "completion", "label"]
    assert {r["label"] for r in data.train} == {True, False}


def test_kto_unpaired_conversational_rows_keep_prompt_messages_and_the_assistant_content():
    data = load_preferences(
        dataset_cfg("kto_unpaired", f"dataset.path={FIX}/kto/conversational.jsonl", "dataset.eval_split=null")
    )
    row = data.train[0]
    assert row["prompt_messages"][0]["role"] == "user" and not row["completion"].startswith("[")


def test_kto_unpaired_label_that_is_not_boolean_is_a_bad_row(tmp_path):
    (tmp_path / "kto.jsonl").write_text('{"prompt": "Hi?", "completion": " Hello.", "label": "yes"}\n')
    with pytest.raises(DataError, match=r"kto.jsonl line 1: field 'label' is 'yes', expected true or false"):
        load_preferences(dataset_cfg("kto_unpaired", f"dataset.path={tmp_path}/kto.jsonl", "dataset.eval_split=null"))


def test_sft_view_of_unpaired_data_is_the_desirable_rows():
    data = load_preferences(
        dataset_cfg("kto_unpaired", f"dataset.path={FIX}/kto/unpaired.jsonl", "dataset.eval_split=null")
    )
    sft = data.sft_view()
    assert len(sft) == sum(data.train["label"]) and set(sft.column_names) == {"prompt", "response"}


def test_sft_view_of_pairs_is_prompt_and_chosen():
    data = load_preferences(hh())
    sft = data.sft_view()
    assert sft["prompt"] == data.train["prompt"] and sft["response"] == data.train["chosen"]


# --- local files, splits, sampling ---------------------------------------------------------------
def test_local_renames_columns_named_by_the_field_options(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"q": "Hi?", "good": " Hello.", "bad": " Go."}\n' * 2)
    data = load_preferences(
        dataset_cfg(
            "local",
            f"dataset.path={tmp_path}/p.jsonl",
            "dataset.prompt_field=q",
            "dataset.chosen_field=good",
            "dataset.rejected_field=bad",
        )
    )
    assert data.train[0] == {"prompt": "Hi?", "chosen": " Hello.", "rejected": " Go."}


def test_save_to_disk_directory_gives_the_split_asked_for(tmp_path):
    rows = load_preferences(hh()).train.to_list()
    DatasetDict({"train": Dataset.from_list(rows[:20]), "test": Dataset.from_list(rows[20:])}).save_to_disk(
        tmp_path / "d"
    )
    data = load_preferences(dataset_cfg("local", f"dataset.path={tmp_path}/d", "dataset.eval_split=test"))
    assert (len(data.train), len(data.eval)) == (20, 12)


def test_max_samples_takes_the_same_seeded_subset_every_run():
    a = load_preferences(hh("dataset.max_samples=10")).train["prompt"]
    b = load_preferences(hh("dataset.max_samples=10")).train["prompt"]
    other_seed = load_preferences(hh("dataset.max_samples=10", "dataset.seed=1")).train["prompt"]
    assert len(a) == 10 and a == b and a != other_seed


def test_without_an_eval_split_held_out_rows_are_disjoint_from_training_rows():
    data = load_preferences(hh("dataset.eval_split=null", "dataset.eval_samples=5"))
    assert len(data.eval) == 5 and len(data.train) == 27
    assert not set(data.eval["prompt"]) & set(data.train["prompt"])


def test_eval_split_is_capped_at_eval_samples():
    assert len(load_preferences(hh("dataset.eval_samples=3")).eval) == 3
