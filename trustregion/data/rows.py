"""Checks on preference rows: every bad row is named by source and row, then skipped or fatal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from trustregion.errors import DataError

FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class RowReport:
    """What ``clean_rows`` kept and why it dropped the rest."""

    kept: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    first: str | None = None  # the first problem, as a message


def row_problem(row: dict, fields: tuple[str, ...] = FIELDS) -> str | None:
    """Why ``row`` is not a usable preference pair, or None."""
    for name in fields:
        if name not in row or row[name] is None:
            return f"missing field '{name}'"
        if not isinstance(row[name], str):
            return f"field '{name}' is a {type(row[name]).__name__}, expected a string"
        if "\ufffd" in row[name]:
            return f"field '{name}' holds bytes that are not UTF-8"
    for name in fields[1:]:
        if not row[name].strip():
            return f"field '{name}' is empty"
    if len(fields) >= 3 and row[fields[1]] == row[fields[2]]:
        return f"'{fields[1]}' and '{fields[2]}' are identical"
    return None


def clean_rows(rows: Iterable[dict], source: str, on_bad_row: str, fields: tuple[str, ...] = FIELDS) -> tuple[list[dict], RowReport]:
    """Keep the good rows; on a bad one raise (``on_bad_row=error``) or count and skip it."""
    kept, report = [], RowReport()
    for i, row in enumerate(rows):
        problem = row_problem(row, fields)
        if problem is None:
            kept.append({k: row[k] for k in fields})
            continue
        message = f"{source}, row {i}: {problem}"
        if on_bad_row == "error":
            raise DataError(f"{message} (fix the row, or set dataset.on_bad_row=skip to drop bad rows)")
        report.skipped += 1
        report.reasons[problem] = report.reasons.get(problem, 0) + 1
        report.first = report.first or message
    report.kept = len(kept)
    return kept, report
