"""A scan of local JSON-lines files before ``datasets`` reads them: every bad line named by its 1-based number.

``datasets``' JSON reader stops at the first line it cannot parse, naming a byte position or a pyarrow row
("Expected object or value at position 67", "Column(/chosen) was specified twice in row 1"), and
``on_bad_row=skip`` cannot skip such a line. The scan reads every line first. A line that is not JSON, is
JSON but not an object, names a key twice, or holds bytes that are not UTF-8 is a bad line; a blank line
is not a row (``datasets`` passes over it too). Each good line keeps its line number, so the row checks
after loading name rows by their line in the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

_JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class LineProblem:
    line: int  # 1-based
    reason: str  # what is wrong, the same words for every line with this problem
    detail: str = ""  # this line's specifics (where the parser stopped)


@dataclass
class ScannedFile:
    path: str  # as opened
    name: str  # as messages name it (the spelling the user gave)
    rows: list[int] = field(default_factory=list)  # 1-based line numbers of the good lines, in order
    bad: list[LineProblem] = field(default_factory=list)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def _not_utf8(raw: bytes) -> str:
    """The reason for a line with bytes that are not UTF-8, naming the top-level field that holds them."""
    try:
        value = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except ValueError:
        return "bytes that are not UTF-8"
    if isinstance(value, dict):
        for key, text in value.items():
            if isinstance(text, str) and any("\udc80" <= c <= "\udcff" for c in text):
                return f"field '{key}' holds bytes that are not UTF-8"
    return "bytes that are not UTF-8"


def line_problem(raw: bytes) -> tuple[str, str] | None:
    """(reason, detail) of one non-blank line that is not a JSON object, or None for a good line."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")  # else the parser puts an error at the end on a "line 2"
    except UnicodeDecodeError:
        return _not_utf8(raw), ""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        return f"key '{e.key}' appears twice", ""
    except json.JSONDecodeError as e:
        return "not JSON", f"{e.msg} at column {e.colno}"
    except RecursionError:
        return "not JSON", "nested too deeply to parse"
    if not isinstance(value, dict):
        return "not a JSON object", _kind(value)
    return None


def _first_byte(path: str) -> bytes:
    """The first byte that is not blank (nor a BOM) of a file; b"" for an empty one."""
    with open(path, "rb") as handle:
        for raw in handle:
            stripped = raw.removeprefix(_BOM).strip()
            if stripped:
                return stripped[:1]
    return b""


def is_json_array(path: str) -> bool:
    """A local, uncompressed file whose content is one JSON array (rows as ``[{...}, ...]``), whatever its name."""
    if not os.path.isfile(path) or any(s in _COMPRESSED for s in Path(path).suffixes):
        return False
    return _first_byte(path) == b"["


def is_json_lines(path: str) -> bool:
    """A local, uncompressed file of one JSON object per line: a ``.jsonl`` name (not holding one JSON array), or a
    first line that is one."""
    suffixes = Path(path).suffixes
    if not os.path.isfile(path) or any(s in _COMPRESSED for s in suffixes) or is_json_array(path):
        return False
    if suffixes and suffixes[-1] in _JSON_LINES_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    return isinstance(json.loads(raw.removeprefix(_BOM)), dict)
                except ValueError:
                    return False
    return False


def scan(path: str, name: str) -> ScannedFile:
    """The good and bad lines of one JSON-lines file."""
    out = ScannedFile(path, name)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1:
                raw = raw.removeprefix(_BOM)
            if not raw.strip():
                continue
            problem = line_problem(raw)
            if problem is None:
                out.rows.append(number)
            else:
                out.bad.append(LineProblem(number, *problem))
    return out


def write_good_lines(scanned: ScannedFile, dest: str) -> None:
    """A copy of the file holding only its good lines (for ``datasets`` to read when some lines are bad)."""
    good = set(scanned.rows)
    with open(scanned.path, "rb") as src, open(dest, "wb") as out:
        for number, raw in enumerate(src, 1):
            if number in good:
                out.write(raw.removeprefix(_BOM) if number == 1 else raw)
                if not raw.endswith(b"\n"):
                    out.write(b"\n")
