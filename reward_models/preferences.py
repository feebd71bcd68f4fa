r"""Preference data: pairwise comparisons and K-way rankings, read from and written to JSONL.

Row shapes, one per line, mixable in one file (other keys, such as ids, labeler names or
timestamps, are ignored):

- a comparison (TRL's standard shape): ``{"prompt": str, "chosen": str, "rejected": str}``
- a ranking of K >= 2 responses, best first: ``{"prompt": str, "responses": [best, ..., worst]}``
- either of the two with an optional ``"weight"`` (a finite number >= 0, default 1): how much the
  row counts in reward-model training, e.g. its labeler's reliability
  (:mod:`reward_models.reliability`); 0 drops the row.
- HH-RLHF (Anthropic/hh-rlhf): ``{"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": ...}``:
  the prompt is the shared text up to and including the last ``"\n\nAssistant:"`` the two
  share, the responses the rest (TRL's ``extract_prompt`` cuts at the first differing
  character instead, which moves shared opening words of the responses into the prompt).
- TRL conversational, ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``,
  or with an implicit prompt ``{"chosen": [messages], "rejected": [messages]}`` whose shared
  leading messages are the prompt (TRL's ``maybe_extract_prompt``).
- UltraFeedback-binarized: ``{"prompt": str, "chosen": [messages], "rejected": [messages],
  "score_chosen": x, "score_rejected": y}``: the conversations hold the user turn, which must
  equal ``prompt``. Scores are optional on any chosen/rejected row; a tie states no
  preference and is skipped (the count goes to stderr), ``score_chosen < score_rejected`` is an error.

Conversations are rendered to text with :mod:`reward_models.chat` (the tokenizer's chat
template, else the plain HH-RLHF transcript), so :class:`Comparison` and :class:`Ranking`
always hold text. Unlabeled samples to rank ("collections") share the ranking shape but
carry no order: ``{"prompt": str, "responses": [...]}``, or ``{"prompt": str, "response": str}``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Any

from reward_models.base import RewardModel, checked_scores
from reward_models.chat import PLAIN_GENERATION_PROMPT, check_messages, is_messages, split_conversation
from rlhf_common.io import DataError, describe_keys, read_jsonl, require_str, write_jsonl_atomic


@dataclass(frozen=True)
class Comparison:
    """One pairwise preference: ``chosen`` is better than ``rejected`` as an answer to ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0
    """How much the comparison counts in training (see the module docstring); 1 by default."""

    @property
    def responses(self) -> tuple[str, str]:
        """The two responses, best first (the same view a :class:`Ranking` gives)."""
        return (self.chosen, self.rejected)

    def pairs(self) -> list[Comparison]:
        """Itself, as the only pair it holds."""
        return [self]

    def to_json(self) -> dict[str, Any]:
        """The JSONL row: ``{"prompt", "chosen", "rejected"}`` (and ``"weight"`` unless it is 1)."""
        return _weighted({"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}, self.weight)


@dataclass(frozen=True)
class Ranking:
    """K >= 2 distinct responses to one prompt, ordered best first."""

    prompt: str
    responses: tuple[str, ...]
    weight: float = 1.0
    """How much the ranking counts in training (see the module docstring); its pairs share it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "responses", tuple(self.responses))
        problem = _responses_problem(self.responses)
        if problem:
            raise ValueError(f"Ranking for prompt {self.prompt[:40]!r}: {problem}")

    def pairs(self) -> list[Comparison]:
        """All C(K, 2) comparisons the ranking implies, each better response as ``chosen``."""
        return [Comparison(self.prompt, a, b, self.weight) for a, b in combinations(self.responses, 2)]

    def to_json(self) -> dict[str, Any]:
        """The JSONL row: ``{"prompt", "responses": [best, ..., worst]}`` (and ``"weight"`` unless it is 1)."""
        return _weighted({"prompt": self.prompt, "responses": list(self.responses)}, self.weight)


def _weighted(row: dict[str, Any], weight: float) -> dict[str, Any]:
    """``row`` with ``"weight"`` added when it is not the default 1, so unweighted files stay as they were."""
    return row if weight == 1.0 else {**row, "weight": weight}


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


def load_preferences(path: str | os.PathLike[str], tokenizer: Any = None) -> list[Preference]:
    """Read and validate a preference JSONL file in any of the module's row shapes.

    Every row is checked; the first problem raises :class:`DataError` naming
    ``file:line``: a missing key, a value of the wrong type, fewer than two responses,
    duplicate responses, a conversation that cannot be split. Conversational rows need
    ``tokenizer`` (the reward model's) to render them. An empty file is an error too.
    """
    items: list[Preference] = []
    ties = 0
    for _, _, item in preference_rows(path, tokenizer):
        if item is None:
            ties += 1
        else:
            items.append(item)
    if ties:
        print(f"load_preferences: skipped {ties} rows of {path} whose score_chosen equals score_rejected "
              "(a tie states no preference).", file=sys.stderr)
    if not items:
        raise DataError(f"{path}: no preference rows; the file is empty" + (f" but for {ties} ties." if ties else "."))
    return items


def preference_rows(
    path: str | os.PathLike[str], tokenizer: Any = None
) -> Iterator[tuple[str, dict[str, Any], Preference | None]]:
    """``(file:line, raw row, parsed row or None for a tie)`` for every row of a preference JSONL.

    The raw row keeps the keys the parsed one drops (e.g. ``"labeler"``); errors as in
    :func:`load_preferences`.
    """
    for line_no, row in read_jsonl(path):
        where = f"{path}:{line_no}"
        yield where, row, _parse_row(row, where, tokenizer)


def _parse_row(row: dict[str, Any], where: str, tokenizer: Any) -> Preference | None:
    """One row as a Comparison or Ranking, or None for a tie; DataError naming ``where`` if it is bad."""
    item = _parse_shape(row, where, tokenizer)
    if item is None or "weight" not in row:
        return item
    weight = row["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise DataError(
            f"{where}: 'weight' must be a finite number >= 0 (how much the row counts in training; 0 drops it), "
            f"got {weight!r:.40}; fix or remove it."
        )
    return replace(item, weight=float(weight))


def _parse_shape(row: dict[str, Any], where: str, tokenizer: Any) -> Preference | None:
    """One row as an unweighted Comparison or Ranking, or None for a tie."""
    if "responses" in row:
        if "chosen" in row or "rejected" in row:
            raise DataError(
                f"{where}: has both 'responses' and 'chosen'/'rejected'; "
                "use one shape per row: a ranking or a comparison."
            )
        prompt = require_str(row, "prompt", where)
        responses = _str_list(row, "responses", where)
        problem = _responses_problem(responses)
        if problem:
            raise DataError(f"{where}: {problem}")
        return Ranking(prompt, responses)
    if "chosen" not in row and "rejected" not in row:
        raise DataError(
            f"{where}: a preference row needs 'chosen' and 'rejected' (a comparison) or "
            f"'responses' (a ranking, best first); keys present: {describe_keys(row)}."
        )
    conversational = _is_conversation(row, "chosen", where)
    if _is_conversation(row, "rejected", where) != conversational:
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be strings or both be message lists.")
    if row["chosen"] == row["rejected"]:
        raise _same_text(where)
    if conversational:
        item = _comparison(*_render_conversations(row, where, tokenizer), where)
    elif "prompt" in row:
        item = _comparison(require_str(row, "prompt", where), row["chosen"], row["rejected"], where)
    else:
        item = _comparison(*_split_hh(row["chosen"], row["rejected"], where), where)
    return None if _is_tie(row, where) else item


def _is_conversation(row: dict[str, Any], key: str, where: str) -> bool:
    """Whether ``row[key]`` is a message list (checked) rather than a string; DataError if it is neither."""
    if key not in row:
        raise DataError(f"{where}: missing key {key!r} (keys present: {describe_keys(row)}).")
    value = row[key]
    if isinstance(value, str):
        return False
    if is_messages(value):
        check_messages(value, where, key)
        return True
    raise DataError(
        f"{where}: {key!r} must be a string or a list of {{'role','content'}} messages, got {type(value).__name__}."
    )


def _is_tie(row: dict[str, Any], where: str) -> bool:
    """Whether the row's optional ``score_chosen``/``score_rejected`` are equal; DataError if they are bad."""
    if "score_chosen" not in row and "score_rejected" not in row:
        return False
    scores = []
    for key in ("score_chosen", "score_rejected"):
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{where}: {key!r} must be a finite number when scores are given, got {value!r:.40}.")
        scores.append(value)
    if scores[0] < scores[1]:
        raise DataError(
            f"{where}: score_chosen={scores[0]} is below score_rejected={scores[1]}; "
            "the chosen response must score at least as high: swap them or fix the scores."
        )
    return scores[0] == scores[1]


def _split_hh(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of an HH-RLHF row: cut after the last turn marker the two texts share."""
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(PLAIN_GENERATION_PROMPT, 0, shared)
    if cut < 0:
        raise DataError(
            f"{where}: no 'prompt' key, and 'chosen' and 'rejected' share no {PLAIN_GENERATION_PROMPT!r} turn, so "
            "the prompt cannot be told apart from the responses (HH-RLHF rows read "
            "'\\n\\nHuman: ...\\n\\nAssistant: ...'); add a 'prompt' key."
        )
    end = cut + len(PLAIN_GENERATION_PROMPT)
    return chosen[:end], chosen[end:], rejected[end:]


def _render_conversations(row: dict[str, Any], where: str, tokenizer: Any) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of a conversational row, explicit, implicit or UltraFeedback prompt."""
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt")
    if prompt is None or isinstance(prompt, str):  # implicit: the shared leading messages are the prompt
        shorter = min(len(chosen), len(rejected))
        n = next((i for i in range(shorter) if chosen[i] != rejected[i]), shorter)
        if n == 0:
            raise DataError(
                f"{where}: 'chosen' and 'rejected' share no leading message, so there is no prompt; "
                "add 'prompt' as a message list."
            )
        if isinstance(prompt, str) and chosen[n - 1]["content"] != prompt:
            raise DataError(
                f"{where}: 'prompt' is not the content of the last message 'chosen' and 'rejected' share "
                f"({chosen[n - 1]['content'][:40]!r}); UltraFeedback rows repeat the user turn in both."
            )
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    elif is_messages(prompt):
        check_messages(prompt, where, "prompt")
    else:
        raise DataError(f"{where}: 'prompt' must be a string or a list of {{'role','content'}} messages.")
    if tokenizer is None:
        raise DataError(
            f"{where}: a conversational row is rendered with the reward model's tokenizer (its chat template, "
            "else the plain transcript); pass tokenizer= to load_preferences (train-rm passes its own)."
        )
    prompt_text, chosen_text = split_conversation(tokenizer, prompt, chosen, f"{where}: 'chosen'")
    return prompt_text, chosen_text, split_conversation(tokenizer, prompt, rejected, f"{where}: 'rejected'")[1]


def _comparison(prompt: str, chosen: str, rejected: str, where: str) -> Comparison:
    if chosen == rejected:
        raise _same_text(where)
    return Comparison(prompt, chosen, rejected)


def _same_text(where: str) -> DataError:
    return DataError(
        f"{where}: 'chosen' and 'rejected' are the same text, which states no preference; "
        "drop the row or fix one of them."
    )


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
