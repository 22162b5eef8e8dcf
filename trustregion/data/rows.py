"""Checks on preference rows: every bad row is named by its file and line (or row), then skipped or fatal.

A source turns each raw row into a clean one with a ``convert`` function that raises ``BadRow`` with
the reason; ``clean_rows`` applies it, then the checks every source shares (types, empty responses,
identical pairs, bytes that are not UTF-8), and returns the good rows and a ``Problem`` per bad one.
``bad_rows_error`` turns all of a run's problems into one line, in file order; ``RowReport`` counts what
was dropped and, with the tokenizer's truncation counts, gives the console summary (``summary_lines``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from datasets import Dataset

from trustregion.errors import DataError

if TYPE_CHECKING:
    from trustregion.data.tokenize import TruncationStats

FIELDS = ("prompt", "chosen", "rejected")
_BATCH = 512
LISTED = 10  # bad rows named one by one in an error or the summary; the rest are counted
TRUNCATION_WARNING = 0.10  # the share of truncated rows above which the summary warns


class BadRow(Exception):
    """Raised by a source's row converter: the message says what is wrong with the row."""


class NotUTF8:
    """Stands in for a row whose stored text is not valid UTF-8 (``datasets`` fails on reading it)."""

    def __init__(self, column: str | None) -> None:
        self.column = column


@dataclass(frozen=True)
class Problem:
    """One bad row: its file, its place there ("line 7" of a JSON-lines file, else "row 7"), and what is wrong."""

    file: str
    place: str
    key: tuple  # sorts problems into file order
    reason: str  # the same words for every row with this problem (counted in ``RowReport.reasons``)
    detail: str = ""  # this row's specifics, e.g. where the JSON parser stopped

    @property
    def what(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason

    def message(self) -> str:
        return f"{self.file} {self.place}: {self.what}"


@dataclass
class Places:
    """Where the rows of a loaded split come from: each row's file and 1-based line (local JSON-lines
    files), else its 1-based row number in ``source``. ``rank`` orders splits (train before eval)."""

    source: str
    files: tuple[str, ...] = ()
    lines: Optional[list[tuple[int, int]]] = None  # per row: (index into files, 1-based line)
    rank: int = 0

    def problem(self, i: int, reason: str, detail: str = "") -> Problem:
        """The problem ``reason`` at row ``i`` (0-based) of the loaded split."""
        if self.lines is None:
            return Problem(self.source, f"row {i + 1}", (self.rank, 0, i + 1), reason, detail)
        f, line = self.lines[i]
        return Problem(self.files[f], f"line {line}", (self.rank, f, line), reason, detail)


def _fix(problems: Sequence[Problem]) -> str:
    utf8 = ["UTF-8" in p.reason for p in problems]
    if all(utf8):
        return "re-save the file as UTF-8"
    rows = "the row" if len(problems) == 1 else "the rows"
    return f"fix {rows}" + (" (re-save the file as UTF-8 where bytes are not UTF-8)" if any(utf8) else "")


def listed(problems: Sequence[Problem], limit: int = LISTED) -> str:
    """The first ``limit`` problems as "file line 2: reason; line 5: reason; ... and 3 more" (file named once
    where all are in one file)."""
    one_file = len({p.file for p in problems}) == 1
    items = [f"{p.place}: {p.what}" if one_file and i else p.message() for i, p in enumerate(problems[:limit])]
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(items) + more


def bad_rows_error(problems: Sequence[Problem]) -> DataError:
    """All bad rows of a run as one line, in file order: each named by file and line (or row)."""
    problems = sorted(problems, key=lambda p: p.key)
    fix = f"{_fix(problems)}, or set dataset.on_bad_row=skip to drop bad rows"
    if len(problems) == 1:
        return DataError(f"{problems[0].message()} ({fix})")
    return DataError(f"{len(problems)} bad rows: {listed(problems)} ({fix})")


def _count(problems: Iterable[Problem]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for p in problems:
        reasons[p.reason] = reasons.get(p.reason, 0) + 1
    return reasons


@dataclass
class RowReport:
    """What the loader kept and why it dropped the rest (``skipped`` and ``reasons`` count train and eval)."""

    kept: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    first: str | None = None  # the first problem in file order, as a message
    eval_kept: int = 0
    eval_skipped: int = 0
    notes: list[str] = field(default_factory=list)  # what the loader decided for the user (a missing split, ...)
    eval_reasons: dict[str, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # the first LISTED dropped rows in file order, as messages

    @classmethod
    def of(cls, kept: int, eval_kept: int, problems: Sequence[Problem], eval_problems: Sequence[Problem]) -> RowReport:
        """The report of a load that kept ``kept``/``eval_kept`` rows and dropped these."""
        every = sorted([*problems, *eval_problems], key=lambda p: p.key)
        return cls(
            kept=kept,
            skipped=len(every),
            reasons=_count(every),
            first=every[0].message() if every else None,
            eval_kept=eval_kept,
            eval_skipped=len(eval_problems),
            eval_reasons=_count(eval_problems),
            bad=[p.message() for p in every[:LISTED]],
        )

    def summary_lines(
        self, truncation: Optional[TruncationStats] = None, eval_truncation: Optional[TruncationStats] = None
    ) -> list[str]:
        """Console lines: per split the rows kept, skipped (by reason) and truncated, the skipped rows by file
        and line (the first ``LISTED``), and a warning for a split with more than 10% of its rows truncated."""
        train_reasons = {r: n - self.eval_reasons.get(r, 0) for r, n in self.reasons.items()}
        splits = (
            ("train", self.kept, self.skipped - self.eval_skipped, train_reasons, truncation),
            ("eval", self.eval_kept, self.eval_skipped, self.eval_reasons, eval_truncation),
        )
        lines, warnings = [], []
        for split, kept, skipped, reasons, trunc in splits:
            line = f"data: {split} {kept} kept, {skipped} skipped{_by_reason(reasons)}"
            if trunc is not None and trunc.rows:
                line += f", {truncated(trunc)}"
                warnings += [w for w in [truncation_warning(split, trunc)] if w]
            lines.append(line)
        return lines + self.skipped_lines() + warnings

    def skipped_lines(self) -> list[str]:
        """The skipped rows by file and line (the first ``LISTED``), and how many more."""
        lines = [f"data: skipped {message}" for message in self.bad]
        if self.skipped > len(self.bad):
            lines.append(f"data: skipped {self.skipped - len(self.bad)} more rows, not listed")
        return lines


def truncated(trunc: TruncationStats) -> str:
    """The "N truncated (P%)" of a split's truncation counts."""
    return f"{trunc.truncated_rows} truncated ({trunc.truncated_rows / max(1, trunc.rows):.0%})"


def truncation_warning(split: str, trunc: TruncationStats) -> str | None:
    """A warning line when more than ``TRUNCATION_WARNING`` of a split's rows are truncated, else None."""
    share = trunc.truncated_rows / max(1, trunc.rows)
    if share <= TRUNCATION_WARNING:
        return None
    return (
        f"warning: {share:.0%} of the {split} rows ({trunc.truncated_rows} of {trunc.rows}) are "
        f"truncated, more than {TRUNCATION_WARNING:.0%}: raise dataset.max_length (and "
        "dataset.max_prompt_length for long prompts), or the model learns from cut-off text"
    )


def _by_reason(reasons: dict[str, int], shown: int = 3) -> str:
    counts = sorted(((n, r) for r, n in reasons.items() if n), key=lambda x: -x[0])
    if not counts:
        return ""
    text = ", ".join(f"{n} {r}" for n, r in counts[:shown])
    rest = sum(n for n, _ in counts[shown:])
    return f" ({text}{f', {rest} other' if rest else ''})"


def as_text(value: object, column: str) -> str:
    """``value`` as a string, or ``BadRow`` saying that field ``column`` is missing or of another type."""
    if value is None:
        raise BadRow(f"missing field '{column}'")
    if not isinstance(value, str):
        raise BadRow(f"field '{column}' is {a_kind(value)}, expected a string")
    return value


def a_kind(value: object) -> str:
    """What ``value`` is, in JSON's words where it has them: "a number", "an object", "a list", "null"."""
    if value is None:
        return "null"
    kinds = {bool: "boolean", int: "number", float: "number", dict: "object", str: "string"}
    name = kinds.get(type(value), type(value).__name__)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


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
    rows: Iterable[dict] | Dataset | None,
    places: Places | str,
    fields: tuple[str, ...] = FIELDS,
    convert: Optional[Callable[[dict], dict]] = None,
    order: Optional[Sequence[int]] = None,
    limit: Optional[int] = None,
) -> tuple[list[dict], list[Problem]]:
    """The good rows, and a ``Problem`` for each bad one (the caller raises or skips: ``bad_rows_error``).

    ``convert`` maps a raw row to a clean one (raising ``BadRow``); ``order`` visits rows in that order
    (a seeded shuffle) and ``limit`` stops after that many good rows, so unvisited rows are not read.
    ``places`` (or a source name, numbering rows from 1) names where each row is in the files.
    Clean rows keep ``fields`` plus any extra keys ``convert`` adds.
    """
    places = Places(places) if isinstance(places, str) else places
    kept: list[dict] = []
    problems: list[Problem] = []
    if rows is None:
        return kept, problems
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
        else:
            problems.append(places.problem(i, problem))
    return kept, problems
