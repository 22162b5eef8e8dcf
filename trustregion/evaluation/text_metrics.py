"""Diversity metrics of generated responses (token-id sequences): distinct-n and self-BLEU.

Overoptimized policies collapse onto a few high-scoring strings; these numbers show that collapse
without a judge. Pure Python on token ids, so they work for any tokenizer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The n-grams of ``tokens`` in order (empty when the sequence is shorter than ``n``)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(responses: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled over ``responses`` (Li et al., 2016); nan if there are none."""
    pooled = [g for r in responses for g in ngrams(r, n)]
    return len(set(pooled)) / len(pooled) if pooled else math.nan


def bleu(hypothesis: Sequence[int], references: Sequence[Sequence[int]], max_n: int = 4) -> float:
    """Sentence BLEU with clipped n-gram counts, add-one smoothing for n > 1, and the brevity penalty.

    The order is capped at the hypothesis length, so short responses still get a score.
    """
    if not hypothesis or not references:
        return 0.0
    order = min(max_n, len(hypothesis))
    log_precision = 0.0
    for n in range(1, order + 1):
        hyp = Counter(ngrams(hypothesis, n))
        best: Counter = Counter()
        for ref in references:
            best |= Counter(ngrams(ref, n))
        matched = sum(min(c, best[g]) for g, c in hyp.items())
        total = sum(hyp.values())
        if n == 1:
            if matched == 0:
                return 0.0
            log_precision += math.log(matched / total)
        else:
            log_precision += math.log((matched + 1) / (total + 1))
    closest = min((abs(len(r) - len(hypothesis)), len(r)) for r in references)[1]
    brevity = 0.0 if len(hypothesis) >= closest else 1.0 - closest / len(hypothesis)
    return math.exp(brevity + log_precision / order)


def self_bleu(groups: Sequence[Sequence[Sequence[int]]], max_n: int = 4) -> float:
    """Mean BLEU of each response against the other responses of its group (Zhu et al., 2018); nan if no group has two.

    Groups are the samples of one prompt, so 1.0 means every prompt got the same response each time.
    """
    scores = []
    for group in groups:
        for i, hyp in enumerate(group):
            others = [r for j, r in enumerate(group) if j != i]
            if others:
                scores.append(bleu(hyp, others, max_n))
    return sum(scores) / len(scores) if scores else math.nan


def repetition_rate(responses: Sequence[Sequence[int]], n: int = 2) -> float:
    """Mean over responses of the fraction of their n-grams that repeat an earlier n-gram of the same response.

    0 for responses that never repeat themselves, near 1 for a token looped; nan if no response has an n-gram.
    Unlike distinct-n, pooled over all responses, it sees a loop within one response, however varied the rest.
    """
    rates = []
    for r in responses:
        grams = ngrams(r, n)
        if grams:
            rates.append((len(grams) - len(set(grams))) / len(grams))
    return sum(rates) / len(rates) if rates else math.nan
