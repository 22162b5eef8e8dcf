"""Preference pairs from files or the hub through ``datasets.load_dataset`` (``dataset=jsonl``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import datasets
from datasets import Dataset
from hydra.core.config_store import ConfigStore

from trustregion.config import DatasetConfig
from trustregion.data import PreferenceData, register
from trustregion.data.rows import RowReport, clean_rows
from trustregion.errors import ConfigError, DataError

@dataclass
class FileDatasetConfig(DatasetConfig):
    """Local files or a hub dataset through ``datasets.load_dataset``, with field-name mapping."""

    name: str = "jsonl"
    path: Optional[str] = None  # hub name, a local file, or a save_to_disk directory
    data_files: Optional[Any] = None
    format: Optional[str] = None  # json | parquet | arrow | csv; inferred from the file name if null
    split: str = "train"
    eval_split: Optional[str] = None
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"


ConfigStore.instance().store(group="dataset", name="base_file", node=FileDatasetConfig)

_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


def _format_of(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    suffixes = Path(path).suffixes
    for suffix in reversed(suffixes):
        if suffix in _FORMATS:
            return _FORMATS[suffix]
    raise ConfigError(f"dataset.path={path}: cannot tell the file format; set dataset.format to json, parquet, arrow or csv")


def load_split(path: str | None, data_files, split: str, fmt: str | None, field_name: str = "dataset.path") -> Dataset:
    """One split from a local file, a ``save_to_disk`` directory, or a hub name, with one-line errors."""
    if not path and not data_files:
        raise ConfigError(f"{field_name} is not set: set it to a data file (json/jsonl/parquet/arrow), a save_to_disk dir or a hub name")
    try:
        if path and os.path.isdir(path) and (Path(path) / "dataset_dict.json").exists():
            return datasets.load_from_disk(path)[split]
        if path and os.path.isdir(path) and (Path(path) / "dataset_info.json").exists():
            return datasets.load_from_disk(path)
        if data_files or (path and os.path.isfile(path)):
            files = data_files or path
            first = files if isinstance(files, str) else next(iter(files.values() if isinstance(files, dict) else files))
            return datasets.load_dataset(_format_of(str(first), fmt), data_files=files, split=split)
        if path and (path.startswith((".", "/", "~")) or Path(path).suffix in _FORMATS):
            raise DataError(f"{field_name}={path}: no such file or directory; set {field_name} to an existing data file")
        return datasets.load_dataset(path, split=split)
    except (ConfigError, DataError):
        raise
    except KeyError as e:
        raise DataError(f"{field_name}={path}: no split {e}; set dataset.split / dataset.eval_split to one it has") from e
    except ValueError as e:
        if "split" in str(e).lower():
            raise DataError(f"{field_name}={path}: {str(e).splitlines()[0]}; set dataset.split to one it has") from e
        raise DataError(f"{field_name}={path or data_files}: cannot read it ({str(e).splitlines()[0]})") from e
    except Exception as e:  # datasets wraps parse errors in several exception types
        cause = e.__cause__ or e
        line = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise DataError(f"{field_name}={path or data_files}: cannot read it ({type(cause).__name__}: {line})") from e


def rename_fields(ds: Dataset, cfg) -> Dataset:
    mapping = {cfg.prompt_field: "prompt", cfg.chosen_field: "chosen", cfg.rejected_field: "rejected"}
    missing = [k for k in mapping if k not in ds.column_names]
    if missing:
        key = {cfg.prompt_field: "prompt_field", cfg.chosen_field: "chosen_field", cfg.rejected_field: "rejected_field"}[missing[0]]
        raise DataError(
            f"dataset.path={cfg.path}: no column '{missing[0]}' (columns: {', '.join(ds.column_names)}); "
            f"set dataset.{key} to the column that holds it"
        )
    return ds.select_columns(list(mapping)).rename_columns({k: v for k, v in mapping.items() if k != v})


def split_eval(rows: list[dict], cfg) -> tuple[list[dict], list[dict]]:
    """Hold out ``eval_samples`` rows, chosen by a seeded shuffle, when the source has no eval split."""
    import random

    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = min(cfg.eval_samples, len(rows) // 5)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


@register("jsonl")
@register("local")
def load(cfg) -> PreferenceData:
    source = cfg.path or str(cfg.data_files)
    train = rename_fields(load_split(cfg.path, cfg.data_files, cfg.split, cfg.format), cfg)
    rows, report = clean_rows(train, source, cfg.on_bad_row)
    if cfg.eval_split:
        held = rename_fields(load_split(cfg.path, cfg.data_files, cfg.eval_split, cfg.format), cfg)
        eval_rows, _ = clean_rows(held, f"{source} [{cfg.eval_split}]", "skip")
    else:
        rows, eval_rows = split_eval(rows, cfg)
    if cfg.max_samples is not None:
        rows = rows[: cfg.max_samples]
    if not rows:
        raise DataError(f"dataset.path={source}: no usable rows; check the file or the dataset.*_field names")
    return PreferenceData(train=Dataset.from_list(rows), eval=Dataset.from_list(eval_rows), report=report)
