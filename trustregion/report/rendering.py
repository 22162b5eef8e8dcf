"""The one renderer: tables whose columns are data, and the document both reports share (report.md, report.json).

A ``Column`` is declared once: its header, how to read its value from a row and, where report.json keeps it, its key
there; the markdown cell and the JSON value both come from that one reading. A ``Section`` is a heading, a paragraph
saying how to read it, and a table. The gold report and the preference-only report (``sections``) are two lists of
sections laid out by ``markdown`` and ``numbers``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from trustregion.report.statistics import Interval

R = TypeVar("R")
FIGURES = {
    "bands.png": "gold vs KL, mean and 95 % band over seeds, one panel per method and β",
    "heatmap.png": "paired Δ gold at matched KL over α and τ",
    "heatmap_peak.png": "paired Δ peak gold over α and τ",
    "gold_vs_kl.png": "every run",
}


def fmt(x: float | None, digits: int = 3) -> str:
    """A number to ``digits`` decimals; ``-`` for None or NaN."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}f}"


@dataclass(frozen=True)
class Column(Generic[R]):
    """One column: its header, how to read its value from a row (an Interval, a number, a string), its key in
    report.json (``()``: the table alone), and, where the cell says more than the value, how to show it."""

    header: str
    read: Callable[[R], Any]
    key: tuple[str, ...] = ()
    digits: int = 3
    show: Callable[[R, Any], str] | None = None

    def cell(self, row: R) -> str:
        """The markdown cell: ``show`` of the value, else the value formatted by its type."""
        value = self.read(row)
        if self.show is not None:
            return self.show(row, value)
        if isinstance(value, Interval):
            return value.text(self.digits)
        if isinstance(value, float) or value is None:
            return fmt(value, self.digits)
        return str(value)


def _json(value: Any) -> Any:
    return value.to_json() if isinstance(value, Interval) else value


@dataclass
class Table(Generic[R]):
    """Rows under columns; ``name`` keys a row's entry in report.json (a list of entries without it), ``about`` adds
    what report.json says of a row beside its columns."""

    columns: list[Column[R]]
    rows: list[R]
    name: Callable[[R], str] | None = None
    about: Callable[[R], dict[str, Any]] = lambda row: {}

    def markdown(self) -> list[str]:
        lines = ["| " + " | ".join(c.header for c in self.columns) + " |", "|" + "---|" * len(self.columns)]
        return lines + ["| " + " | ".join(c.cell(row) for c in self.columns) + " |" for row in self.rows]

    def record(self, row: R) -> dict[str, Any]:
        """The row's entry in report.json: ``about``, then each keyed column's value at its key."""
        out = dict(self.about(row))
        for column in self.columns:
            if column.key:
                *path, last = column.key
                node = out
                for part in path:
                    node = node.setdefault(part, {})
                node[last] = _json(column.read(row))
        return out

    def numbers(self) -> dict[str, dict] | list[dict]:
        """The table in report.json: entries by ``name``, or a list."""
        if self.name is None:
            return [self.record(row) for row in self.rows]
        return {self.name(row): self.record(row) for row in self.rows}


@dataclass
class Section:
    """A heading, the paragraph saying how to read it, and its table; without rows, the line ``empty`` in its place
    (None: no section at all); with rows, the line ``note`` under it. ``key``: where report.json keeps the table."""

    title: str
    about: str
    table: Table
    key: str = ""
    empty: str | None = None
    note: str | None = None

    def lines(self) -> list[str]:
        """The section in report.md (none where it has no rows and no ``empty`` line)."""
        if not self.table.rows:
            if self.empty is None:
                return []
            body = [self.empty]
        else:
            body = self.table.markdown() + ([] if self.note is None else ["", self.note])
        return ["", f"## {self.title}", ""] + ([self.about, ""] if self.about else []) + body


@dataclass
class Document:
    """A report: the lines under its title (what was reported, how to read it), its sections, and report.json's
    fields beside the sections' tables."""

    head: list[str]
    sections: list[Section]
    fields: dict[str, Any] = field(default_factory=dict)

    def numbers(self) -> dict[str, Any]:
        """report.json: the fields, then each kept section's table."""
        return {**self.fields, **{s.key: s.table.numbers() for s in self.sections if s.key}}


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies under it."""
    try:
        return str(path.resolve().relative_to(root.resolve())) or "."
    except ValueError:
        return str(path)


def written_line(written: Sequence[str]) -> str:
    """The line listing the files a report wrote, the figures with what each shows."""
    figures = [f"`{f}` ({FIGURES[f]})" for f in written if f in FIGURES]
    others = [f"`{f}`" for f in written if f not in FIGURES]
    return "Written: " + ", ".join(["`report.md`", "`report.json`", *others, *figures]) + "."


def markdown(document: Document, skipped: Sequence[tuple[Path, str]], root: Path, written: Sequence[str]) -> str:
    """report.md: the title and head, the sections, then the runs skipped and why, then the files written."""
    lines = ["# Sweep report", "", *document.head]
    for section in document.sections:
        lines += section.lines()
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- `{rel(p, root)}`: {why}" for p, why in skipped]
    return "\n".join([*lines, "", written_line(written), ""])
