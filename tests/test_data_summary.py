"""The data summary the recipe prints: per split kept, skipped (by reason) and truncated rows, the skipped rows
by file and line, and a warning when truncation cuts more than 10% of a split's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import compose
from trustregion.data import load_preferences
from trustregion.data.rows import Places, RowReport
from trustregion.data.tokenize import TruncationStats

pytestmark = pytest.mark.unit

SIX = Path(__file__).resolve().parent / "fixtures" / "bad" / "six_kinds.jsonl"


def report(kept=60, eval_kept=8, train_bad=(("not JSON", 2), ("field 'chosen' is empty", 1)), eval_bad=()):
    places = Places("x.jsonl", ("x.jsonl",), [(0, n) for n in range(1, 100)])
    reasons = [reason for reason, n in train_bad for _ in range(n)]
    eval_reasons = [reason for reason, n in eval_bad for _ in range(n)]
    problems = [places.problem(i, reason) for i, reason in enumerate(reasons)]
    eval_problems = [places.problem(50 + i, reason) for i, reason in enumerate(eval_reasons)]
    return RowReport.of(kept, eval_kept, problems, eval_problems)


def test_the_summary_gives_each_split_kept_skipped_by_reason_and_truncated():
    lines = report().summary_lines(TruncationStats(truncated_rows=5, rows=60), TruncationStats(rows=8))
    assert lines[:2] == [
        "data: train 60 kept, 3 skipped (2 not JSON, 1 field 'chosen' is empty), 5 truncated (8%)",
        "data: eval 8 kept, 0 skipped, 0 truncated (0%)",
    ]


def test_the_summary_names_each_skipped_row_by_file_and_line():
    lines = report().summary_lines()
    assert lines[2:] == [
        "data: skipped x.jsonl line 1: not JSON",
        "data: skipped x.jsonl line 2: not JSON",
        "data: skipped x.jsonl line 3: field 'chosen' is empty",
    ]


def test_the_summary_lists_ten_skipped_rows_and_counts_the_rest():
    lines = report(train_bad=(("not JSON", 14),)).summary_lines()
    assert len([line for line in lines if line.startswith("data: skipped x.jsonl")]) == 10
    assert lines[-1] == "data: skipped 4 more rows, not listed"


def test_the_summary_counts_eval_rows_apart_from_train_rows():
    lines = report(eval_bad=(("'chosen' and 'rejected' are identical", 1),)).summary_lines()
    assert lines[:2] == [
        "data: train 60 kept, 3 skipped (2 not JSON, 1 field 'chosen' is empty)",
        "data: eval 8 kept, 1 skipped (1 'chosen' and 'rejected' are identical)",
    ]


def test_truncation_of_more_than_a_tenth_of_the_rows_is_a_warning_naming_the_knob():
    lines = report().summary_lines(TruncationStats(truncated_rows=7, rows=60))
    assert lines[-1] == (
        "warning: 12% of the train rows (7 of 60) are truncated, more than 10%: raise dataset.max_length "
        "(and dataset.max_prompt_length for long prompts), or the model learns from cut-off text"
    )


def test_truncation_of_a_tenth_of_the_rows_or_less_is_no_warning():
    lines = report().summary_lines(TruncationStats(truncated_rows=6, rows=60))
    assert not [line for line in lines if line.startswith("warning:")]


def test_the_summary_of_a_loaded_file_with_bad_rows_skipped():
    cfg = compose("dataset=local", f"dataset.path={SIX}", "dataset.on_bad_row=skip", "dataset.eval_samples=0")
    lines = load_preferences(cfg.dataset).report.summary_lines()
    assert lines[0] == (
        "data: train 5 kept, 6 skipped (1 not JSON, 1 field 'chosen' is empty, 1 missing field 'rejected', 3 other)"
    )
    assert lines[2] == f"data: skipped {SIX} line 2: not JSON (Expecting ',' delimiter at column 61)"
