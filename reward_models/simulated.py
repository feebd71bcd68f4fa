"""Simulated labelers ("AI feedback"): preferences from a gold scorer and a noisy choice model.

A labeler has a utility for each response, ``u = gold(prompt, response) + bias_per_char * len(response)``,
and ranks K responses by sampling a Plackett-Luce ranking: sort by ``u + temperature * Gumbel``.
Any two responses then come out in Bradley-Terry order,
``P(a above b) = sigmoid((u_a - u_b) / temperature)``, because the difference of two
Gumbel variables is logistic. With probability ``flip_prob`` the whole answer is
reversed (a labeler who misreads the scale), which flips every pair in it.

Two labelers never agree on every pair; :func:`agreement` measures how often they
do, and that rate is the ceiling for a reward model's accuracy on their labels.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from reward_models.base import RewardModel, checked_scores
from reward_models.gold import UpbeatGoldScorer
from reward_models.labeling.agreement import pairwise_agreement
from reward_models.preferences import (
    Comparison,
    Preference,
    PromptResponses,
    Ranking,
    load_collection,
)
from rlhf_common.config_cli import add_config_args, config_from_args, run_command
from rlhf_common.io import DataError, write_jsonl_atomic

if TYPE_CHECKING:
    from reward_models.ai_labeler import Labeler


@dataclass
class SimulatedLabeler:
    """Ranks responses like a noisy person whose taste is a gold scorer.

    Example:
        >>> labeler = SimulatedLabeler(temperature=0.0, seed=0)
        >>> labeler.compare("", "What a lovely day!", "I hate this.").chosen
        'What a lovely day!'
    """

    gold: RewardModel = field(default_factory=UpbeatGoldScorer)
    """The labeler's taste: any reward model; the default task's gold scorer by default."""
    temperature: float = 0.2
    """Noise in gold-score units: two responses whose gold scores differ by ``temperature``
    come out in the gold order 73% of the time (sigmoid(1)); 0 ranks exactly by utility."""
    bias_per_char: float = 0.0
    """Systematic bias added to the utility per character of response (> 0: likes long answers)."""
    flip_prob: float = 0.0
    """Probability that a whole answer is reversed (every pair in it flipped)."""
    seed: int | None = 0
    """Seeds the labeler's random choices; None draws fresh entropy."""
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SimulatedLabeler: temperature={self.temperature} must be >= 0.")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"SimulatedLabeler: flip_prob={self.flip_prob} must be in [0, 1].")
        self.rng = np.random.default_rng(self.seed)

    def utilities(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Noise-free utility of each response: gold score plus the length bias."""
        gold = checked_scores(self.gold, prompts, responses)
        return gold + self.bias_per_char * np.array([len(r) for r in responses], dtype=np.float64)

    def label(self, items: Sequence[PromptResponses]) -> list[Ranking]:
        """Rank the responses of every item, best first, with one gold-scorer call in total.

        Repeated responses within an item are dropped (a ranking orders distinct texts);
        items left with fewer than two are skipped, so the result can be shorter than ``items``.
        """
        distinct = [(it.prompt, tuple(dict.fromkeys(it.responses))) for it in items]
        distinct = [(p, rs) for p, rs in distinct if len(rs) >= 2]
        flat_prompts = [p for p, rs in distinct for _ in rs]
        flat_responses = [r for _, rs in distinct for r in rs]
        u = self.utilities(flat_prompts, flat_responses) if flat_responses else np.zeros(0)
        rankings, start = [], 0
        for prompt, responses in distinct:
            k = len(responses)
            rankings.append(Ranking(prompt, self._rank(responses, u[start : start + k])))
            start += k
        return rankings

    def rank(self, prompt: str, responses: Sequence[str]) -> Ranking:
        """Rank the distinct ``responses`` to one prompt, best first."""
        rankings = self.label([PromptResponses(prompt, tuple(responses))])
        if not rankings:
            raise ValueError(f"rank() needs at least 2 distinct responses, got {list(responses)!r}.")
        return rankings[0]

    def compare(self, prompt: str, a: str, b: str) -> Comparison:
        """Choose between two distinct responses."""
        first, second = self.rank(prompt, [a, b]).responses
        return Comparison(prompt, first, second)

    def _rank(self, responses: tuple[str, ...], u: np.ndarray) -> tuple[str, ...]:
        # Gumbel-max trick: sorting u + T * Gumbel draws a Plackett-Luce ranking with
        # weights exp(u / T); T = 0 sorts by utility (ties kept in input order).
        noisy = u + self.temperature * self.rng.gumbel(size=len(u))
        order = np.argsort(-noisy, kind="stable")
        if self.rng.random() < self.flip_prob:
            order = order[::-1]
        return tuple(responses[i] for i in order)


def agreement(a: Sequence[Preference], b: Sequence[Preference]) -> float:
    """Fraction of response pairs that two labelings of the same items order the same way.

    ``a[i]`` and ``b[i]`` must rank the same responses to the same prompt (e.g. two
    labelers' answers to one collection). This inter-labeler agreement is the ceiling
    for a reward model's pairwise accuracy on such labels. The counting is the labeling
    page's (:func:`reward_models.labeling.agreement.pairwise_agreement`), so simulated and
    human agreement mean the same thing.
    """
    if len(a) != len(b):
        raise ValueError(f"agreement: {len(a)} items against {len(b)}; pass two labelings of the same items.")
    labels = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.prompt != y.prompt or sorted(x.responses) != sorted(y.responses):
            raise ValueError(
                f"agreement: item {i} differs in prompt or responses between the two labelings; "
                "both must label the same items in the same order."
            )
        index = {r: j for j, r in enumerate(x.responses)}
        k = len(x.responses)
        labels += [(i, "a", list(range(k)), k), (i, "b", [index[r] for r in y.responses], k)]
    rate = pairwise_agreement(labels).overall.rate
    if rate is None:
        raise ValueError("agreement: no pairs to compare; pass at least one item.")
    return rate


def label_jsonl(
    labeler: Labeler,
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    pairs: bool = False,
    name: str | None = None,
) -> int:
    """Label a collection JSONL (``{"prompt", "responses": [...]}`` rows) into preference rows.

    ``labeler`` is any :class:`~reward_models.ai_labeler.Labeler` (simulated, a scorer, an LM
    judge). Writes rankings (best first), or with ``pairs=True`` every implied comparison,
    atomically to ``dst``, each row with ``"labeler": name`` when a name is given (as the
    labeling page's export); returns the number of rows written.
    """
    rankings = labeler.label(load_collection(src))
    if not rankings:
        raise DataError(f"{src}: no row has two distinct responses, so there is nothing to rank.")
    rows: list[Preference] = [p for r in rankings for p in r.pairs()] if pairs else list(rankings)
    tag = {} if name is None else {"labeler": name}
    write_jsonl_atomic(dst, [{**row.to_json(), **tag} for row in rows])
    return len(rows)


def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym simulate-labels``: rank a collection JSONL with a simulated labeler."""
    p = argparse.ArgumentParser(
        prog="rlhf-gym simulate-labels",
        description="Rank sampled responses with the gold scorer and a noisy Bradley-Terry labeler.",
    )
    p.add_argument("--data", required=True, help='collection JSONL: {"prompt", "responses": [...]} per line')
    p.add_argument("--out", required=True, help="preference JSONL to write")
    p.add_argument("--pairs", action="store_true", help="write chosen/rejected pairs instead of rankings")
    add_config_args(p, SimulatedLabeler, exclude=("gold",))
    args = p.parse_args(argv)

    def main() -> None:
        n = label_jsonl(config_from_args(SimulatedLabeler, args), args.data, args.out, pairs=args.pairs)
        print(f"wrote {n} preference rows to {args.out}")

    return run_command("rlhf-gym simulate-labels", main)
