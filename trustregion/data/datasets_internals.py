"""Every use of the ``datasets`` library's private attributes, in one place (as ``engines/zero_internals.py`` holds
DeepSpeed's); ``tests/test_data_tokenize.py`` exercises each through the tokenization cache."""

from __future__ import annotations

from datasets import Dataset


def fingerprint(ds: Dataset) -> str:
    """The hash ``datasets`` keeps of a dataset's content and transforms (``Dataset._fingerprint``; it has no public
    name): the tokenization cache keys on it, so rows that change miss the cache."""
    return ds._fingerprint
