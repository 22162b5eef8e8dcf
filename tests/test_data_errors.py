"""Bad data gives one error line naming the file (and row or line where there is one) and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset

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
        f"{BAD}/list_for_string.jsonl line 2: field 'chosen' is a list, expected a string {SKIP_HINT}"
    )


def test_whitespace_only_response_names_the_row():
    assert load_error("dataset=local", f"dataset.path={BAD}/whitespace_response.jsonl") == (
        f"{BAD}/whitespace_response.jsonl line 2: field 'chosen' is empty {SKIP_HINT}"
    )


def test_identical_chosen_and_rejected_names_the_row():
    assert load_error("dataset=local", f"dataset.path={BAD}/identical.jsonl") == (
        f"{BAD}/identical.jsonl line 2: 'chosen' and 'rejected' are identical {SKIP_HINT}"
    )


def test_json_with_bytes_that_are_not_utf8_names_the_row_and_field():
    assert load_error("dataset=local", f"dataset.path={BAD}/non_utf8.jsonl") == (
        f"{BAD}/non_utf8.jsonl line 2: field 'prompt' holds bytes that are not UTF-8 "
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
    assert message.startswith(f"{tmp_path}/pairs.csv line 3: bytes that are not UTF-8")
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


# --- every bad row at once, by file line ---------------------------------------------------------
SIX = BAD / "six_kinds.jsonl"  # six kinds of bad rows among five good ones, and a blank line (not a row)
SIX_BAD = [
    f"{SIX} line 2: not JSON (Expecting ',' delimiter at column 61)",
    f"{SIX} line 4: field 'chosen' is empty",
    f"{SIX} line 6: missing field 'rejected'",
    f"{SIX} line 8: key 'chosen' appears twice",
    f"{SIX} line 9: field 'chosen' is a number, expected a string",
    f"{SIX} line 10: not a JSON object (an array)",
]
SIX_GOOD = ["Say hi.", "Say thanks.", "Say please.", "Say sorry.", "Say welcome."]


def good_pairs(n: int) -> list[str]:
    return [json.dumps({"prompt": f"Say {i}.", "chosen": f" {i}!", "rejected": " No."}) for i in range(n)]


def test_every_bad_row_of_a_file_is_in_one_error_in_file_order_with_1_based_lines():
    message = load_error("dataset=local", f"dataset.path={SIX}")
    listed = "; ".join([SIX_BAD[0], *(m.removeprefix(f"{SIX} ") for m in SIX_BAD[1:])])
    assert message == f"6 bad rows: {listed} (fix the rows, or set dataset.on_bad_row=skip to drop bad rows)"


def test_skip_keeps_exactly_the_good_rows_of_a_file_with_six_kinds_of_bad_rows():
    data = load_preferences(compose_cfg("dataset=local", f"dataset.path={SIX}", "dataset.on_bad_row=skip").dataset)
    assert sorted([*data.train["prompt"], *data.eval["prompt"]]) == sorted(SIX_GOOD)
    assert (data.report.skipped, data.report.bad, data.report.first) == (6, SIX_BAD, SIX_BAD[0])


def test_a_line_that_is_not_json_is_named_by_file_and_line(tmp_path):
    lines = good_pairs(6)
    lines.insert(6, '{"prompt": "Say hi.", "chosen": " Hi!" "rejected": " No."}')
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    assert load_error("dataset=local", f"dataset.path={tmp_path}/x.jsonl") == (
        f"{tmp_path}/x.jsonl line 7: not JSON (Expecting ',' delimiter at column 40) {SKIP_HINT}"
    )


def test_a_line_that_is_not_json_is_skipped_with_on_bad_row_skip(tmp_path):
    (tmp_path / "x.jsonl").write_text("\n".join([*good_pairs(6), "{oops", *good_pairs(2)]) + "\n")
    data = load_preferences(
        compose_cfg("dataset=local", f"dataset.path={tmp_path}/x.jsonl", "dataset.on_bad_row=skip").dataset
    )
    assert (len(data.train) + len(data.eval), data.report.skipped, data.report.reasons) == (8, 1, {"not JSON": 1})


def test_bad_rows_are_reported_in_file_order_not_in_the_shuffled_order(tmp_path):
    lines = good_pairs(40)
    for n in (3, 17, 25, 38):  # 1-based lines, spread so that the seeded shuffle visits them out of order
        lines[n - 1] = json.dumps({"prompt": f"Row {n}.", "chosen": " ", "rejected": " No."})
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    message = load_error("dataset=local", f"dataset.path={tmp_path}/x.jsonl")
    assert message.startswith(
        f"4 bad rows: {tmp_path}/x.jsonl line 3: field 'chosen' is empty; line 17: field 'chosen' is empty; "
        "line 25: field 'chosen' is empty; line 38: field 'chosen' is empty ("
    )


def test_past_ten_bad_rows_the_error_lists_ten_and_counts_the_rest(tmp_path):
    (tmp_path / "x.jsonl").write_text("\n".join([*good_pairs(4), *["[1]"] * 13]) + "\n")
    message = load_error("dataset=local", f"dataset.path={tmp_path}/x.jsonl")
    assert message.startswith(f"13 bad rows: {tmp_path}/x.jsonl line 5: not a JSON object (an array); line 6: ")
    assert "line 14: not a JSON object (an array); and 3 more (fix the rows" in message
    assert "line 15" not in message


def test_bad_rows_of_a_file_without_lines_are_named_by_1_based_row_number(tmp_path):
    rows = [json.loads(line) for line in good_pairs(5)]
    rows[2]["chosen"] = "  "
    Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    assert load_error("dataset=local", f"dataset.path={tmp_path}/pairs.parquet") == (
        f"{tmp_path}/pairs.parquet row 3: field 'chosen' is empty {SKIP_HINT}"
    )


def test_an_empty_file_says_so_and_names_it(tmp_path):
    (tmp_path / "x.jsonl").write_text("")
    assert load_error("dataset=local", f"dataset.path={tmp_path}/x.jsonl") == (
        f"{tmp_path}/x.jsonl: the file is empty (0 bytes); write the rows into it, or set dataset.path to the "
        "file that holds them"
    )


def test_a_file_of_blank_lines_says_it_has_no_rows(tmp_path):
    (tmp_path / "x.jsonl").write_text("\n  \n\n")
    assert load_error("dataset=local", f"dataset.path={tmp_path}/x.jsonl") == (
        f"{tmp_path}/x.jsonl: only blank lines, no rows; write one JSON object per line into it, or set "
        "dataset.path to the file that holds the rows"
    )


def test_a_duplicated_key_is_one_line_naming_the_row(tmp_path):
    lines = [*good_pairs(3), '{"prompt": "Say hi.", "chosen": " Hi!", "chosen": " Hello!", "rejected": " No."}']
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    assert load_error("dataset=local", f"dataset.path={tmp_path}/x.jsonl") == (
        f"{tmp_path}/x.jsonl line 4: key 'chosen' appears twice {SKIP_HINT}"
    )


def test_a_row_with_a_duplicated_key_is_skipped_with_on_bad_row_skip(tmp_path):
    lines = [*good_pairs(5), '{"prompt": "Say hi.", "prompt": "Say hello.", "chosen": " Hi!", "rejected": " No."}']
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    data = load_preferences(
        compose_cfg("dataset=local", f"dataset.path={tmp_path}/x.jsonl", "dataset.on_bad_row=skip").dataset
    )
    assert (len(data.train) + len(data.eval), data.report.bad) == (
        5,
        [f"{tmp_path}/x.jsonl line 6: key 'prompt' appears twice"],
    )


def test_an_empty_chosen_dialogue_of_hh_says_the_field_is_empty(tmp_path):
    lines = open(FIX / "hh/train.jsonl").read().splitlines()[:3]
    lines.append(json.dumps({"chosen": "", "rejected": "\n\nHuman: Hi?\n\nAssistant: Hello."}))
    (tmp_path / "hh.jsonl").write_text("\n".join(lines) + "\n")
    assert load_error("dataset=hh", f"dataset.path={tmp_path}/hh.jsonl", "dataset.eval_split=null") == (
        f"{tmp_path}/hh.jsonl line 4: field 'chosen' is empty {SKIP_HINT}"
    )


def test_data_files_beside_the_split_files_of_a_directory_are_named_in_a_warning(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="trustregion")
    for name in ("train.jsonl", "test.jsonl", "bad_rows.jsonl"):
        (tmp_path / name).write_text("\n".join(good_pairs(10)) + "\n")
    (tmp_path / "README.md").write_text("notes\n")
    data = load_preferences(compose_cfg("dataset=local", f"dataset.path={tmp_path}", "dataset.eval_split=test").dataset)
    warning = (
        f"dataset.path={tmp_path}: bad_rows.jsonl is not read, as no split is named in the file name (read: "
        "train: train.jsonl; test: test.jsonl); put the split in the name (e.g. train-extra.jsonl) to read it, "
        "or move it out of the directory"
    )
    assert data.report.notes == [warning] and (len(data.train), len(data.eval)) == (10, 10)
    said = capsys.readouterr().out + caplog.text
    assert said.count(f"warning: {warning}") == 1


def test_a_bad_line_in_a_directory_split_is_named_by_its_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n".join([*good_pairs(3), "not json", *good_pairs(3)]) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(good_pairs(3)) + "\n")
    assert load_error("dataset=local", f"dataset.path={tmp_path}", "dataset.eval_split=test") == (
        f"{tmp_path}/train.jsonl line 4: not JSON (Expecting value at column 1) {SKIP_HINT}"
    )


def pairs(n: int = 12) -> list[dict]:
    return [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}, really"} for i in range(n)]


def test_one_json_array_saved_as_jsonl_is_read_as_json_with_a_note(tmp_path, caplog):
    caplog.set_level("INFO", logger="trustregion")
    (tmp_path / "pairs.jsonl").write_text(json.dumps(pairs(), indent=1))
    data = load_preferences(compose_cfg("dataset=local", f"dataset.path={tmp_path}/pairs.jsonl").dataset)
    assert len(data.train) + len(data.eval) == 12
    assert "is one JSON array, not JSON lines (one object per line): read as JSON" in caplog.text


def write_tsv(path: Path) -> Path:
    path.write_text(
        "prompt\tchosen\trejected\n" + "".join(f"{r['prompt']}\t{r['chosen']}\t{r['rejected']}\n" for r in pairs())
    )
    return path


def test_a_tsv_file_is_read_with_tabs(tmp_path):
    tsv = write_tsv(tmp_path / "pairs.tsv")
    data = load_preferences(compose_cfg("dataset=local", f"dataset.path={tsv}").dataset)
    assert "bad 0, really" in list(data.train["rejected"]) + list(data.eval["rejected"])


def test_a_tsv_file_read_as_csv_says_to_set_the_format_to_tsv(tmp_path):
    tsv = write_tsv(tmp_path / "pairs.tsv")
    assert load_error("dataset=local", f"dataset.path={tsv}", "dataset.format=csv") == (
        f"{tsv}: its columns are separated by tabs, not commas; set dataset.format=tsv"
    )


def test_an_unknown_format_is_refused_before_anything_is_read():
    from trustregion.config import validate

    with pytest.raises(ConfigError, match=r"^dataset.format=tsvv is invalid: set dataset.format to one of json, "):
        validate(compose_cfg("dataset=local", "dataset.path=x.tsv", "dataset.format=tsvv"))


def test_a_csv_parse_error_is_one_line_and_nothing_else_on_stderr(tmp_path, capfd):
    from trustregion.console import quiet_third_party

    quiet_third_party(False)
    (tmp_path / "bad.csv").write_text("prompt,chosen,rejected\nq1,a,b\nq2,a,b,c,d\nq3,a,b\n")
    line = load_error("dataset=local", f"dataset.path={tmp_path}/bad.csv")
    assert "Expected 3 fields in line 3, saw 5" in line and capfd.readouterr().err == ""


def test_a_files_key_given_to_the_toy_task_names_the_group_option_that_has_it():
    from trustregion.cli.preflight import describe

    overrides = ("dataset.path=pairs.jsonl",)
    with pytest.raises(Exception) as e:
        compose_cfg(*overrides)
    assert describe(e.value, overrides, "config").startswith(
        "dataset.path is not a key of dataset=toy: dataset=local has it (so do "
    )
