"""Binarized UltraFeedback (``dataset=ultrafeedback``): chat conversations, rendered by the model's template.

Rows hold ``chosen`` and ``rejected`` as message lists ``[{role, content}, ...]`` that end with the
assistant's answer. The prompt conversation is everything before that answer (the same in both, else
a bad row); the responses are the two final assistant contents. Each clean row keeps the conversation
as ``prompt_messages``: tokenization renders it with the tokenizer's ``apply_chat_template`` (with the
generation prompt), so the loader needs no tokenizer. ``prompt`` holds a plain rendering
("\\n\\nUser: ...\\n\\nAssistant:") used when the tokenizer has no chat template (the tiny model, Pythia).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from datasets import Dataset

from trustregion.data import PreferenceData, Source
from trustregion.data.files import FileDatasetConfig, load_rows, to_dataset
from trustregion.data.rows import FIELDS, BadRow, a_kind

MESSAGE_FIELDS = (*FIELDS, "prompt_messages")


@dataclass
class UltraFeedbackDatasetConfig(FileDatasetConfig):
    """HuggingFaceH4/ultrafeedback_binarized (splits train_prefs / test_prefs) or a local copy."""

    name: str = "ultrafeedback"
    path: Optional[str] = "HuggingFaceH4/ultrafeedback_binarized"
    split: str = "train_prefs"
    eval_split: Optional[str] = "test_prefs"
    max_length: int = 1024
    max_prompt_length: int = 512


def check_messages(value: Any, column: str) -> list[dict[str, str]]:
    """``value`` as a list of {role, content} string messages, or ``BadRow`` naming what is wrong."""
    if not isinstance(value, list):
        raise BadRow(f"field '{column}' is {a_kind(value)}, expected a list of {{role, content}} messages")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRow(f"field '{column}[{i}]' is not a message with string 'role' and 'content'")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """A template-free rendering for tokenizers without a chat template, in HH's dialogue style."""
    return "".join(f"\n\n{m['role'].capitalize()}: {m['content']}" for m in messages) + "\n\nAssistant:"


def split_conversations(
    chosen: Any, rejected: Any, prompt: Any = None, columns: tuple[str, str] = ("chosen", "rejected")
) -> dict[str, Any]:
    """{prompt, chosen, rejected, prompt_messages} of one pair of conversations, or ``BadRow``."""
    c, r = check_messages(chosen, columns[0]), check_messages(rejected, columns[1])
    for column, conv in zip(columns, (c, r)):
        if not conv:
            raise BadRow(f"field '{column}' is empty")
        if conv[-1]["role"] != "assistant":
            raise BadRow(f"field '{column}' does not end with an assistant message")
    if c[:-1] != r[:-1]:
        raise BadRow("the conversations differ before the final assistant message")
    history = c[:-1]
    if not history:
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRow("no user message before the answer and no 'prompt' string to use as one")
        history = [{"role": "user", "content": prompt}]
    return {
        "prompt": plain_prompt(history),
        "chosen": c[-1]["content"],
        "rejected": r[-1]["content"],
        "prompt_messages": history,
    }


def load(cfg) -> PreferenceData:
    """Pairs with ``prompt_messages`` kept for the chat template, and a plain ``prompt`` as fallback."""

    def columns(_: Dataset) -> dict[str, str]:
        fix = "binarized UltraFeedback holds message lists in 'chosen' and 'rejected'; set dataset.{} to the column"
        return {cfg.chosen_field: fix.format("chosen_field"), cfg.rejected_field: fix.format("rejected_field")}

    def convert(row: dict) -> dict:
        return split_conversations(
            row.get(cfg.chosen_field),
            row.get(cfg.rejected_field),
            row.get(cfg.prompt_field),
            (cfg.chosen_field, cfg.rejected_field),
        )

    rows, eval_rows, report = load_rows(cfg, convert, columns)
    return PreferenceData(
        train=to_dataset(rows, MESSAGE_FIELDS), eval=to_dataset(eval_rows, MESSAGE_FIELDS), report=report
    )


SOURCES = (Source("ultrafeedback", load, UltraFeedbackDatasetConfig),)
