"""Unpaired KTO data (``dataset=kto_unpaired``): one completion per row, labelled desirable or not.

Rows hold ``prompt``, ``completion`` and a boolean ``label`` (true = desirable). TRL's conversational
form is accepted too: a prompt that is a message list is kept as ``prompt_messages`` (rendered by the
chat template at tokenization), and a completion that is a message list gives its final assistant
content. The result has ``kind="unpaired"``; its SFT view is the desirable rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from datasets import Dataset

from trustregion.data import PreferenceData, Source
from trustregion.data.files import FileDatasetConfig, load_rows, to_dataset
from trustregion.data.rows import BadRow, text_field
from trustregion.data.ultrafeedback import check_messages, plain_prompt
from trustregion.schema import setting

FIELDS = ("prompt", "completion")
COLUMNS = ("prompt", "completion", "label", "prompt_messages")


@dataclass
class KTOUnpairedDatasetConfig(FileDatasetConfig):
    """prompt/completion/label rows from a file or the hub (TRL's unpaired preference format)."""

    name: str = "kto_unpaired"
    path: Optional[str] = "trl-lib/kto-mix-14k"
    split: str = "train"
    eval_split: Optional[str] = "test"
    completion_field: str = setting("completion", "the column holding the completion")
    label_field: str = setting("label", "the column holding the boolean label (true: desirable)")


def _completion(value: Any, column: str) -> str:
    if isinstance(value, list):
        messages = check_messages(value, column)
        if not messages:
            raise BadRow(f"field '{column}' is empty")
        if messages[-1]["role"] != "assistant":
            raise BadRow(f"field '{column}' does not end with an assistant message")
        return messages[-1]["content"]
    return text_field({column: value}, column)


def unpaired_row(prompt: Any, completion: Any, label: Any, columns: tuple[str, str, str]) -> dict[str, Any]:
    """{prompt, completion, label, prompt_messages} of one row, or ``BadRow`` naming the bad field."""
    if not isinstance(label, bool):
        raise BadRow(f"field '{columns[2]}' is {label!r}, expected true or false")
    if isinstance(prompt, list):
        messages = check_messages(prompt, columns[0])
        if not messages:
            raise BadRow(f"field '{columns[0]}' is empty")
        text = plain_prompt(messages)
    else:
        text, messages = text_field({columns[0]: prompt}, columns[0]), None
    return {
        "prompt": text,
        "completion": _completion(completion, columns[1]),
        "label": label,
        "prompt_messages": messages,
    }


def load(cfg) -> PreferenceData:
    """prompt/completion/label rows (``kind="unpaired"``); ``prompt_messages`` only where prompts are chats."""
    names = (cfg.prompt_field, cfg.completion_field, cfg.label_field)

    def columns(_: Dataset) -> dict[str, str]:
        return {
            c: f"unpaired KTO rows need prompt, completion and a boolean label; set dataset.{k} to the column"
            for c, k in zip(names, ("prompt_field", "completion_field", "label_field"))
        }

    def convert(row: dict) -> dict:
        return unpaired_row(row.get(names[0]), row.get(names[1]), row.get(names[2]), names)

    rows, eval_rows, report = load_rows(cfg, convert, columns, fields=FIELDS)
    if not any(r["prompt_messages"] for r in rows + eval_rows):
        for r in rows + eval_rows:
            del r["prompt_messages"]
    cols = COLUMNS if rows and "prompt_messages" in rows[0] else COLUMNS[:3]
    return PreferenceData(
        train=to_dataset(rows, cols), eval=to_dataset(eval_rows, cols), report=report, kind="unpaired"
    )


SOURCES = (Source("kto_unpaired", load, KTOUnpairedDatasetConfig),)
