"""Preference pairs from files or the hub (``dataset=local``, alias ``jsonl``), and the loading helpers
every file-backed source shares: one split from a path, hub name or ``save_to_disk`` dir; schema checks;
seeded shuffling, ``max_samples`` and the held-out eval rows.

Local JSON-lines files are scanned before ``datasets`` reads them (``jsonl_scan``): bad lines are reported
with the bad rows, by file and 1-based line, and ``on_bad_row=skip`` loads only the good lines. Every bad
row the run reads is reported at once, in file order; a directory's data files that no split reads are
named in a warning.
"""

from __future__ import annotations

import glob
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
from datasets import Dataset
from omegaconf import OmegaConf

from trustregion.config import DatasetConfig
from trustregion.console import say
from trustregion.data import PreferenceData, Source
from trustregion.data.jsonl_scan import ScannedFile, is_json_array, is_json_lines, scan, write_good_lines
from trustregion.data.rows import (
    FIELDS,
    BadRow,
    Places,
    Problem,
    RowReport,
    bad_rows_error,
    clean_rows,
    text_field,
)
from trustregion.errors import ConfigError, DataError
from trustregion.schema import at_least, one_of, or_null, setting


@dataclass
class FileDatasetConfig(DatasetConfig):
    """Local files or a hub dataset through ``datasets.load_dataset``, with field-name mapping."""

    name: str = "local"
    path: Optional[str] = setting(None, "a local file or dir, a save_to_disk dir, or a hub dataset name")
    data_files: Optional[Any] = setting(None, "a file, a list, or {split: file(s)}; read instead of path's files")
    subset: Optional[str] = setting(None, "the hub dataset's config name (load_dataset's second argument)")
    format: Optional[str] = setting(
        None,
        "json (a JSON array or JSON lines), jsonl, parquet, arrow, csv or tsv; null: from the file name",
        or_null(one_of("json", "jsonl", "parquet", "arrow", "csv", "tsv")),
    )
    split: str = setting("train", "the split trained on")
    eval_split: Optional[str] = setting(None, "the held-out split; null: hold out eval_samples rows of split (seeded)")
    prompt_field: str = setting("prompt", "the column holding the prompt")
    chosen_field: str = setting("chosen", "the column holding the chosen (preferred) response")
    rejected_field: str = setting("rejected", "the column holding the rejected response")
    cache_dir: Optional[str] = setting(
        "~/.cache/trustregion", "where tokenized rows are kept, keyed by the data, tokenizer and lengths; null: none"
    )
    num_proc: Optional[int] = setting(
        None, "processes for tokenization (datasets.map); null: one", or_null(at_least(1))
    )
    group_by_length: bool = setting(False, "batches of rows of similar length, to cut padding")


_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "tsv"}
# What datasets' builder each format is read with, and with what options (tsv: csv with tabs).
_BUILDERS = {"json": ("json", {}), "jsonl": ("json", {}), "parquet": ("parquet", {}), "arrow": ("arrow", {}),
             "csv": ("csv", {}), "tsv": ("csv", {"delimiter": "\t"})}  # fmt: skip


def _format_of(path: str, explicit: str | None) -> str:
    """The format a file is read as (``json`` for JSON lines too): ``dataset.format``, else its name's suffix."""
    if explicit:
        return "json" if explicit == "jsonl" else explicit
    for suffix in reversed(Path(path).suffixes):
        if suffix in _FORMATS:
            return _FORMATS[suffix]
    raise ConfigError(
        f"dataset.path={path}: cannot tell the file format; set dataset.format to json, parquet, arrow, csv or tsv"
    )


def _read_files(fmt: str, data_files: Any, split: str) -> Dataset:
    """``datasets.load_dataset`` with the builder and options of ``fmt``; a tab-separated file read as CSV is named
    as such (pandas sees one column whose name holds the tabs)."""
    builder, options = _BUILDERS[fmt]
    ds = datasets.load_dataset(builder, data_files=data_files, split=split, **options)
    if fmt == "csv" and any("\t" in name for name in ds.column_names):
        first = _local_files(data_files)[0]
        raise DataError(f"{first}: its columns are separated by tabs, not commas; set dataset.format=tsv")
    return ds


def _local_files(data_files: Any) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict) or hasattr(data_files, "values"):
        return [f for v in data_files.values() for f in _local_files(v)]
    return [str(f) for f in data_files]


def _check_files_exist(data_files: Any, field_name: str) -> None:
    for f in _local_files(data_files):
        if "://" in f or glob.has_magic(f):
            continue
        if not os.path.exists(os.path.expanduser(f)):
            raise DataError(f"{field_name}={f}: no such file; set {field_name} to an existing data file")


def _first_non_utf8(files: list[str]) -> tuple[str, int] | None:
    """(file, 1-based line) of the first line that is not valid UTF-8 in local text files."""
    for f in files:
        path = os.path.expanduser(f)
        if not os.path.isfile(path) or _format_of(path, None) in ("parquet", "arrow"):
            continue
        with open(path, "rb") as handle:
            for n, line in enumerate(handle, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return f, n
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class MissingSplit(DataError):
    """The source has no split of that name (a single file has only ``train``)."""


@dataclass
class Split:
    """One split as read: its rows (None where no line was good), where each row is in the files, the bad
    lines the scan found, and a note naming a directory's data files that no split reads."""

    ds: Optional[Dataset]
    places: Places
    problems: list[Problem] = field(default_factory=list)
    ignored_note: Optional[str] = None

    @property
    def rows(self) -> int:
        return 0 if self.ds is None else len(self.ds)


@dataclass(frozen=True)
class DataLocation:
    """Where a split's rows are: ``path`` (a file, a dir, a ``save_to_disk`` dir or a hub name) or ``data_files``, read
    as ``fmt``, ``subset`` of a hub dataset; ``field_name`` is the config key that errors name."""

    path: str | None
    data_files: Any = None
    fmt: str | None = None
    subset: str | None = None
    field_name: str = "dataset.path"

    @classmethod
    def of(cls, cfg) -> DataLocation:
        """The location a dataset config names."""
        return cls(cfg.path, cfg.data_files, cfg.format, cfg.subset)


def load_split(
    path: str | None,
    data_files: Any,
    split: str,
    fmt: str | None,
    field_name: str = "dataset.path",
    subset: str | None = None,
) -> Dataset:
    """One split from a local file, a directory of files, a ``save_to_disk`` directory, or a hub name.

    Every failure is one ``DataError``/``ConfigError`` line naming the file or split and the fix; bad lines
    of a JSON-lines file fail too (``read_split`` gives them, with the good rows).
    """
    read = read_split(DataLocation(path, data_files, fmt, subset, field_name), split)
    if read.problems:
        raise bad_rows_error(read.problems)
    return read.ds


def read_split(where: DataLocation, split: str, source: str | None = None, rank: int = 0) -> Split:
    """One split with the bad lines of its local JSON-lines files set aside (see ``load_split``).

    ``source`` names the split where rows have no file line (``rank`` orders its problems after another
    split's). Files that are empty or hold only blank lines are a ``DataError``, not a bad row.
    """
    path, data_files, fmt, subset, field_name = where.path, where.data_files, where.fmt, where.subset, where.field_name
    if not path and not data_files:
        raise ConfigError(
            f"{field_name} is not set: set it to a data file (json/jsonl/parquet/arrow), "
            f"a save_to_disk dir or a hub name"
        )
    if OmegaConf.is_config(data_files):
        data_files = OmegaConf.to_container(data_files)
    local = os.path.expanduser(path) if path else None
    what = path or data_files
    if data_files:
        field_name, what = "dataset.data_files", data_files
        if isinstance(data_files, dict) and split in data_files:
            what = data_files[split]
    places = Places(source or f"{field_name}={what}", rank=rank)
    try:
        located, ignored_note = _split_files(path, local, data_files, split, subset, field_name)
        scans = _scan_split(located, fmt, field_name) if located else None
        if scans is None:
            return Split(_load(path, local, data_files, split, fmt, subset, field_name), places, [], ignored_note)
        problems = [
            Problem(s.name, f"line {b.line}", (rank, i, b.line), b.reason, b.detail)
            for i, s in enumerate(scans)
            for b in s.bad
        ]
        files = [s.path for s in scans]
        # Each split from its own files (a directory's other splits may hold bad lines), the bad lines left out
        ds = _load_good_lines(scans) if problems else datasets.load_dataset("json", data_files=files, split="train")
        lines = [(i, line) for i, s in enumerate(scans) for line in s.rows]
        if ds is not None and len(lines) == len(ds):  # else name rows by number: never a wrong line
            places = Places(places.source, tuple(s.name for s in scans), lines, rank)
        return Split(ds, places, problems, ignored_note)
    except (ConfigError, DataError):
        raise
    except (KeyError, ValueError) as e:
        if "split" in str(e).lower() or isinstance(e, KeyError):
            raise MissingSplit(
                f"{field_name}={what}: no split '{split}' ({_first_line(e)}); "
                f"set dataset.split / dataset.eval_split to one it has"
            ) from e
        raise DataError(f"{field_name}={what}: cannot read it ({_first_line(e)})") from e
    except ConnectionError as e:
        raise DataError(
            f"{field_name}={path}: cannot reach the hub ({_first_line(e)}); download it where there is "
            f"network and set {field_name} to the local copy"
        ) from e
    except Exception as e:  # datasets wraps parse errors in several exception types
        cause = e.__cause__ or e
        if isinstance(cause, UnicodeDecodeError):
            bad = _first_non_utf8(_local_files(data_files or local))
            where = f"{bad[0]} line {bad[1]}" if bad else f"{field_name}={what}"
            raise DataError(
                f"{where}: bytes that are not UTF-8 ({_first_line(cause)}); re-save the file as UTF-8"
            ) from e
        raise DataError(f"{field_name}={what}: cannot read it ({type(cause).__name__}: {_first_line(cause)})") from e


def _load(
    path: str | None, local: str | None, data_files: Any, split: str, fmt: str | None, subset: str | None, field_name
) -> Dataset:
    """The split as ``datasets`` reads it (load_dataset / load_from_disk), with no scan."""
    if data_files:  # the files exist and the split is there: _split_files checked
        if isinstance(data_files, dict):  # each split on its own, so each infers its own schema
            data_files = data_files[split]
            first = _local_files(data_files)[0]
            return _read_files(_format_of(first, fmt), data_files, "train")
        first = _local_files(data_files)[0]
        return _read_files(_format_of(first, fmt), data_files, split)
    if os.path.isdir(local) and (Path(local) / "dataset_dict.json").exists():
        saved = datasets.load_from_disk(local)
        if split not in saved:
            raise MissingSplit(
                f"{field_name}={path}: no split '{split}' (it has {', '.join(saved)}); "
                f"set dataset.split / dataset.eval_split to one it has"
            )
        return saved[split]
    if os.path.isdir(local) and (Path(local) / "dataset_info.json").exists():
        return datasets.load_from_disk(local)
    if os.path.isfile(local):
        return _read_files(_format_of(local, fmt), local, split)
    if os.path.isdir(local):
        return datasets.load_dataset(local, subset, split=split)
    if path.startswith((".", "/", "~")) or Path(path).suffix in _FORMATS:
        raise DataError(f"{field_name}={path}: no such file or directory; set {field_name} to an existing data file")
    return datasets.load_dataset(path, subset, split=split)


def _split_files(
    path: str | None, local: str | None, data_files: Any, split: str, subset: str | None, field_name: str
) -> tuple[Optional[list[tuple[str, str]]], Optional[str]]:
    """(file to open, name for messages) of each local file the split reads, or None where that is not known
    here (hub names, ``save_to_disk`` dirs, globs, a split the source lacks); and the ignored-files note."""
    if data_files:
        _check_files_exist(data_files, field_name)
        if isinstance(data_files, dict):
            if split not in data_files:
                raise MissingSplit(
                    f"dataset.data_files has no split '{split}' (it has {', '.join(data_files)}); "
                    f"set dataset.split / dataset.eval_split to one it has"
                )
            chosen = data_files[split]
        elif split == "train":
            chosen = data_files
        else:
            return None, None
        names = _local_files(chosen)
        if any("://" in f or glob.has_magic(f) for f in names):
            return None, None
        return [(os.path.expanduser(f), f) for f in names], None
    if os.path.isfile(local):
        return ([(local, path)] if split == "train" else None), None
    if not os.path.isdir(local) or any((Path(local) / f).exists() for f in ("dataset_dict.json", "dataset_info.json")):
        return None, None
    resolved = datasets.load_dataset_builder(local, subset).config.data_files or {}
    by_split = {str(k): list(v) for k, v in resolved.items()}
    note = _ignored_note(path, local, by_split, field_name)
    if split not in by_split:
        return None, note
    return [(f, os.path.join(path, os.path.relpath(f, local))) for f in by_split[split]], note


def _ignored_note(path: str, local: str, by_split: dict[str, list[str]], field_name: str) -> Optional[str]:
    """A line naming the data files in directory ``path`` that no split reads, or None."""
    read = {os.path.realpath(f) for files in by_split.values() for f in files}
    ignored = []
    for root, dirs, names in os.walk(local):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(names):
            full = os.path.join(root, name)
            if name.startswith((".", "__")) or name in datasets.data_files.FILES_TO_IGNORE:
                continue
            if any(s in _FORMATS for s in Path(name).suffixes) and os.path.realpath(full) not in read:
                ignored.append(os.path.relpath(full, local))
    if not ignored:
        return None
    shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
    splits = "; ".join(
        f"{split}: {', '.join(os.path.relpath(f, local) for f in files)}" for split, files in by_split.items()
    )
    verb = "is" if len(ignored) == 1 else "are"
    return (
        f"{field_name}={path}: {shown} {verb} not read, as no split is named in the file name (read: {splits}); "
        f"put the split in the name (e.g. train-extra.jsonl) to read it, or move it out of the directory"
    )


def _scan_split(files: list[tuple[str, str]], fmt: str | None, field_name: str) -> Optional[list[ScannedFile]]:
    """The scans of the split's files where all are local JSON lines, else None; an empty file, or files of
    blank lines only, are a ``DataError`` (``datasets`` says "StopIteration" or "corresponds to no data")."""
    for opened, name in files:
        if os.path.isfile(opened) and os.path.getsize(opened) == 0:
            raise DataError(
                f"{name}: the file is empty (0 bytes); write the rows into it, or set {field_name} to the "
                f"file that holds them"
            )
    for opened, name in files:
        if is_json_array(opened):
            say(f"note: {name} is one JSON array, not JSON lines (one object per line): read as JSON")
    if not all(_format_of(opened, fmt) == "json" and is_json_lines(opened) for opened, _ in files):
        return None
    scans = [scan(opened, name) for opened, name in files]
    if not any(s.rows or s.bad for s in scans):
        names = ", ".join(name for _, name in files)
        raise DataError(
            f"{names}: only blank lines, no rows; write one JSON object per line into it, or set {field_name} "
            f"to the file that holds the rows"
        )
    return scans


def _load_good_lines(scans: list[ScannedFile]) -> Optional[Dataset]:
    """The good lines of the files, read by ``datasets`` from filtered copies (None where no line is good)."""
    if not any(s.rows for s in scans):
        return None
    with tempfile.TemporaryDirectory(prefix="trustregion-good-lines-") as tmp:
        copies = []
        for i, s in enumerate(scans):
            if s.rows:
                copies.append(os.path.join(tmp, f"{i}.jsonl"))
                write_good_lines(s, copies[-1])
        return datasets.load_dataset(
            "json", data_files=copies, split="train", cache_dir=os.path.join(tmp, "cache"), keep_in_memory=True
        )


def source_name(cfg, split: str) -> str:
    """How error messages name one split of the data: its file (or files), or the path and split."""
    data_files = OmegaConf.to_container(cfg.data_files) if OmegaConf.is_config(cfg.data_files) else cfg.data_files
    if data_files:
        if isinstance(data_files, dict) and split in data_files:
            data_files = data_files[split]
        files = _local_files(data_files)
        return files[0] if len(files) == 1 else str(list(files))
    if cfg.path and os.path.isfile(os.path.expanduser(cfg.path)):
        return str(cfg.path)
    return f"{cfg.path} [{split}]"


def require_columns(ds: Dataset, columns: dict[str, str], source: str) -> None:
    """Fail with one line if a column is missing; ``columns`` maps each column to the fix to suggest."""
    for column, fix in columns.items():
        if column not in ds.column_names:
            raise DataError(f"{source}: no column '{column}' (columns: {', '.join(ds.column_names)}); {fix}")


def _shuffled(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def load_rows(
    cfg,
    convert: Callable[[dict], dict],
    columns: Callable[[Dataset], dict[str, str]],
    fields: tuple[str, ...] = FIELDS,
) -> tuple[list[dict], list[dict], RowReport]:
    """(train rows, eval rows, report) of a file-backed source, converted and checked row by row.

    Rows are visited in a seeded shuffle (``dataset.seed``): ``max_samples`` takes the first good ones
    (the same subset every run) and rows past it are not read. With no ``eval_split``, the first
    ``min(eval_samples, rows // 5)`` rows of the shuffle are held out for evaluation. ``columns(ds)``
    names the columns the split must have, each with the fix to suggest. The bad rows read (and every
    bad line of a JSON-lines file) are reported together in file order: one ``DataError`` with
    ``on_bad_row=error``, else skipped and counted in the report.
    """
    source = source_name(cfg, cfg.split)
    train = read_split(DataLocation.of(cfg), cfg.split, source=source)
    if train.ds is not None:
        require_columns(train.ds, columns(train.ds), source)
    order = _shuffled(train.rows, cfg.seed)
    held, note = None, None
    if cfg.eval_split:
        try:
            held_name = source_name(cfg, cfg.eval_split)
            held = read_split(DataLocation.of(cfg), cfg.eval_split, source=held_name, rank=1)
        except MissingSplit as e:
            note = (
                f"dataset.eval_split={cfg.eval_split} is not in the data ({e}): holding out rows of "
                f"'{cfg.split}' for evaluation instead; set dataset.eval_split=null to say so"
            )
    if held is not None:
        if held.ds is not None:
            require_columns(held.ds, columns(held.ds), held_name)
        held_source, held_order, train_order = held, _shuffled(held.rows, cfg.seed + 1), order
    else:
        n_eval = min(cfg.eval_samples, train.rows // 5)
        held_source, held_order, train_order = train, order[:n_eval], order[n_eval:]
    rows, problems = clean_rows(train.ds, train.places, fields, convert, train_order, cfg.max_samples)
    eval_rows, eval_problems = clean_rows(
        held_source.ds, held_source.places, fields, convert, held_order, cfg.eval_samples
    )
    problems += train.problems  # a bad line of a file that also gives eval rows counts as a train row
    eval_problems += held.problems if held is not None else []
    if str(getattr(cfg.on_bad_row, "value", cfg.on_bad_row)) == "error" and (problems or eval_problems):
        raise bad_rows_error(problems + eval_problems)
    report = RowReport.of(len(rows), len(eval_rows), problems, eval_problems)
    for warning in dict.fromkeys(s.ignored_note for s in (train, held) if s is not None and s.ignored_note):
        report.notes.append(warning)
        say(f"warning: {warning}")
    if note:
        report.notes.append(note)
        say(f"note: {note}")
    if not rows:
        raise DataError(
            f"{source}: no usable rows ({report.skipped} bad; first: {report.first}); "
            f"fix the data or the dataset.*_field names"
        )
    return rows, eval_rows, report


def to_dataset(rows: list[dict], fields: tuple[str, ...] = FIELDS) -> Dataset:
    """Rows as a ``Dataset`` (with the ``fields`` columns even when there are no rows)."""
    return Dataset.from_list(rows) if rows else Dataset.from_dict({k: [] for k in fields})


def pairs_data(rows: list[dict], eval_rows: list[dict], report: RowReport) -> PreferenceData:
    """prompt/chosen/rejected rows as ``PreferenceData``."""
    return PreferenceData(train=to_dataset(rows), eval=to_dataset(eval_rows), report=report)


def field_mapper(cfg) -> Callable[[dict], dict]:
    """A converter taking prompt/chosen/rejected from the columns the ``dataset.*_field`` options name."""
    names = {"prompt": cfg.prompt_field, "chosen": cfg.chosen_field, "rejected": cfg.rejected_field}

    def convert(row: dict) -> dict:
        return {k: text_field(row, column) for k, column in names.items()}

    return convert


def mapped_columns(cfg) -> Callable[[Dataset], dict[str, str]]:
    """The columns the ``dataset.*_field`` options name, each with the option to set if it is missing."""

    def columns(_: Dataset) -> dict[str, str]:
        return {
            cfg.prompt_field: "set dataset.prompt_field to the column that holds the prompt",
            cfg.chosen_field: "set dataset.chosen_field to the column that holds the chosen response",
            cfg.rejected_field: "set dataset.rejected_field to the column that holds the rejected response",
        }

    return columns


def load(cfg) -> PreferenceData:
    """prompt/chosen/rejected strings from any file, directory or hub dataset, columns named by ``*_field``."""
    rows, eval_rows, report = load_rows(cfg, field_mapper(cfg), mapped_columns(cfg))
    return pairs_data(rows, eval_rows, report)


__all__ = [
    "FileDatasetConfig",
    "MissingSplit",
    "Split",
    "load_split",
    "read_split",
    "load_rows",
    "require_columns",
    "pairs_data",
    "to_dataset",
    "field_mapper",
    "mapped_columns",
    "source_name",
    "BadRow",
]


SOURCES = (Source("jsonl", load, FileDatasetConfig), Source("local", load, FileDatasetConfig))
