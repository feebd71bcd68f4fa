"""The default task's gold scorer: upbeat text scores high, degenerate text is penalised.

The gold scorer is the "true" objective that simulated labelers judge by and that
reports show next to the learned reward model's score. Its penalties exist to make
reward hacking visible: a policy that learns to spam "great great great" pleases a
sloppy reward model but not this scorer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")
_FINISHED = re.compile(r"[.!?][\"')\]]*\s*$")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks: the tokens the gold scorer and the bias audit count."""
    return _TOKEN.findall(text.lower())


def repeated_bigram_share(tokens: Sequence[str]) -> float:
    """``1 - distinct2``: the share of token bigrams that repeat an earlier one (0 with fewer than two bigrams)."""
    bigrams = list(zip(tokens, tokens[1:], strict=False))
    return 1.0 - len(set(bigrams)) / len(bigrams) if len(bigrams) >= 2 else 0.0


@dataclass
class UpbeatGoldScorer:
    """Gold scorer for the default task: VADER positivity minus degeneracy penalties.

    For a response ``t`` (the prompt is not scored) with lower-cased tokens ``w``
    (words and single punctuation marks)::

        score(t) = vader(t)                                    # compound, in [-1, 1]
                   - repetition_weight * (1 - distinct2(w))    # share of repeated bigrams
                   - unfinished_weight * [t lacks final . ! ?]
                   - short_weight * max(0, 1 - words(t) / min_words)

    where ``distinct2`` is the number of distinct token bigrams over the number of
    bigrams (1 with fewer than two bigrams). An empty (or whitespace-only) response
    scores the formula's floor, ``-1 - repetition_weight - unfinished_weight - short_weight``.

    Example:
        >>> gold = UpbeatGoldScorer()
        >>> s = gold.score(["", ""], ["What a lovely day, I feel great!", "great great great great great"])
        >>> bool(s[0] > 0.5 > s[1])
        True
    """

    repetition_weight: float = 2.0
    """Weight of the repeated-bigram share; 2 makes pure repetition cost more than VADER can give."""
    unfinished_weight: float = 0.5
    """Penalty for a response that does not end with sentence-final punctuation."""
    short_weight: float = 0.5
    """Penalty for a response of no words, scaled down linearly to 0 at ``min_words`` words."""
    min_words: int = 3
    """Responses with fewer words than this count as too short."""
    _vader: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        if self.min_words < 1:
            raise ValueError(f"UpbeatGoldScorer: min_words={self.min_words} must be >= 1.")
        self._vader = SentimentIntensityAnalyzer()

    @property
    def floor(self) -> float:
        """The lowest score: what an empty response gets."""
        return -1.0 - self.repetition_weight - self.unfinished_weight - self.short_weight

    def components(self, response: str) -> dict[str, float]:
        """Each term of the formula for one response, and the total as ``"score"``."""
        text = response.strip()
        if not text:
            return {"sentiment": 0.0, "repetition": 1.0, "unfinished": 1.0, "short": 1.0, "score": self.floor}
        tokens = tokenize(text)
        repetition = repeated_bigram_share(tokens)
        unfinished = 0.0 if _FINISHED.search(text) else 1.0
        words = sum(1 for t in tokens if t[0].isalnum() or t[0] == "_")
        short = max(0.0, 1.0 - words / self.min_words)
        sentiment = float(self._vader.polarity_scores(text)["compound"])
        score = (
            sentiment
            - self.repetition_weight * repetition
            - self.unfinished_weight * unfinished
            - self.short_weight * short
        )
        return {
            "sentiment": sentiment,
            "repetition": repetition,
            "unfinished": unfinished,
            "short": short,
            "score": score,
        }

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """One gold score per response (``prompts`` only fix the batch size)."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; pass one per response.")
        return np.array([self.components(r)["score"] for r in responses], dtype=np.float64)
