"""Checks on preference rows: every bad row is named by source and row, then skipped or fatal.

A source turns each raw row into a clean one with a ``convert`` function that raises ``BadRow`` with
the reason; ``clean_rows`` applies it, then the checks every source shares (types, empty responses,
identical pairs, bytes that are not UTF-8), and counts what it drops in a ``RowReport``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from datasets import Dataset

from trustregion.errors import DataError

FIELDS = ("prompt", "chosen", "rejected")
_BATCH = 512


class BadRow(Exception):
    """Raised by a source's row converter: the message says what is wrong with the row."""


class NotUTF8:
    """Stands in for a row whose stored text is not valid UTF-8 (``datasets`` fails on reading it)."""

    def __init__(self, column: str | None) -> None:
        self.column = column


@dataclass
class RowReport:
    """What ``clean_rows`` kept and why it dropped the rest (``skipped`` counts train and eval rows)."""

    kept: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    first: str | None = None  # the first problem, as a message
    eval_kept: int = 0
    eval_skipped: int = 0
    notes: list[str] = field(default_factory=list)  # what the loader decided for the user (a missing split, ...)

    def add_eval(self, other: RowReport) -> None:
        """Fold the eval split's report into this one (its skips count towards ``skipped``)."""
        self.eval_kept += other.kept
        self.eval_skipped += other.skipped
        self.skipped += other.skipped
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.first = self.first or other.first


def as_text(value: object, column: str) -> str:
    """``value`` as a string, or ``BadRow`` saying that field ``column`` is missing or of another type."""
    if value is None:
        raise BadRow(f"missing field '{column}'")
    if not isinstance(value, str):
        raise BadRow(f"field '{column}' is a {type(value).__name__}, expected a string")
    return value


def text_field(row: dict, name: str, column: str | None = None) -> str:
    """``row[name]`` as a string, or ``BadRow`` saying it is missing or of another type."""
    return as_text(row.get(name), column or name)


def row_problem(row: dict, fields: tuple[str, ...] = FIELDS) -> str | None:
    """Why ``row`` is not a usable preference pair, or None."""
    for name in fields:
        try:
            as_text(row.get(name), name)
        except BadRow as e:
            return str(e)
        if "\ufffd" in row[name]:
            return f"field '{name}' holds bytes that are not UTF-8"
    for name in fields[1:]:
        if not row[name].strip():
            return f"field '{name}' is empty"
    if len(fields) >= 3 and row[fields[1]] == row[fields[2]]:
        return f"'{fields[1]}' and '{fields[2]}' are identical"
    return None


def _undecodable_column(ds: Dataset, i: int) -> str | None:
    for column in ds.column_names:
        try:
            ds.select_columns([column])[i]
        except UnicodeDecodeError:
            return column
    return None


def iter_rows(ds: Dataset | Sequence[dict], order: Optional[Sequence[int]] = None) -> Iterator[tuple[int, Any]]:
    """(row number, row) in ``order`` (default: file order); a row ``datasets`` cannot decode comes as ``NotUTF8``."""
    if not isinstance(ds, Dataset):
        for i in range(len(ds)) if order is None else order:
            yield i, ds[i]
        return
    order = list(range(len(ds))) if order is None else list(order)
    for start in range(0, len(order), _BATCH):
        idx = order[start : start + _BATCH]
        try:
            batch = ds[idx] if idx != list(range(idx[0], idx[0] + len(idx))) else ds[idx[0] : idx[0] + len(idx)]
        except UnicodeDecodeError:
            for i in idx:
                try:
                    yield i, ds[i]
                except UnicodeDecodeError:
                    yield i, NotUTF8(_undecodable_column(ds, i))
            continue
        keys = list(batch)
        for j, i in enumerate(idx):
            yield i, {k: batch[k][j] for k in keys}


def clean_rows(
    rows: Iterable[dict] | Dataset,
    source: str,
    on_bad_row: str,
    fields: tuple[str, ...] = FIELDS,
    convert: Optional[Callable[[dict], dict]] = None,
    order: Optional[Sequence[int]] = None,
    limit: Optional[int] = None,
) -> tuple[list[dict], RowReport]:
    """Keep the good rows; on a bad one raise (``on_bad_row=error``) or count and skip it.

    ``convert`` maps a raw row to a clean one (raising ``BadRow``); ``order`` visits rows in that order
    (a seeded shuffle) and ``limit`` stops after that many good rows, so unvisited rows are not read.
    Clean rows keep ``fields`` plus any extra keys ``convert`` adds.
    """
    kept, report = [], RowReport()
    on_bad_row = str(getattr(on_bad_row, "value", on_bad_row))
    source_rows = rows if isinstance(rows, (Dataset, list, tuple)) else list(rows)
    for i, raw in iter_rows(source_rows, order):
        if limit is not None and len(kept) >= limit:
            break
        if isinstance(raw, NotUTF8):
            where = f"field '{raw.column}'" if raw.column else "the row"
            problem = f"{where} holds bytes that are not UTF-8"
            row = None
        else:
            try:
                row = convert(raw) if convert is not None else raw
                problem = row_problem(row, fields)
            except BadRow as e:
                row, problem = None, str(e)
        if problem is None:
            extra = [k for k in row if k not in fields] if convert is not None else []
            kept.append({k: row[k] for k in (*fields, *extra)})
            continue
        message = f"{source}, row {i}: {problem}"
        if on_bad_row == "error":
            fix = "re-save the file as UTF-8" if "UTF-8" in problem else "fix the row"
            raise DataError(f"{message} ({fix}, or set dataset.on_bad_row=skip to drop bad rows)")
        report.skipped += 1
        report.reasons[problem] = report.reasons.get(problem, 0) + 1
        report.first = report.first or message
    report.kept = len(kept)
    return kept, report
