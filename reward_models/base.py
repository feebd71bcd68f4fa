"""The reward-model protocol every environment scores with, and a function adapter."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RewardModel(Protocol):
    """Scores finished responses; called once per batch of finished episodes.

    Any object with this method is a reward model: a trained Bradley-Terry model,
    a gold scorer, a chess engine critic or a plain Python function wrapped by
    :class:`FunctionRewardModel`.
    """

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Return one float score per (prompt, response) pair, shape ``(len(prompts),)``."""
        ...


class FunctionRewardModel:
    """Turns a Python function into a :class:`RewardModel`.

    Example:
        >>> rm = FunctionRewardModel(lambda prompt, response: float(len(response)))
        >>> rm.score(["Hi"], ["there"])
        array([5.])

    Args:
        fn: ``fn(prompt, response) -> float``, or with ``batched=True``
            ``fn(prompts, responses) -> sequence of floats``.
        batched: whether ``fn`` takes whole lists at once (faster for models).
        name: shown in error messages.
    """

    def __init__(
        self,
        fn: Callable[..., object],
        batched: bool = False,
        name: str | None = None,
    ) -> None:
        self.fn = fn
        self.batched = batched
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Score every pair with the wrapped function."""
        if self.batched:
            raw = self.fn(list(prompts), list(responses))
        else:
            raw = [self.fn(p, r) for p, r in zip(prompts, responses, strict=True)]
        return np.asarray(raw, dtype=np.float64)

    def __repr__(self) -> str:
        return f"FunctionRewardModel({self.name})"


def checked_scores(reward_model: RewardModel, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Call ``reward_model.score`` and insist on one finite float per response.

    A NaN or infinite score would silently poison every later gradient, so it stops
    the run here with the offending prompt and response named.
    """
    scores = np.asarray(reward_model.score(prompts, responses), dtype=np.float64)
    if scores.shape != (len(prompts),):
        raise ValueError(
            f"{reward_model!r}.score() returned shape {scores.shape} for {len(prompts)} "
            f"responses; it must return one score per response, shape ({len(prompts)},)."
        )
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{reward_model!r}.score() returned {scores[i]} for prompt {prompts[i]!r} and "
            f"response {responses[i]!r} ({bad.size} non-finite of {len(scores)}); "
            "fix the reward model so it returns finite floats."
        )
    return scores
