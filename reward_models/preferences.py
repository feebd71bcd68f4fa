"""Preference data: pairwise comparisons and K-way rankings, read from and written to JSONL.

Two row shapes, one per line, mixable in one file:

- a comparison (TRL / HH-RLHF shape): ``{"prompt": str, "chosen": str, "rejected": str}``
- a ranking of K >= 2 responses, best first: ``{"prompt": str, "responses": [best, ..., worst]}``

Other keys (ids, labeler names, timestamps) are kept out of the way: they are ignored.
Unlabeled samples to rank ("collections") share the ranking shape but carry no order:
``{"prompt": str, "responses": [...]}``, or ``{"prompt": str, "response": str}`` for one sample.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from reward_models.base import RewardModel, checked_scores
from rlhf_common.io import DataError, describe_keys, read_jsonl, require_str, write_jsonl_atomic


@dataclass(frozen=True)
class Comparison:
    """One pairwise preference: ``chosen`` is better than ``rejected`` as an answer to ``prompt``."""

    prompt: str
    chosen: str
    rejected: str

    @property
    def responses(self) -> tuple[str, str]:
        """The two responses, best first (the same view a :class:`Ranking` gives)."""
        return (self.chosen, self.rejected)

    def pairs(self) -> list[Comparison]:
        """Itself, as the only pair it holds."""
        return [self]

    def to_json(self) -> dict[str, Any]:
        """The JSONL row: ``{"prompt", "chosen", "rejected"}``."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass(frozen=True)
class Ranking:
    """K >= 2 distinct responses to one prompt, ordered best first."""

    prompt: str
    responses: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "responses", tuple(self.responses))
        problem = _responses_problem(self.responses)
        if problem:
            raise ValueError(f"Ranking for prompt {self.prompt[:40]!r}: {problem}")

    def pairs(self) -> list[Comparison]:
        """All C(K, 2) comparisons the ranking implies, each better response as ``chosen``."""
        return [Comparison(self.prompt, a, b) for a, b in combinations(self.responses, 2)]

    def to_json(self) -> dict[str, Any]:
        """The JSONL row: ``{"prompt", "responses": [best, ..., worst]}``."""
        return {"prompt": self.prompt, "responses": list(self.responses)}


Preference = Comparison | Ranking
"""A row of preference data; both kinds expose ``prompt``, ``responses`` (best first) and ``pairs()``."""


@dataclass(frozen=True)
class PromptResponses:
    """Unranked responses sampled for one prompt: the input of a labeler."""

    prompt: str
    responses: tuple[str, ...]


def to_pairs(items: Iterable[Preference]) -> list[Comparison]:
    """Every comparison in ``items``: a K-way ranking becomes its C(K, 2) pairs."""
    return [pair for item in items for pair in item.pairs()]


def load_preferences(path: str | os.PathLike[str]) -> list[Preference]:
    """Read and validate a preference JSONL file (comparisons and/or rankings).

    Every row is checked; the first problem raises :class:`DataError` naming
    ``file:line``: a missing key, a value of the wrong type, fewer than two
    responses, duplicate responses. An empty file is an error too.
    """
    items: list[Preference] = []
    for line_no, row in read_jsonl(path):
        where = f"{path}:{line_no}"
        if "prompt" not in row:
            raise DataError(
                f"{where}: missing key 'prompt' (keys present: {describe_keys(row)}); every row needs one. "
                'For HH-RLHF rows whose prompt is inside chosen/rejected, add "prompt": "".'
            )
        prompt = require_str(row, "prompt", where)
        if "responses" in row:
            if "chosen" in row or "rejected" in row:
                raise DataError(
                    f"{where}: has both 'responses' and 'chosen'/'rejected'; "
                    "use one shape per row: a ranking or a comparison."
                )
            responses = _str_list(row, "responses", where)
            problem = _responses_problem(responses)
            if problem:
                raise DataError(f"{where}: {problem}")
            items.append(Ranking(prompt, responses))
        elif "chosen" in row or "rejected" in row:
            chosen = require_str(row, "chosen", where)
            rejected = require_str(row, "rejected", where)
            if chosen == rejected:
                raise DataError(
                    f"{where}: 'chosen' and 'rejected' are the same text, which states no preference; "
                    "drop the row or fix one of them."
                )
            items.append(Comparison(prompt, chosen, rejected))
        else:
            raise DataError(
                f"{where}: a preference row needs 'chosen' and 'rejected' (a comparison) or "
                f"'responses' (a ranking, best first); keys present: {describe_keys(row)}."
            )
    if not items:
        raise DataError(f"{path}: no preference rows; the file is empty.")
    return items


def save_preferences(path: str | os.PathLike[str], items: Iterable[Preference]) -> None:
    """Write preference rows as JSONL, atomically (readers never see half a file)."""
    write_jsonl_atomic(path, [item.to_json() for item in items])


def load_collection(path: str | os.PathLike[str]) -> list[PromptResponses]:
    """Read unranked samples: rows ``{"prompt", "responses": [...]}`` or ``{"prompt", "response"}``.

    Responses may repeat (a policy can sample the same text twice); labelers drop
    the repeats. Errors name ``file:line``.
    """
    items = []
    for line_no, row in read_jsonl(path):
        where = f"{path}:{line_no}"
        prompt = require_str(row, "prompt", where)
        if "responses" in row:
            responses = _str_list(row, "responses", where)
            if not responses:
                raise DataError(f"{where}: 'responses' is an empty list; give at least one response.")
        elif "response" in row:
            responses = (require_str(row, "response", where),)
        else:
            raise DataError(
                f"{where}: a sample row needs 'responses' (a list of strings) or 'response' (a string); "
                f"keys present: {describe_keys(row)}."
            )
        items.append(PromptResponses(prompt, responses))
    if not items:
        raise DataError(f"{path}: no sample rows; the file is empty.")
    return items


def _str_list(row: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = row[key]
    if not isinstance(value, list):
        raise DataError(f"{where}: {key!r} must be a list of strings, got {type(value).__name__}.")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise DataError(f"{where}: {key}[{i}] must be a string, got {type(v).__name__}.")
    return tuple(value)


def _responses_problem(responses: Sequence[str]) -> str | None:
    """Why ``responses`` cannot be a ranking, or None."""
    if len(responses) < 2:
        return f"a ranking needs at least 2 responses, got {len(responses)}."
    seen: dict[str, int] = {}
    for i, r in enumerate(responses):
        if r in seen:
            return (
                f"responses[{seen[r]}] and responses[{i}] are the same text ({r[:40]!r}); "
                "a ranking orders distinct responses, so drop the repeat."
            )
        seen[r] = i
    return None


@dataclass(frozen=True)
class PairwiseMetrics:
    """How well scores order preference pairs."""

    accuracy: float
    """Share of pairs scored chosen > rejected (a tie counts one half)."""
    margin: float
    """Mean of score(chosen) - score(rejected) over the pairs."""
    pairs: int
    """Number of pairs evaluated."""


def pairwise_metrics(scores: Sequence[float], items: Sequence[Preference]) -> PairwiseMetrics:
    """Accuracy and margin of ``scores``: one per response of ``items``, flattened in order."""
    scores = list(scores)
    expected = sum(len(item.responses) for item in items)
    if len(scores) != expected:
        raise ValueError(f"got {len(scores)} scores for {expected} responses; pass one score per response.")
    correct = margin = 0.0
    n = start = 0
    for item in items:
        k = len(item.responses)
        s = scores[start : start + k]  # best first
        for i, j in combinations(range(k), 2):
            d = s[i] - s[j]
            correct += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
            margin += d
            n += 1
        start += k
    if n == 0:
        raise ValueError("no preference pairs to evaluate; pass at least one item.")
    return PairwiseMetrics(accuracy=correct / n, margin=float(margin) / n, pairs=n)


def evaluate_preferences(reward_model: RewardModel, items: Sequence[Preference]) -> PairwiseMetrics:
    """Pairwise accuracy and mean margin of any reward model on preference data.

    Each ranking's K responses are scored once (one ``score`` call for all items).
    Against a labeler's data, accuracy is capped by the labelers' own agreement.
    """
    prompts = [item.prompt for item in items for _ in item.responses]
    responses = [r for item in items for r in item.responses]
    return pairwise_metrics(checked_scores(reward_model, prompts, responses), items)
