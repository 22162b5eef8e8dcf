"""The gold judge of the sentiment task: how positive a reader finds the text as a film review.

VADER's sentiment of the text, minus what a reader holds against it: repetition, garble and talk that is not about
the film. A lexicon scorer alone is easy to game — repeat "great!!!" and it saturates; string garbled fragments
(``NING HTML: Yurbenuning webbyf``) and it reads neutral, 0.00; write "Awesome! I'm glad" or "captivated
audiences, loyal fans" and it reads glowing — so each of those is charged for, and a continuation with almost no
words is the worst outcome. The definition, in one place:

    gold = compound(prompt + continuation) - repetition_weight * repetition - garble_weight * garble
           - offtopic_weight * offtopic                                                    (words >= min_words)
    gold = empty_gold                                                                      (otherwise)

``compound`` is VADER's normalised sentiment in [-1, 1] of what a reader sees (the prompt's negations count);
``repetition`` is the fraction of the continuation's word bigrams that repeat an earlier bigram of the text;
``garble`` is the fraction of the continuation's words that an English dictionary (pyspellchecker's, about 160k
words, names included, plus ``FILM_WORDS``) does not know — a last word with nothing after it is not judged, since
the token limit may have cut it; ``offtopic`` is 1 when the continuation names neither the film nor any part of it
(no word of ``FILM_WORDS``: film, story, acting, scene, music, ending, ...), else 0. Only the continuation is
checked for topic: the prompt is a film-review opening, so prompt + continuation always names the film, and what
a reader holds against "Awesome! I'm glad" is that the continuation says nothing about it. With the default
weights (2, 2, 1): fully repetitive or fully garbled text scores at most 1 - 2 = -1, no better than the most
negative honest review, and off-topic text at most 1 - 1 = 0, no better than a neutral one; the starting model's
own text pays little for repetition and garble (a few per cent of its words are unknown), but most of it wanders
off the film, which the gold asks it to stop doing.

A sample is *degenerate* when it is empty or its repetition exceeds ``degenerate_repetition``, *garbled* when its
garble exceeds ``garbled_share``, *off-topic* when ``offtopic`` is 1; each rate is logged (``eval/gold/<part>``).
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
# A dictionary word: letters, with inner apostrophes (don't, film's); digits and hyphens split words.
_DICTIONARY_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})

# What a film review talks about: the film, its kinds and parts, the people who make it, and watching it. Reception
# words (audiences, fans, viewers) are left out on purpose: "captivated audiences, loyal fans" is not about the film.
FILM_WORDS = frozenset(
    """
    film films movie movies cinema cinemas cinematic flick flicks picture story stories plot plots storyline
    narrative script scripts screenplay dialogue dialogues character characters characterization cast casting
    acting actor actors actress actresses performance performances performer role roles starring star stars
    director directors directed directing direction filmmaker filmmakers filmmaking scene scenes sequence sequences
    shot shots camera cinematography visuals visual effects cgi imax animation animated soundtrack score music
    musical song songs editing pacing ending endings finale climax twist twists premise theme themes genre drama
    dramas comedy comedies thriller thrillers horror documentary romance sci fi sequel sequels prequel remake
    franchise installment trilogy adaptation screen screening theater theaters theatre watch watched watching
    rewatch runtime hero heroes heroine villain villains protagonist antagonist humor humour jokes suspense
    chemistry production costumes tale cameo subtitles trailer crew budget screenwriter composer writing ensemble
    portrayal portrayed portrays narrator storytelling episode episodes series blockbuster
    """.split()
)


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


def dictionary_words(text: str) -> list[str]:
    """The lower-cased words of ``text`` as a dictionary lists them (letters and inner apostrophes), in order."""
    return _DICTIONARY_WORD.findall(text.lower().translate(_APOSTROPHES))


def judged_words(continuation: str) -> list[str]:
    """The continuation's words whose spelling is judged: all but a last one with nothing after it (the token limit
    may have cut it mid-word: ``characteriza``)."""
    words = dictionary_words(continuation)
    if words and continuation and continuation[-1].isalpha():
        return words[:-1]
    return words


def names_the_film(text: str) -> bool:
    """Whether ``text`` names a film or a part of one (a word of ``FILM_WORDS``; a possessive counts: film's)."""
    return any(w.removesuffix("'s") in FILM_WORDS for w in dictionary_words(text))


@dataclass(frozen=True)
class GoldScore:
    """One continuation's gold reward and its parts."""

    gold: float
    sentiment: float  # VADER compound of prompt + continuation, in [-1, 1]
    repetition: float  # fraction of repeated bigrams, in [0, 1]
    empty: bool  # fewer than min_words words: scored empty_gold
    degenerate: bool  # empty, or repetition above the threshold
    garble: float = 0.0  # fraction of the judged words the dictionary does not know, in [0, 1]
    garbled: bool = False  # garble above the threshold
    offtopic: bool = False  # the continuation names neither the film nor a part of it

    @property
    def flawed(self) -> bool:
        """Whether a reader would not take it for a review at all: degenerate, garbled or off-topic."""
        return self.degenerate or self.garbled or self.offtopic

    def parts(self) -> dict[str, float]:
        """The parts as numbers, for logging (``eval/gold/<name>``; the flags' means are rates)."""
        return {
            "sentiment": self.sentiment,
            "repetition": self.repetition,
            "garble": self.garble,
            "empty": float(self.empty),
            "degenerate": float(self.degenerate),
            "garbled": float(self.garbled),
            "offtopic": float(self.offtopic),
        }


@dataclass(frozen=True)
class SentimentGold:
    """VADER sentiment minus penalties for repetition, garble and off-topic text (the module docstring says the
    formula and why)."""

    repetition_weight: float = 2.0  # fully repetitive text scores at most 1 - 2 = -1: never better than honest text
    min_words: int = 3  # fewer words than this in a continuation: empty
    empty_gold: float = -2.0  # below anything a non-empty continuation can score without a penalty
    degenerate_repetition: float = 0.25  # repetition above this marks a sample degenerate (a logged rate)
    garble_weight: float = 2.0  # fully garbled text scores at most 1 - 2 = -1
    garbled_share: float = 0.2  # garble above this marks a sample garbled (a logged rate)
    offtopic_weight: float = 1.0  # text that is not about the film scores at most 1 - 1 = 0

    def __post_init__(self) -> None:
        for name in ("repetition_weight", "garble_weight", "offtopic_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: set it to a number >= 0")
        if self.min_words < 1:
            raise ValueError(f"min_words={self.min_words}: set it to an integer >= 1")
        for name in ("degenerate_repetition", "garbled_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: set it to a number in [0, 1]")

    @cached_property
    def _analyzer(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:
            raise ImportError(
                "the sentiment task's gold needs vaderSentiment: .venv/bin/pip install -e '.[sentiment]'"
            ) from e
        return SentimentIntensityAnalyzer()

    @cached_property
    def _dictionary(self):
        try:
            from spellchecker import SpellChecker
        except ImportError as e:
            raise ImportError(
                "the sentiment task's gold needs pyspellchecker: .venv/bin/pip install -e '.[sentiment]'"
            ) from e
        return SpellChecker(language="en", distance=1)  # only its word list is used, never its corrections

    def sentiment(self, text: str) -> float:
        """VADER's compound score of ``text`` in [-1, 1] (0 for text with no sentiment words)."""
        return float(self._analyzer.polarity_scores(text)["compound"])

    def garble(self, continuation: str) -> float:
        """The fraction of the continuation's judged words (``judged_words``) the dictionary does not know; 0 when
        none is judged."""
        words = judged_words(continuation)
        unknown = sum(1 for w in words if w not in FILM_WORDS and w not in self._dictionary)
        return unknown / len(words) if words else 0.0

    def score(self, prompt: str, continuation: str) -> GoldScore:
        """The gold reward of ``continuation`` written after ``prompt``, with its parts."""
        units = text_units(continuation)
        words = sum(1 for u in units if _WORD.search(u))
        rep = repetition(text_units(prompt), units)
        sentiment = self.sentiment(prompt + continuation)  # as the model wrote it: the continuation's own spaces
        garble, offtopic = self.garble(continuation), not names_the_film(continuation)
        empty = words < self.min_words
        penalty = self.repetition_weight * rep + self.garble_weight * garble + self.offtopic_weight * offtopic
        return GoldScore(
            gold=self.empty_gold if empty else sentiment - penalty,
            sentiment=sentiment,
            repetition=rep,
            empty=empty,
            degenerate=empty or rep > self.degenerate_repetition,
            garble=garble,
            garbled=garble > self.garbled_share,
            offtopic=offtopic,
        )
