"""The gold judge of the sentiment task: VADER's sentiment of the text, minus a penalty for degenerate writing.

A lexicon scorer alone is easy to game (repeat "great!!!" and it saturates), so the gold also charges for
repetition and scores a continuation with almost no words as the worst outcome. The definition, in one place:

    gold = compound(prompt + continuation) - repetition_weight * repetition(continuation)     (words >= min_words)
    gold = empty_gold                                                                          (otherwise)

``compound`` is VADER's normalised sentiment in [-1, 1] of what a reader sees (the prompt's negations count);
``repetition`` is the fraction of the continuation's word bigrams that repeat an earlier bigram of the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

# Words (letters, digits, apostrophes) and every other visible character as its own unit, so that runs of "!"
# or of one emoji count as repetition too.
_UNITS = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")
_WORD = re.compile(r"[a-z]")


def text_units(text: str) -> list[str]:
    """The lower-cased words and single punctuation or symbol characters of ``text``, in order."""
    return _UNITS.findall(text.lower())


def repetition(prompt_units: Sequence[str], units: Sequence[str]) -> float:
    """Fraction of the bigrams ending in ``units`` that already occurred earlier in ``prompt_units + units``.

    0 for text that never repeats itself; close to 1 for "great great great …" or "!!!!!!"; 0 when there
    is no bigram to judge.
    """
    text = list(prompt_units) + list(units)
    start = max(1, len(prompt_units))  # the first bigram that ends inside the continuation
    seen = {(text[i - 1], text[i]) for i in range(1, start)}
    repeats = total = 0
    for i in range(start, len(text)):
        bigram = (text[i - 1], text[i])
        total += 1
        repeats += bigram in seen
        seen.add(bigram)
    return repeats / total if total else 0.0


@dataclass(frozen=True)
class GoldScore:
    """One continuation's gold reward and its parts."""

    gold: float
    sentiment: float  # VADER compound of prompt + continuation, in [-1, 1]
    repetition: float  # fraction of repeated bigrams, in [0, 1]
    empty: bool  # fewer than min_words words: scored empty_gold
    degenerate: bool  # empty, or repetition above the threshold

    def parts(self) -> dict[str, float]:
        """The parts as numbers, for logging (``eval/gold/<name>``)."""
        return {
            "sentiment": self.sentiment,
            "repetition": self.repetition,
            "empty": float(self.empty),
            "degenerate": float(self.degenerate),
        }


@dataclass(frozen=True)
class SentimentGold:
    """VADER sentiment with a degeneracy penalty (see the module docstring for the formula and why)."""

    repetition_weight: float = 2.0  # fully repetitive text scores at most 1 - 2 = -1: never better than honest text
    min_words: int = 3  # fewer words than this in a continuation: empty
    empty_gold: float = -2.0  # below anything a non-empty continuation can score with little repetition
    degenerate_repetition: float = 0.25  # repetition above this marks a sample degenerate (a logged rate)

    def __post_init__(self) -> None:
        if self.repetition_weight < 0:
            raise ValueError(f"repetition_weight={self.repetition_weight}: set it to a number >= 0")
        if self.min_words < 1:
            raise ValueError(f"min_words={self.min_words}: set it to an integer >= 1")
        if not 0 <= self.degenerate_repetition <= 1:
            raise ValueError(f"degenerate_repetition={self.degenerate_repetition}: set it to a number in [0, 1]")

    @cached_property
    def _analyzer(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:
            raise ImportError(
                "the sentiment task's gold needs vaderSentiment: .venv/bin/pip install -e '.[sentiment]'"
            ) from e
        return SentimentIntensityAnalyzer()

    def sentiment(self, text: str) -> float:
        """VADER's compound score of ``text`` in [-1, 1] (0 for text with no sentiment words)."""
        return float(self._analyzer.polarity_scores(text)["compound"])

    def score(self, prompt: str, continuation: str) -> GoldScore:
        """The gold reward of ``continuation`` written after ``prompt``, with its parts."""
        units = text_units(continuation)
        words = sum(1 for u in units if _WORD.search(u))
        rep = repetition(text_units(prompt), units)
        sentiment = self.sentiment(prompt + continuation)  # as the model wrote it: the continuation's own spaces
        empty = words < self.min_words
        gold = self.empty_gold if empty else sentiment - self.repetition_weight * rep
        return GoldScore(gold, sentiment, rep, empty, empty or rep > self.degenerate_repetition)
