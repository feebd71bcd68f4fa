"""``Arithmetic-v0``: answer an arithmetic problem such as ``37+45=``, one character per step.

A verifiable-reward task on the generic text env: the prompt is a problem, the response
the answer in decimal, and the reward model an exact-match verifier (optionally with
partial credit). Prompts are drawn from the env's RNG, so any seed gives endless
problems; one problem in :data:`HELD_OUT_BUCKETS` is held out by a hash of the problem
(:meth:`Problem.held_out`) and never drawn for training, and :func:`eval_problems` draws a
fixed evaluation set from those. The default policy (``text_env/assets/arithmetic/policy``)
is rebuilt by ``rlhf-gym arithmetic-policy`` (:mod:`rlhf_gym.build.arithmetic_policy`).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gymnasium.vector import AutoresetMode
from transformers import PreTrainedTokenizerFast

from text_env.char_tokenizer import char_tokenizer
from text_env.env import TextGenerationEnv
from text_env.factory import prepare_worker
from text_env.task import Prompt, Task
from text_env.vector_env import TextGenerationVectorEnv

OPERATIONS = "+-*"
"""Every supported operation: addition, subtraction (answers may be negative) and multiplication."""
ARITHMETIC_ALPHABET = "0123456789+-*="
"""The tokenizer's characters: digits, the operations (``-`` is also an answer's sign) and ``=``."""
HELD_OUT_BUCKETS = 10
"""One problem in this many is held out: those whose CRC-32 (of the text with the operands of ``+`` and
``*`` sorted, so ``45+37`` goes with ``37+45``) is 0 modulo it. Training never draws them."""
ASSETS = Path(__file__).resolve().parent / "assets" / "arithmetic"
"""Folder of the shipped arithmetic assets."""
ARITHMETIC_POLICY = ASSETS / "policy"
"""The default policy (``rlhf-gym arithmetic-policy``): a Hugging Face causal-LM folder with the
arithmetic tokenizer, e.g. ``agents.lm.load_policy(ARITHMETIC_POLICY)``, plus ``policy.json`` and ``MODEL_CARD.md``."""
POLICY_META_FILE = "policy.json"
"""The default policy's record beside its weights: build settings, SFT metrics, held-out exact match."""

_PROBLEM = re.compile(r"(0|[1-9]\d*)([-+*])(0|[1-9]\d*)=")
_INTEGER = re.compile(r"-?\d+")
_PROBLEM_FORM = "a number, one of + - *, a number and '=', no spaces or leading zeros, e.g. '37+45='"


@dataclass(frozen=True)
class Problem:
    """One problem: ``a op b``."""

    a: int
    """Left operand (>= 0)."""
    op: str
    """One of :data:`OPERATIONS`."""
    b: int
    """Right operand (>= 0)."""

    @property
    def text(self) -> str:
        """The prompt: ``"37+45="``."""
        return f"{self.a}{self.op}{self.b}="

    @property
    def answer(self) -> str:
        """The exact answer in decimal, ``-`` first when negative."""
        value = {"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op]
        return str(value)

    @property
    def held_out(self) -> bool:
        """Whether the problem belongs to the held-out set (see :data:`HELD_OUT_BUCKETS`)."""
        a, b = (min(self.a, self.b), max(self.a, self.b)) if self.op in "+*" else (self.a, self.b)
        return zlib.crc32(f"{a}{self.op}{b}".encode()) % HELD_OUT_BUCKETS == 0


def parse_problem(prompt: str, what: str = "prompt") -> Problem:
    """The problem a prompt states; a ValueError names ``what`` and the expected form."""
    match = _PROBLEM.fullmatch(prompt) if isinstance(prompt, str) else None
    if match is None:
        raise ValueError(f"Arithmetic-v0: {what} {prompt!r} is not an arithmetic problem; write {_PROBLEM_FORM}.")
    return Problem(int(match[1]), match[2], int(match[3]))


@dataclass
class ArithmeticConfig:
    """The options of ``Arithmetic-v0`` (``gym.make("Arithmetic-v0", digits=3, operations="+")``)."""

    digits: int = 2
    """Operands have exactly this many digits (``10..99`` for 2; ``0..9`` for 1; at most 9), drawn uniformly:
    one fixed layout, so the difficulty is the arithmetic, not finding the digits."""
    operations: str = "+*"
    """Which of ``+``, ``-``, ``*`` to draw from, uniformly: addition is learnable by a tiny model, two-digit
    multiplication hard, so the default policy is right on part of the problems and RL has room on both."""
    partial_credit: bool = False
    """Reward with partial credit (:func:`partial_credit`) instead of exact match (1 or 0). The gold score and
    ``info["correct"]`` stay exact match."""
    max_new_tokens: int | None = None
    """Length cap of an answer; None: the longest possible answer plus one token for EOS."""
    split: Literal["train", "eval"] = "train"
    """``"train"``: endless problems from the env's RNG, held-out ones skipped; ``"eval"``: the fixed
    held-out set of :func:`eval_problems`, drawn uniformly (for measuring a policy before and after RL)."""
    seed: int = 0
    """Seeds the draw of the held-out evaluation set (the env's own seed draws the training problems)."""
    eval_size: int = 500
    """Problems in the held-out evaluation set (fewer when the held-out part of the problem space is smaller)."""

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or not 1 <= self.digits <= 9:
            raise ValueError(
                f"Arithmetic-v0: digits={self.digits!r}; give an integer from 1 to 9 (e.g. digits=2): problems are "
                "drawn by a 64-bit number."
            )
        unknown = sorted(set(self.operations) - set(OPERATIONS)) if isinstance(self.operations, str) else None
        if unknown is None or unknown or not self.operations:
            raise ValueError(
                f"Arithmetic-v0: operations={self.operations!r}; give a non-empty string of operations from "
                f"{OPERATIONS!r} (e.g. operations='+*'){f', not {unknown}' if unknown else ''}."
            )
        self.operations = "".join(dict.fromkeys(self.operations))
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"Arithmetic-v0: max_new_tokens={self.max_new_tokens}; give >= 1 (None: the default).")
        if self.split not in ("train", "eval"):
            raise ValueError(f"Arithmetic-v0: split={self.split!r}; use 'train' or 'eval'.")
        if self.eval_size < 1:
            raise ValueError(f"Arithmetic-v0: eval_size={self.eval_size}; give >= 1.")

    @property
    def answer_chars(self) -> int:
        """Characters of the longest possible answer (a sign counts)."""
        return max({"+": self.digits + 1, "-": self.digits + 1, "*": 2 * self.digits}[op] for op in self.operations)

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the longest prompt: BOS, two operands, the operation and ``=``."""
        return 2 * self.digits + 3

    @property
    def smallest(self) -> int:
        """The smallest operand: ``10**(digits - 1)``, or 0 for one digit."""
        return 10 ** (self.digits - 1) if self.digits > 1 else 0

    @property
    def space(self) -> int:
        """Number of distinct problems."""
        return len(self.operations) * (10**self.digits - self.smallest) ** 2

    def problem_at(self, index: int) -> Problem:
        """Problem number ``index`` in ``range(space)``: operation, then left operand, then right operand."""
        lo, n = self.smallest, 10**self.digits - self.smallest
        return Problem(lo + (index // n) % n, self.operations[index // (n * n)], lo + index % n)

    def train_problem(self, rng: np.random.Generator) -> Problem:
        """A problem drawn uniformly with ``rng`` among those not held out."""
        while True:
            problem = self.problem_at(int(rng.integers(self.space)))
            if not problem.held_out:
                return problem

    def train_prompt(self, rng: np.random.Generator) -> str:
        """The prompt source of the ``"train"`` split: :meth:`train_problem`'s text."""
        return self.train_problem(rng).text

    def check_problem(self, problem: Problem, what: str = "prompt") -> None:
        """Raise a ValueError naming ``what`` when the problem is outside these options."""
        if problem.op not in self.operations:
            raise ValueError(
                f"Arithmetic-v0: {what} {problem.text!r} uses {problem.op!r}, not one of operations="
                f"{self.operations!r}; add it to operations or give another problem."
            )
        if not self.smallest <= min(problem.a, problem.b) <= max(problem.a, problem.b) < 10**self.digits:
            raise ValueError(
                f"Arithmetic-v0: {what} {problem.text!r} needs operands of exactly digits={self.digits} digits "
                f"({self.smallest} to {10**self.digits - 1}); set digits to match or give another problem."
            )


def eval_problems(config: ArithmeticConfig | None = None) -> list[Problem]:
    """The fixed held-out evaluation set of ``config``: ``eval_size`` distinct held-out problems drawn with ``seed``."""
    config = config or ArithmeticConfig()
    return list(_eval_problems(config.digits, config.operations, config.seed, config.eval_size))


@cache
def _eval_problems(digits: int, operations: str, seed: int, eval_size: int) -> tuple[Problem, ...]:
    config = ArithmeticConfig(digits=digits, operations=operations, seed=seed, eval_size=eval_size)
    chosen: dict[str, Problem] = {}
    for index in _candidates(np.random.default_rng(seed), config.space):
        problem = config.problem_at(index)
        if problem.held_out:
            chosen.setdefault(problem.text, problem)
            if len(chosen) == eval_size:
                break
    if not chosen:
        raise ValueError(f"Arithmetic-v0: digits={digits}, operations={operations!r} hold out nothing; raise digits.")
    return tuple(chosen.values())


def _candidates(rng: np.random.Generator, space: int) -> Iterator[int]:
    """Problem indices in random order: every one once for a small space, else independent draws."""
    if space <= 2_000_000:
        yield from rng.permutation(space).tolist()
    else:  # a draw repeats with probability < eval_size / space: negligible, and repeats are skipped
        while True:
            yield from rng.integers(space, size=4096).tolist()


def partial_credit(response: str, answer: str) -> float:
    """1 for the exact answer; else the share of matching characters, aligned from the right.

    Both are compared as strings right-aligned (units under units, a sign under the first
    digit): the number of positions where they agree over the longer length, so a missing
    or extra digit costs one position. A response that is not an integer (``-`` then digits)
    scores 0. E.g. answer ``"82"``: ``"82"`` 1, ``"72"`` 0.5, ``"182"`` 2/3, ``"8"`` 0, ``"x"`` 0.
    """
    if response == answer:
        return 1.0
    if not _INTEGER.fullmatch(response):
        return 0.0
    matches = sum(r == a for r, a in zip(reversed(response), reversed(answer), strict=False))
    return matches / max(len(response), len(answer))


@dataclass
class ArithmeticVerifier:
    """A :class:`~reward_models.RewardModel` that checks answers: 1 for the exact answer, else 0.

    The prompt is parsed (:func:`parse_problem`), the response stripped of surrounding
    whitespace and compared with the answer as text (``"082"`` is not ``"82"``). With
    ``partial_credit`` a wrong answer scores :func:`partial_credit` instead of 0.

    Example:
        >>> ArithmeticVerifier().score(["37+45=", "9*9="], ["82", "80"]).tolist()
        [1.0, 0.0]
    """

    partial_credit: bool = False
    """Score wrong answers by the share of right characters instead of 0."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """One score per (problem, answer) pair, float64 ``(len(prompts),)``."""
        scores = np.zeros(len(prompts), dtype=np.float64)
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            answer, text = parse_problem(prompt, f"prompts[{i}]").answer, response.strip()
            scores[i] = partial_credit(text, answer) if self.partial_credit else float(text == answer)
        return scores


def answer_info(prompt: str, response: str) -> dict[str, Any]:
    """What the final ``info`` adds: ``answer`` (the right one) and ``correct`` (exact match)."""
    answer = parse_problem(prompt).answer
    return {"answer": answer, "correct": response.strip() == answer}


def arithmetic_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer of the task: pad, bos, eos, unk, then :data:`ARITHMETIC_ALPHABET`."""
    return char_tokenizer(ARITHMETIC_ALPHABET)


@dataclass
class ArithmeticTask(Task):
    """A :class:`~text_env.Task` that checks every prompt is a problem within its options."""

    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    """The options prompts must fit (operations, digits)."""

    def render_prompt(self, prompt: Prompt, what: str = "prompt") -> str:
        """The prompt as text, refused with a ValueError unless it is a problem these options allow."""
        text = super().render_prompt(prompt, what)
        self.arithmetic.check_problem(parse_problem(text, what), what)
        return text


def arithmetic_task(config: ArithmeticConfig | None = None, **options: Any) -> ArithmeticTask:
    """The arithmetic task of ``config`` (or of ``ArithmeticConfig(**options)``)."""
    prepare_worker()
    if config is not None and options:
        raise TypeError(f"pass either config or the options {sorted(options)}, not both.")
    config = config or ArithmeticConfig(**options)
    prompts = config.train_prompt if config.split == "train" else [p.text for p in eval_problems(config)]
    return ArithmeticTask(
        prompts=prompts,
        tokenizer=arithmetic_tokenizer(),
        reward_model=ArithmeticVerifier(partial_credit=config.partial_credit),
        gold_scorer=ArithmeticVerifier(),
        max_new_tokens=config.max_new_tokens or config.answer_chars + 1,
        max_prompt_tokens=config.prompt_tokens,
        long_prompt="error",
        info_fn=answer_info,
        default_policy=str(ARITHMETIC_POLICY),
        name="arithmetic",
        arithmetic=config,
    )


def make_arithmetic_env(render_mode: str | None = None, **options: Any) -> TextGenerationEnv:
    """``Arithmetic-v0``: answer an arithmetic problem, one character per step.

    ## Description
    The prompt is a problem such as ``37+45=``; the response is its answer in decimal
    (``82``, ``-33``, ``1554``) followed by EOS, one character per step. The verifier
    checks it when the response ends. This is the generic :class:`~text_env.TextGenerationEnv`
    with an arithmetic :class:`~text_env.Task`, so any agent for the text envs works here.

    ## Action Space
    `Discrete(18)`: pad, bos, eos, unk and the characters `0-9 + - * =`.

    ## Observation Space
    `Dict(input_ids=Box(int64, (W,)), attention_mask=Box(int64, (W,)))`: BOS, the problem and the
    answer so far, right-aligned and left-padded; `W = (2 digits + 3) + max_new_tokens` (12 by default).

    ## Rewards
    0 on every step but the last; there, 1 for the exact answer and 0 otherwise, or with
    `partial_credit=True` the share of right characters aligned from the right
    (:func:`partial_credit`). `info["gold_score"]` is always exact match.

    ## Starting State
    A problem drawn with the env's RNG: operands of exactly `digits` digits, an operation from
    `operations`; held-out problems are skipped (`split="train"`), or only the fixed held-out
    set is drawn (`split="eval"`). `reset(options={"prompt": "12*34="})` starts from a given problem.

    ## Episode End
    `terminated` at EOS or after `max_new_tokens` characters; the final `info` holds `prompt`,
    `response`, `score`, `gold_score`, `end_reason`, `response_length`, `answer` and `correct`.

    ## Arguments
    `render_mode` (`None` or `"ansi"`) and the fields of :class:`ArithmeticConfig`: `digits` (2),
    `operations` (`"+*"`), `partial_credit` (False), `max_new_tokens`, `split` (`"train"`), `seed` (0)
    and `eval_size` (500) of the held-out set.

    ## Version History
    * v0: initial version.
    """
    return TextGenerationEnv(arithmetic_task(**options), render_mode=render_mode)


def make_arithmetic_vector_env(
    num_envs: int,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
    **options: Any,
) -> TextGenerationVectorEnv:
    """``num_envs`` arithmetic episodes stepped together, verified in one call per step."""
    return TextGenerationVectorEnv(
        arithmetic_task(**options), num_envs, autoreset_mode=autoreset_mode, render_mode=render_mode
    )
