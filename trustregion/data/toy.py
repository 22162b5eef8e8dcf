"""The built-in toy task: a seeded Markov-chain language with a gold reward that is a program.

Symbols are short letter-only words (``ba``, ``be``, …: one BPE token each); each symbol has a few allowed successors (chosen by the seed) with fixed
transition probabilities. A prompt is a short walk of the chain; an in-domain response continues it
for ``response_len`` symbols. The gold reward of a response is the mean, over its positions, of a
per-symbol value in [-1, 1] (+1.5 for echoing the prompt's first symbol) where the transition is
allowed, and -3 where it is not (unknown symbol, disallowed transition, or a missing/extra position:
a response is in domain only with exactly ``response_len`` symbols on allowed transitions).
So the gold judge is reliable only on the process's own support, like a learned reward model: a
policy pushed off that support by preference optimization scores badly, which is the
overoptimization the Trust-Region paper studies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

OFF_SUPPORT = -3.0
ECHO_BONUS = 1.5
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def symbol_names(n: int) -> list[str]:
    """``n`` distinct letter-only words: consonant+vowel, then consonant+vowel+consonant."""
    names = [c + v for c in _CONSONANTS for v in _VOWELS]
    names += [c + v + d for c in _CONSONANTS for v in _VOWELS for d in _CONSONANTS]
    if n > len(names):
        raise ValueError(f"the toy task supports at most {len(names)} symbols, got {n}")
    return names[:n]


@dataclass
class ToyTask:
    seed: int = 0
    vocab: int = 24
    successors: int = 4
    prompt_len: int = 3
    response_len: int = 8
    next_ids: np.ndarray = field(init=False, repr=False)
    next_probs: np.ndarray = field(init=False, repr=False)
    values: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.successors > self.vocab:
            raise ValueError(f"successors={self.successors} exceeds vocab={self.vocab}")
        rng = np.random.default_rng([self.seed, 7919])
        self.next_ids = np.stack([rng.choice(self.vocab, self.successors, replace=False) for _ in range(self.vocab)])
        self.next_probs = rng.dirichlet(np.ones(self.successors), size=self.vocab)
        self.values = rng.uniform(-1.0, 1.0, size=self.vocab)
        self._allowed = np.zeros((self.vocab, self.vocab), dtype=bool)
        self._allowed[np.arange(self.vocab)[:, None], self.next_ids] = True
        self.names = symbol_names(self.vocab)
        self._index = {w: i for i, w in enumerate(self.names)}

    # --- text ------------------------------------------------------------------------------
    def word(self, i: int) -> str:
        return self.names[i]

    def prompt_text(self, ids: list[int]) -> str:
        return " ".join(self.word(i) for i in ids)

    def response_text(self, ids: list[int]) -> str:
        return "".join(" " + self.word(i) for i in ids)

    def parse(self, text: str) -> list[int]:
        """Symbols of a text; anything that is not a symbol becomes -1."""
        return [self._index.get(w, -1) for w in text.split()]

    # --- the process -----------------------------------------------------------------------
    def _walk(self, start: int, n: int, rng: np.random.Generator) -> list[int]:
        out, cur = [], start
        for _ in range(n):
            cur = int(self.next_ids[cur, rng.choice(self.successors, p=self.next_probs[cur])])
            out.append(cur)
        return out

    def sample_prompt(self, rng: np.random.Generator) -> list[int]:
        first = int(rng.integers(self.vocab))
        return [first] + self._walk(first, self.prompt_len - 1, rng)

    def sample_response(self, prompt: list[int], rng: np.random.Generator) -> list[int]:
        return self._walk(prompt[-1], self.response_len, rng)

    # --- the gold judge ----------------------------------------------------------------------
    def gold_reward(self, prompt: list[int], response: list[int]) -> tuple[float, bool]:
        """(gold reward, in_domain) of a response given as symbol ids (-1 for a non-symbol)."""
        scores, prev, in_domain = [], prompt[-1], len(response) == self.response_len
        for pos, tok in enumerate(response):
            if pos < self.response_len and tok >= 0 and prev >= 0 and self._allowed[prev, tok]:
                scores.append(self.values[tok] + (ECHO_BONUS if tok == prompt[0] else 0.0))
            else:
                scores.append(OFF_SUPPORT)
                in_domain = False
            prev = tok
        scores += [OFF_SUPPORT] * (self.response_len - len(response))
        return float(np.mean(scores)), in_domain

    def score_text(self, prompt: str, response: str) -> tuple[float, bool]:
        return self.gold_reward(self.parse(prompt), self.parse(response))

    def score_parts(self, prompt: str, response: str) -> dict[str, float]:
        """The toy gold is one program: no parts."""
        return {}

    # --- data sets ----------------------------------------------------------------------------
    def label(self, prompt: str, a: str, b: str, rng: np.random.Generator, label_temperature: float) -> dict:
        """A preference row from two responses: P(a preferred) = sigmoid((gold(a) - gold(b)) / T) (Bradley-Terry)."""
        ra, rb = self.score_text(prompt, a)[0], self.score_text(prompt, b)[0]
        z = (ra - rb) / label_temperature
        p_a = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))  # no overflow
        chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def preference_rows(self, n: int, seed: int, label_temperature: float) -> list[dict]:
        """``n`` pairs of two distinct process samples per prompt, labelled by Bradley-Terry on the gold reward."""
        rng = np.random.default_rng([self.seed, seed, 1])
        rows = []
        while len(rows) < n:
            prompt = self.sample_prompt(rng)
            a, b = self.sample_response(prompt, rng), self.sample_response(prompt, rng)
            if a == b:
                continue
            rows.append(
                self.label(
                    self.prompt_text(prompt), self.response_text(a), self.response_text(b), rng, label_temperature
                )
            )
        return rows

    def label_rows(
        self, prompts: list[str], a: list[str], b: list[str], seed: int, label_temperature: float
    ) -> list[dict]:
        """Preference rows from given response pairs (a model's samples, say), skipping pairs of equal responses."""
        rng = np.random.default_rng([self.seed, seed, 4])
        return [self.label(p, x, y, rng, label_temperature) for p, x, y in zip(prompts, a, b) if x.split() != y.split()]

    def sft_rows(self, n: int, seed: int) -> list[dict]:
        """``n`` (prompt, response) samples of the process: the SFT corpus."""
        rng = np.random.default_rng([self.seed, seed, 2])
        rows = []
        for _ in range(n):
            prompt = self.sample_prompt(rng)
            rows.append(
                {"prompt": self.prompt_text(prompt), "response": self.response_text(self.sample_response(prompt, rng))}
            )
        return rows

    def prompts(self, n: int, seed: int) -> list[str]:
        rng = np.random.default_rng([self.seed, seed, 3])
        return [self.prompt_text(self.sample_prompt(rng)) for _ in range(n)]


def task_from_config(cfg) -> ToyTask:
    return ToyTask(
        seed=cfg.seed,
        vocab=cfg.vocab,
        successors=cfg.successors,
        prompt_len=cfg.prompt_len,
        response_len=cfg.response_len,
    )
