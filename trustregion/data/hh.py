"""Anthropic HH-RLHF (``dataset=hh``): whole dialogues split into a shared prompt and two final answers.

Each row holds ``chosen`` and ``rejected`` dialogues ("\\n\\nHuman: ... \\n\\nAssistant: ..."). The
prompt is their shared beginning up to and including its last "\\n\\nAssistant:"; the responses are
what follows (with their leading space). A pair whose dialogues differ before the last assistant turn
(a response would hold another turn), or that has no assistant turn in common, is a bad row.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from datasets import Dataset

from trustregion.data import PreferenceData, Source
from trustregion.data.files import FileDatasetConfig, load_rows, pairs_data
from trustregion.data.rows import BadRow, text_field

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


@dataclass
class HHDatasetConfig(FileDatasetConfig):
    """Anthropic/hh-rlhf from the hub, or a local copy of its files (``dataset.path`` / ``data_files``)."""

    name: str = "hh"
    path: Optional[str] = "Anthropic/hh-rlhf"
    split: str = "train"
    eval_split: Optional[str] = "test"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"


def split_dialogues(chosen: str, rejected: str) -> dict[str, str]:
    """{prompt, chosen, rejected} of one HH pair, or ``BadRow`` saying why it cannot be split."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
        if ASSISTANT not in chosen or ASSISTANT not in rejected:
            raise BadRow(f"no '{ASSISTANT.strip()}' turn in the dialogue; is this HH-RLHF data?")
        raise BadRow("the dialogues differ before their first assistant turn")
    if HUMAN not in shared[:cut]:
        raise BadRow(f"no '{HUMAN.strip()}' turn before the last shared assistant turn")
    prompt = chosen[: cut + len(ASSISTANT)]
    responses = chosen[len(prompt) :], rejected[len(prompt) :]
    if any(HUMAN in r or ASSISTANT in r for r in responses):
        raise BadRow("the dialogues differ before the last assistant turn (a response holds a further turn)")
    return {"prompt": prompt, "chosen": responses[0], "rejected": responses[1]}


def hh_converter(cfg) -> Callable[[dict], dict]:
    """Splits the dialogues in the columns ``dataset.chosen_field`` / ``rejected_field`` name."""

    def convert(row: dict) -> dict:
        chosen, rejected = text_field(row, cfg.chosen_field), text_field(row, cfg.rejected_field)
        for column, text in ((cfg.chosen_field, chosen), (cfg.rejected_field, rejected)):
            if not text.strip():  # else split_dialogues would call it a dialogue without turns
                raise BadRow(f"field '{column}' is empty")
        return split_dialogues(chosen, rejected)

    return convert


def hh_columns(cfg) -> Callable[[Dataset], dict[str, str]]:
    def columns(_: Dataset) -> dict[str, str]:
        fix = (
            "HH-RLHF rows hold whole dialogues in 'chosen' and 'rejected'; set dataset.{} to the column that holds them"
        )
        return {cfg.chosen_field: fix.format("chosen_field"), cfg.rejected_field: fix.format("rejected_field")}

    return columns


def load(cfg) -> PreferenceData:
    """HH pairs as prompt/chosen/rejected rows; bad rows are counted (or fatal, per ``dataset.on_bad_row``)."""
    rows, eval_rows, report = load_rows(cfg, hh_converter(cfg), hh_columns(cfg))
    return pairs_data(rows, eval_rows, report)


SOURCES = (Source("hh", load, HHDatasetConfig),)
