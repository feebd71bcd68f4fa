"""AI feedback: anything that ranks K responses to a prompt, used as a labeler in place of people.

:class:`Labeler` is the whole interface: ``label(items) -> list[Ranking]``, the same rows
people's labels export to (``rlhf-gym label export``) and :class:`~reward_models.SimulatedLabeler`
writes, so reward-model training, DPO and the agreement counts take them unchanged.

- :class:`ScorerLabeler` ranks by any :class:`~reward_models.RewardModel` (a trained reward
  model, the gold scorer, a Python function): "a scorer as a labeler".
- :class:`LMJudge` prompts a Hugging Face causal LM with a chat template to compare two
  responses (LLM-as-a-judge, Zheng et al. 2023, arXiv:2306.05685; RLAIF, Lee et al. 2023,
  arXiv:2309.00267). The verdict is read from one forward pass: the log-odds
  ``log p("A") - log p("B")`` of the answer's first token, so no text is generated. Each pair
  is shown in both orders and the two log-odds are averaged, ``s = (d_AB - d_BA) / 2``, which
  cancels a constant preference for a position (Zheng et al. 2023 section 3.3 measure how
  much that bias flips verdicts); ``P(a better than b) = sigmoid(s)``.
- K responses are ranked by their expected number of pairwise wins, ``sum_j P(i beats j)``:
  on a complete round robin this orders them as the Bradley-Terry maximum-likelihood
  strengths do (Zermelo 1929; Ford 1957: the likelihood equations set each response's expected
  wins equal to its observed wins, and strength rises with wins), without an iterative fit
  that diverges when one response wins every comparison; unlike Copeland's count of won
  pairs it keeps the judge's confidence and rarely ties.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reward_models.base import RewardModel
from reward_models.chat import render_messages
from reward_models.preferences import PromptResponses, Ranking
from reward_models.simulated import SimulatedLabeler

__all__ = ["JUDGE_PROMPT", "JudgeResult", "LMJudge", "Labeler", "PairVerdict", "ScorerLabeler",
           "rank_by_expected_wins"]

JUDGE_PROMPT = (
    "Two people finished the same sentence.\n\n"
    "Version A: {prompt}{a}\n\n"
    "Version B: {prompt}{b}\n\n"
    "Which version is happier and more positive, and reads as a complete sentence without "
    "repeated words? Answer with one letter, A or B."
)
"""The default judge prompt, one user turn; ``{prompt}``, ``{a}`` and ``{b}`` are filled in verbatim.

It states the default task's labeling guideline (upbeat, finished, not repetitive) the way
instructions to people would, and shows each response after its prompt, as the text reads.
Chosen over two other wordings on SmolLM2-135M-Instruct (README, "AI feedback")."""


@runtime_checkable
class Labeler(Protocol):
    """Anything that ranks the responses to a prompt: a person's export, a simulated labeler, a scorer, an LM judge.

    ``label`` ranks the distinct responses of each item best first; items with fewer than two
    distinct responses are skipped, so the result can be shorter than ``items``.
    """

    def label(self, items: Sequence[PromptResponses]) -> list[Ranking]:
        """One ranking per item that has at least two distinct responses, in item order."""
        ...


@dataclass
class ScorerLabeler:
    """Ranks responses by a reward model's score, highest first (ties keep their input order).

    Example:
        >>> from reward_models import FunctionRewardModel
        >>> by_length = ScorerLabeler(FunctionRewardModel(lambda p, r: len(r)), name="length")
        >>> by_length.label([PromptResponses("Hi", ("yo", "hello"))])[0].responses
        ('hello', 'yo')
    """

    scorer: RewardModel
    """Any reward model: a trained one (``HFRewardModel``), the gold scorer, a wrapped function."""
    name: str = "scorer"
    """The ``labeler`` name written with its labels."""

    def label(self, items: Sequence[PromptResponses]) -> list[Ranking]:
        """Rank every item's distinct responses by score, with one ``score`` call in total."""
        # A noise-free simulated labeler (temperature 0, no flips) ranks exactly by its scorer.
        return SimulatedLabeler(gold=self.scorer, temperature=0.0, seed=0).label(items)


@dataclass(frozen=True)
class PairVerdict:
    """The judge's two readings of one pair: log p("A") - log p("B") with ``a`` shown first, then ``b``."""

    prompt: str
    a: str
    b: str
    a_first: float
    """Log-odds of answer "A" when ``a`` is shown as version A (> 0: ``a`` preferred)."""
    b_first: float
    """Log-odds of answer "A" when ``b`` is shown as version A (> 0: ``b`` preferred)."""

    @property
    def log_odds(self) -> float:
        """Order-averaged log-odds that ``a`` is better than ``b``: a constant pull to one position cancels."""
        return (self.a_first - self.b_first) / 2

    @property
    def consistent(self) -> bool:
        """Whether both orders pick the same response (each order strictly)."""
        return (self.a_first > 0 > self.b_first) or (self.a_first < 0 < self.b_first)


@dataclass
class JudgeResult:
    """What :meth:`LMJudge.judge` found: the rankings and every pair's two readings."""

    rankings: list[Ranking]
    """One ranking per item with two or more distinct responses."""
    verdicts: list[PairVerdict] = field(default_factory=list)
    """Every pair of every ranked item, in item order."""

    @property
    def consistency(self) -> float:
        """Share of pairs judged the same way in both orders (position bias lowers it; random is 0.5)."""
        return float(np.mean([v.consistent for v in self.verdicts])) if self.verdicts else float("nan")

    @property
    def a_share(self) -> float:
        """Share of the 2 x pairs readings that pick "A" (0.5 without position bias)."""
        picks = [x > 0 for v in self.verdicts for x in (v.a_first, v.b_first)]
        return float(np.mean(picks)) if picks else float("nan")

    def summary(self) -> dict[str, float | int]:
        """Counts and the position-bias measures, for reports."""
        return {"rankings": len(self.rankings), "pairs": len(self.verdicts),
                "consistency": round(self.consistency, 4), "a_share": round(self.a_share, 4)}


def rank_by_expected_wins(responses: Sequence[str], win: np.ndarray) -> tuple[str, ...]:
    """``responses`` best first by ``sum_j win[i, j]``, ``win[i, j] = P(i beats j)`` (the diagonal is ignored).

    For a complete round robin this is the Bradley-Terry maximum-likelihood order (module
    docstring); equal sums keep their input order.
    """
    wins = np.where(np.eye(len(responses), dtype=bool), 0.0, win).sum(axis=1)
    return tuple(responses[i] for i in np.argsort(-wins, kind="stable"))


@dataclass
class LMJudge:
    """A causal LM with a chat template as a pairwise judge, both orders shown, K responses ranked.

    ``model`` is any Hugging Face causal LM (``model(input_ids, attention_mask).logits``) and
    ``tokenizer`` its tokenizer; without a chat template the prompt is rendered as the plain
    HH-RLHF transcript (:func:`reward_models.chat.render_messages`). Load SmolLM2-135M-Instruct
    with ``agents.pretrained.smollm2_path()``.
    """

    model: Any
    """The judge: a Hugging Face causal LM, in eval mode."""
    tokenizer: Any
    """Its tokenizer (a pad token is needed; the EOS token is used when it has none)."""
    prompt: str = JUDGE_PROMPT
    """The user turn: a text with the fields ``{prompt}``, ``{a}`` and ``{b}`` and no other braces."""
    choices: tuple[str, str] = ("A", "B")
    """The answers whose first-token log-probs are compared; each must be one token."""
    batch_size: int = 16
    """Judge prompts per forward pass."""
    name: str = "lm-judge"
    """The ``labeler`` name written with its labels."""
    last: JudgeResult | None = field(init=False, default=None, repr=False)
    """The last :meth:`label` call's full result: its pair verdicts and position-bias measures."""
    _choice_ids: tuple[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f is not None}
        if fields != {"prompt", "a", "b"}:
            raise ValueError(f"LMJudge: prompt must contain exactly the fields {{prompt}}, {{a}} and {{b}}, "
                             f"found {sorted(fields)}; write a literal brace as {{{{ or }}}}.")
        ids = [self.tokenizer.encode(c, add_special_tokens=False) for c in self.choices]
        if any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
            raise ValueError(f"LMJudge: choices {self.choices} must each be one distinct token of the tokenizer, "
                             f"got token ids {ids}; pick other answer letters.")
        self._choice_ids = (ids[0][0], ids[1][0])
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.batch_size < 1:
            raise ValueError(f"LMJudge: batch_size={self.batch_size} must be >= 1.")

    def render(self, prompt: str, first: str, second: str) -> str:
        """The judge's input text: the prompt as a user turn and the opening of the assistant's answer."""
        content = self.prompt.format(prompt=prompt, a=first, b=second)
        return render_messages(self.tokenizer, [{"role": "user", "content": content}], add_generation_prompt=True)

    def log_odds(self, texts: Sequence[str]) -> np.ndarray:
        """``log p(choices[0]) - log p(choices[1])`` as the next token after each text; batched by length."""
        import torch

        out = np.zeros(len(texts))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True,
                                 add_special_tokens=False)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            rows = torch.arange(len(chunk), device=device)
            if self.tokenizer.padding_side == "left":
                last = torch.full_like(rows, ids.shape[1] - 1)
            else:
                last = mask.sum(1) - 1  # (B,)
            logp = torch.log_softmax(logits[rows, last].float(), dim=-1)  # (B, V)
            a, b = self._choice_ids
            out[chunk] = (logp[:, a] - logp[:, b]).cpu().numpy()
        return out

    def judge(self, items: Sequence[PromptResponses]) -> JudgeResult:
        """Rank every item's distinct responses from all its pairs, each judged in both orders."""
        groups = [(it.prompt, tuple(dict.fromkeys(it.responses))) for it in items]
        groups = [(p, rs) for p, rs in groups if len(rs) >= 2]
        pairs = [(p, rs[i], rs[j]) for p, rs in groups for i, j in combinations(range(len(rs)), 2)]
        texts = [self.render(p, x, y) for p, a, b in pairs for x, y in ((a, b), (b, a))]
        d = self.log_odds(texts).reshape(-1, 2) if texts else np.zeros((0, 2))  # (pairs, [a first, b first])
        verdicts = [PairVerdict(p, a, b, float(x), float(y)) for (p, a, b), (x, y) in zip(pairs, d, strict=True)]
        rankings, n = [], 0
        for prompt, responses in groups:
            k = len(responses)
            win = np.full((k, k), 0.5)
            for i, j in combinations(range(k), 2):
                win[i, j] = 1.0 / (1.0 + np.exp(-verdicts[n].log_odds))
                win[j, i] = 1.0 - win[i, j]
                n += 1
            rankings.append(Ranking(prompt, rank_by_expected_wins(responses, win)))
        return JudgeResult(rankings, verdicts)

    def label(self, items: Sequence[PromptResponses]) -> list[Ranking]:
        """The :class:`Labeler` interface: :meth:`judge`'s rankings (the whole result is kept as ``last``)."""
        self.last = self.judge(items)
        return self.last.rankings
