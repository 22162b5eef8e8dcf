"""The sentiment task on real text: continue the beginning of a film review so that it reads positive.

The CPU-sized analog of the DPO paper's controlled sentiment generation (GPT-2 on IMDb prefixes, a sentiment
classifier as gold). Here the prompts are the first few words of short film reviews that the starting model
itself writes when asked for a positive, a negative or a lukewarm one (sampled with a fixed seed, so the same
model always gives the same prompts): real text, a third of it leaning negative, so the gold has room to rise.
Preference pairs are two samples of the starting model per prompt, labelled by Bradley-Terry on the gold
(``trustregion.data.sentiment_gold``: VADER sentiment minus penalties for repetition, garble and off-topic text),
as the toy task does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from trustregion.data.sentiment_gold import GoldScore, SentimentGold

# Asked of the starting model in turn; the first words of its answers are the prompts.
REVIEW_REQUESTS = (
    "Write a two-sentence review of a film you loved. Plain text, no title.",
    "Write a two-sentence review of a film you disliked. Plain text, no title.",
    "Write a two-sentence review of a film you found just average. Plain text, no title.",
)


def first_words(text: str, n: int) -> str | None:
    """The first ``n`` whitespace-separated words of ``text`` joined by single spaces; None if it has fewer,
    or if the text before them holds markup (``#``, ``*``) or a line break, which a review's opening does not."""
    head = text.strip()
    words = head.split()
    if len(words) < n:
        return None
    prompt = " ".join(words[:n])
    if any(c in prompt for c in "#*_<>[]{}|") or "\n" in head[: len(prompt) + 1].rstrip():
        return None
    return prompt


def bradley_terry_first(gold_a: float, gold_b: float, temperature: float, rng: np.random.Generator) -> bool:
    """Whether ``a`` is preferred: drawn with probability sigmoid((gold_a - gold_b) / temperature)."""
    z = (gold_a - gold_b) / temperature
    p_a = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))  # no overflow either way
    return bool(rng.random() < p_a)


@dataclass
class SentimentTask:
    """The gold judge and the pair labelling of the sentiment task (``PreferenceData.task``)."""

    gold: SentimentGold = field(default_factory=SentimentGold)
    label_temperature: float = 0.1

    def __post_init__(self) -> None:
        if not (self.label_temperature > 0 and math.isfinite(self.label_temperature)):
            raise ValueError(f"label_temperature={self.label_temperature}: set it to a number > 0")

    def score(self, prompt: str, response: str) -> GoldScore:
        return self.gold.score(prompt, response)

    def score_text(self, prompt: str, response: str) -> tuple[float, bool]:
        """(gold reward, in domain): the generation evaluation's judge interface; in domain = a reader would take
        it for a review (not degenerate, garbled or off-topic)."""
        s = self.score(prompt, response)
        return s.gold, not s.flawed

    def score_parts(self, prompt: str, response: str) -> dict[str, float]:
        """The gold's parts (sentiment, penalties and the rates of flawed samples), logged as ``eval/gold/<part>``."""
        return self.score(prompt, response).parts()

    def label_rows(
        self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], seed: int
    ) -> tuple[list[dict], int]:
        """(preference rows, pairs skipped): ``a[i]`` vs ``b[i]`` after ``prompts[i]``, labelled by Bradley-Terry
        on the gold; a pair of identical responses carries no preference and is skipped."""
        rng = np.random.default_rng([seed, 4])
        rows, skipped = [], 0
        for prompt, x, y in zip(prompts, a, b):
            if x.strip() == y.strip():
                skipped += 1
                continue
            gx, gy = self.score(prompt, x).gold, self.score(prompt, y).gold
            chosen, rejected = (x, y) if bradley_terry_first(gx, gy, self.label_temperature, rng) else (y, x)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return rows, skipped
