"""Reddit TL;DR summarization preferences (``dataset=tldr``), in either of its two common hub forms.

- ``comparisons``: OpenAI's human comparisons (``openai/summarize_from_feedback``, config
  ``comparisons``): ``info.{post,title,subreddit}``, two ``summaries[*].text`` and ``choice`` (the
  index of the preferred one). The prompt is ``PROMPT_TEMPLATE``; each response is " " + the summary.
  Rows without a Reddit post (the CNN/Daily Mail rows of the validation split) are bad rows.
- ``pairs``: ready-made ``prompt``/``chosen``/``rejected`` strings (e.g. CarperAI's
  ``openai_summarize_comparisons``); ``dataset.*_field`` rename the columns. Where the prompt ends
  with "TL;DR:" a repeated "TL;DR:" at the start of a response is dropped.
``form: auto`` picks ``comparisons`` when the split has ``info``, ``summaries`` and ``choice`` columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from datasets import Dataset

from trustregion.data import PreferenceData, Source
from trustregion.data.files import FileDatasetConfig, field_mapper, load_rows, mapped_columns, pairs_data
from trustregion.data.rows import BadRow, a_kind, as_text
from trustregion.schema import one_of, setting

PROMPT_TEMPLATE = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
COMPARISON_COLUMNS = ("info", "summaries", "choice")
_FORMS = ("auto", "comparisons", "pairs")


@dataclass
class TLDRDatasetConfig(FileDatasetConfig):
    """Reddit TL;DR comparisons from the hub or local files; ``form`` picks the schema (auto-detected)."""

    name: str = "tldr"
    path: Optional[str] = "openai/summarize_from_feedback"
    subset: Optional[str] = "comparisons"
    split: str = "train"
    eval_split: Optional[str] = "validation"
    form: str = setting(
        "auto",
        "comparisons (OpenAI's info/summaries/choice rows), pairs (prompt/chosen/rejected), or auto (from the columns)",
        one_of("auto", "comparisons", "pairs"),
    )


def comparison_to_pair(row: dict) -> dict[str, str]:
    """{prompt, chosen, rejected} of one OpenAI comparison, or ``BadRow`` naming the bad field."""
    info = row.get("info")
    if not isinstance(info, dict):
        raise BadRow(f"field 'info' is {a_kind(info)}, expected a struct with post, title, subreddit")
    if info.get("post") is None and info.get("article") is not None:
        raise BadRow("not a Reddit post (a news article row: info.post is missing)")
    post, title, subreddit = (as_text(info.get(k), f"info.{k}") for k in ("post", "title", "subreddit"))
    summaries = row.get("summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise BadRow(
            f"field 'summaries' should be a list of two summaries, got {type(summaries).__name__}"
            + (f" of {len(summaries)}" if isinstance(summaries, list) else "")
        )
    choice = row.get("choice")
    if choice not in (0, 1) or isinstance(choice, bool):
        raise BadRow(f"field 'choice' is {choice!r}, expected 0 or 1")
    texts = [
        as_text(s.get("text") if isinstance(s, dict) else None, f"summaries[{i}].text") for i, s in enumerate(summaries)
    ]
    prompt = PROMPT_TEMPLATE.format(subreddit=subreddit.strip(), title=title.strip(), post=post.strip())
    return {"prompt": prompt, "chosen": " " + texts[choice].strip(), "rejected": " " + texts[1 - choice].strip()}


def form_of(ds: Dataset, form: str) -> str:
    """``comparisons`` or ``pairs``: the configured form, or the one the split's columns show (``auto``)."""
    if form != "auto":
        return form
    return "comparisons" if all(c in ds.column_names for c in COMPARISON_COLUMNS) else "pairs"


def load(cfg) -> PreferenceData:
    """TL;DR pairs as prompt/chosen/rejected rows, from either hub form."""

    def columns(ds: Dataset) -> dict[str, str]:
        if form_of(ds, cfg.form) == "comparisons":
            return {
                c: "OpenAI's comparisons need info, summaries and choice; or set dataset.form=pairs "
                "for prompt/chosen/rejected columns"
                for c in COMPARISON_COLUMNS
            }
        return mapped_columns(cfg)(ds)

    mapped = field_mapper(cfg)

    def pairs(row: dict) -> dict:
        pair = mapped(row)
        if pair["prompt"].rstrip().endswith("TL;DR:"):  # CarperAI's form repeats "TL;DR:" in the responses
            for k in ("chosen", "rejected"):
                if pair[k].startswith("TL;DR:"):
                    pair[k] = pair[k][len("TL;DR:") :]
        return pair

    def convert(row: dict) -> dict:
        comparisons = cfg.form == "comparisons" or (cfg.form == "auto" and all(c in row for c in COMPARISON_COLUMNS))
        return comparison_to_pair(row) if comparisons else pairs(row)

    rows, eval_rows, report = load_rows(cfg, convert, columns)
    return pairs_data(rows, eval_rows, report)


SOURCES = (Source("tldr", load, TLDRDatasetConfig),)
