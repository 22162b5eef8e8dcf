"""Bad data gives one error line naming the file (and row or line where there is one) and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import compose
from trustregion.data import load_preferences
from trustregion.errors import ConfigError, DataError

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast

CONF = Path(__file__).resolve().parents[1] / "conf"
FIX = Path(__file__).resolve().parent / "fixtures"
BAD = FIX / "bad"
SKIP_HINT = "(fix the row, or set dataset.on_bad_row=skip to drop bad rows)"


def compose_cfg(*overrides: str):
    return compose(*overrides)


def load_error(*overrides: str) -> str:
    with pytest.raises(DataError) as e:
        load_preferences(compose_cfg(*overrides).dataset)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_file_names_the_path_and_the_option():
    assert load_error("dataset=local", f"dataset.path={FIX}/nope.jsonl") == (
        f"dataset.path={FIX}/nope.jsonl: no such file or directory; set dataset.path to an existing data file"
    )


def test_missing_data_file_names_the_file():
    assert load_error("dataset=hh", "dataset.path=null", f"dataset.data_files={{train:{FIX}/nope.jsonl}}") == (
        f"dataset.data_files={FIX}/nope.jsonl: no such file; set dataset.data_files to an existing data file"
    )


def test_a_missing_eval_split_is_held_out_of_the_train_split_with_a_note(capsys, caplog):
    caplog.set_level("INFO", logger="trustregion")
    data = load_preferences(
        compose_cfg(
            "dataset=hh",
            "dataset.path=null",
            "dataset.eval_samples=4",
            f"dataset.data_files={{train:{FIX}/hh/train.jsonl}}",
        ).dataset
    )
    assert len(data.eval) == 4 and len(data.train) == 32 - 4
    assert data.report.notes == [
        "dataset.eval_split=test is not in the data (dataset.data_files has no split 'test' (it has train); set "
        "dataset.split / dataset.eval_split to one it has): holding out rows of 'train' for evaluation instead; "
        "set dataset.eval_split=null to say so"
    ]
    said = capsys.readouterr().out + caplog.text  # the console, or logging where handlers are set (Hydra, pytest)
    assert said.count("note: dataset.eval_split=test is not in the data") == 1


def test_a_single_file_without_the_eval_split_holds_out_rows_of_its_own():
    data = load_preferences(
        compose_cfg(
            "dataset=local",
            f"dataset.path={FIX}/tldr/pairs_train.jsonl",
            "dataset.eval_split=validation",
            "dataset.eval_samples=3",
        ).dataset
    )
    assert len(data.eval) == 3 and "dataset.eval_split=validation is not in the data" in data.report.notes[0]


def test_missing_train_split_names_the_split():
    message = load_error("dataset=local", f"dataset.path={FIX}/tldr/pairs_train.jsonl", "dataset.split=validation")
    assert message.startswith(f"dataset.path={FIX}/tldr/pairs_train.jsonl: no split 'validation'")
    assert message.endswith("set dataset.split / dataset.eval_split to one it has")


def test_missing_column_names_it_and_the_field_option_to_set():
    assert load_error("dataset=local", f"dataset.path={BAD}/missing_column.jsonl") == (
        f"{BAD}/missing_column.jsonl: no column 'prompt' (columns: question, chosen, rejected); "
        "set dataset.prompt_field to the column that holds the prompt"
    )


def test_list_where_a_string_is_expected_names_the_row_and_field():
    assert load_error("dataset=local", f"dataset.path={BAD}/list_for_string.jsonl") == (
        f"{BAD}/list_for_string.jsonl, row 1: field 'chosen' is a list, expected a string {SKIP_HINT}"
    )


def test_whitespace_only_response_names_the_row():
    assert load_error("dataset=local", f"dataset.path={BAD}/whitespace_response.jsonl") == (
        f"{BAD}/whitespace_response.jsonl, row 1: field 'chosen' is empty {SKIP_HINT}"
    )


def test_identical_chosen_and_rejected_names_the_row():
    assert load_error("dataset=local", f"dataset.path={BAD}/identical.jsonl") == (
        f"{BAD}/identical.jsonl, row 1: 'chosen' and 'rejected' are identical {SKIP_HINT}"
    )


def test_json_with_bytes_that_are_not_utf8_names_the_row_and_field():
    assert load_error("dataset=local", f"dataset.path={BAD}/non_utf8.jsonl") == (
        f"{BAD}/non_utf8.jsonl, row 1: field 'prompt' holds bytes that are not UTF-8 "
        "(re-save the file as UTF-8, or set dataset.on_bad_row=skip to drop bad rows)"
    )


def test_json_rows_that_are_not_utf8_are_skipped_and_counted_with_on_bad_row_skip():
    data = load_preferences(
        compose_cfg("dataset=local", f"dataset.path={BAD}/non_utf8.jsonl", "dataset.on_bad_row=skip").dataset
    )
    assert (data.report.kept, data.report.skipped) == (1, 1)


def test_csv_with_bytes_that_are_not_utf8_names_the_line(tmp_path):
    (tmp_path / "pairs.csv").write_bytes(b"prompt,chosen,rejected\nSay hi.,Hi!,No.\nSay h\xe9llo.,Hello!,No.\n")
    message = load_error("dataset=local", f"dataset.path={tmp_path}/pairs.csv")
    assert message.startswith(f"{tmp_path}/pairs.csv, line 3: bytes that are not UTF-8")
    assert message.endswith("re-save the file as UTF-8")


def test_hub_name_without_network_says_to_use_a_local_copy(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = load_error("dataset=hh")
    assert message.startswith("dataset.path=Anthropic/hh-rlhf: cannot reach the hub")
    assert message.endswith("download it where there is network and set dataset.path to the local copy")


def test_dataset_smaller_than_one_batch_stops_training_with_one_line(tmp_path):
    from trustregion.train import train

    cfg = compose_cfg(
        "dataset=local",
        f"dataset.path={FIX}/tldr/pairs_train.jsonl",
        "logger=none",
        "trainer.batch_size=64",
        "model.hidden_size=32",
        "model.num_layers=1",
    )
    with pytest.raises(ConfigError) as e:
        train(cfg, tmp_path)
    assert str(e.value) == (
        "trainer.batch_size=64 (x 1 processes) exceeds the 20 training pairs; lower trainer.batch_size or use more data"
    )


def test_skipped_rows_are_logged_by_training(tmp_path):
    from trustregion.train import train

    cfg = compose_cfg(
        "dataset=hh",
        f"dataset.path={FIX}/hh/bad_rows.jsonl",
        "dataset.eval_split=null",
        "dataset.on_bad_row=skip",
        "dataset.eval_samples=1",
        "logger=none",
        "trainer.batch_size=2",
        "trainer.max_steps=1",
        "trainer.save_models=false",
        "model.hidden_size=32",
        "model.num_layers=1",
        "dataset.max_length=48",
        "dataset.max_prompt_length=32",
    )
    train(cfg, tmp_path)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["data/skipped_rows"] == 4  # every bad row of the file, held-out ones included


def test_the_prompt_limit_of_a_preset_follows_max_length():
    cfg = compose_cfg("dataset=hh", "dataset.max_length=256")
    assert cfg.dataset.max_prompt_length == 128  # half of max_length, however it is set
