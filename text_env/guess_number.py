"""``GuessNumber-v0``: find a hidden number in a few guesses, a multi-turn episode on the text env.

The env draws a secret integer in ``[low, high]`` with its RNG when an episode starts; the
agent writes a guess (digits, then a newline), one character per step; the env answers
``higher`` (the secret is higher than the guess), ``lower``, ``invalid`` (not a number) or
``out of range``, and the agent guesses again, reading the whole conversation. A correct guess
ends the episode. It is the generic :class:`~text_env.TextGenerationEnv` with a turn rule
(:mod:`text_env.turns`): any agent for the text environments acts in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from reward_models import FunctionRewardModel
from text_env.char_tokenizer import char_tokenizer
from text_env.env import TextGenerationEnv
from text_env.factory import prepare_worker
from text_env.task import Task
from text_env.turns import Reply
from text_env.vector_env import TextGenerationVectorEnv

GUESS_NUMBER_POLICY = Path(__file__).resolve().parent / "assets" / "guess_number" / "policy"
"""Shipped default policy (built by ``rlhf-gym guess-number-policy``): a Hugging Face causal-LM folder with
the game's tokenizer, e.g. ``agents.lm.load_policy(GUESS_NUMBER_POLICY)``, plus ``policy.json`` (data, metrics)."""
POLICY_META_FILE = "policy.json"
"""The policy's record beside its weights: settings, SFT result, measured solve rates and turns."""

END_OF_GUESS = "\n"
"""The stop string that ends a guess (EOS ends one too); the env's replies end with it as well."""
HIGHER, LOWER, CORRECT = "higher", "lower", "correct"
"""Feedback on a valid guess: the secret is higher or lower than the guess, or equal (which ends the episode)."""
INVALID, OUT_OF_RANGE = "invalid", "out of range"
"""Feedback on a guess that is not digits, and on a number outside ``[low, high]``."""
FEEDBACK = (HIGHER, LOWER, CORRECT, INVALID, OUT_OF_RANGE)
"""Every value of ``info["feedback"]``."""
PROMPT = "Guess {low}-{high}." + END_OF_GUESS
"""The episode's prompt, formatted with the range."""
ALPHABET = "0123456789" + "".join(sorted(set(PROMPT.format(low="", high="") + "".join(FEEDBACK))))
"""The characters of the game: digits, then the other characters of the prompt and the replies, sorted.

The tokenizer is the same for every range, so one policy can play any ``low``/``high``."""
_DIGITS = re.compile(r"[0-9]+")


def guess_number_tokenizer() -> Any:
    """The game's character tokenizer: pad, bos, eos, unk, then :data:`ALPHABET` (BOS starts every encoding)."""
    return char_tokenizer(ALPHABET)


def parse_guess(text: str) -> int | None:
    """The number a response writes (digits only, leading zeros allowed), or None when it is not one."""
    return int(text) if _DIGITS.fullmatch(text) else None


def no_score(prompt: str, response: str) -> float:
    """The task's reward model: 0 for every response; the game's replies carry the whole reward."""
    return 0.0


@dataclass
class GuessNumberGame:
    """One episode's hidden number and its answers (a :class:`text_env.Game`)."""

    secret: int
    """The number to find."""
    low: int
    """Smallest valid guess."""
    high: int
    """Largest valid guess."""
    max_turns: int
    """The task's turn limit: the game reveals the secret in the info of the last turn."""
    turn_cost: float
    """Subtracted from every turn's reward."""
    solve_reward: float
    """Added on the turn that finds the secret."""
    turns: int = field(default=0, init=False)
    """Responses answered so far."""

    def reply(self, response: str) -> Reply:
        """``higher``/``lower``/``invalid``/``out of range`` and a newline, or the end on a correct guess."""
        self.turns += 1
        guess = parse_guess(response)
        if guess is None:
            feedback = INVALID
        elif not self.low <= guess <= self.high:
            feedback = OUT_OF_RANGE
        else:
            feedback = CORRECT if guess == self.secret else HIGHER if self.secret > guess else LOWER
        solved = feedback == CORRECT
        info: dict[str, Any] = {"feedback": feedback, "solved": solved}
        if guess is not None:
            info["guess"] = guess
        if solved or self.turns >= self.max_turns:
            info["secret"] = self.secret
        reward = (self.solve_reward if solved else 0.0) - self.turn_cost
        return Reply(text=None if solved else feedback + END_OF_GUESS, reward=reward, info=info)


@dataclass
class GuessNumberRule:
    """The turn rule (a :data:`text_env.TurnRule`): a new game with a secret drawn uniformly from the env's RNG."""

    low: int
    """Smallest possible secret."""
    high: int
    """Largest possible secret."""
    max_turns: int
    """The task's turn limit."""
    turn_cost: float
    """Cost of every turn."""
    solve_reward: float
    """Reward for finding the secret."""

    def __call__(self, prompt: str, rng: np.random.Generator) -> GuessNumberGame:
        """A game for an episode starting from ``prompt`` (the secret does not depend on it)."""
        secret = int(rng.integers(self.low, self.high + 1))
        return GuessNumberGame(secret, self.low, self.high, self.max_turns, self.turn_cost, self.solve_reward)


def guess_number_task(
    low: int = 1, high: int = 100, max_turns: int = 10, turn_cost: float = 0.05, solve_reward: float = 1.0
) -> Task:
    """The guess-the-number task; the window holds the whole conversation of ``max_turns`` turns uncut.

    Raises ValueError on a range that is empty or negative, a turn limit below 1 (the Task's check)
    or a cost or reward that is not finite.
    """
    prepare_worker()
    for name, value in (("low", low), ("high", high), ("max_turns", max_turns)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"GuessNumber-v0: {name}={value!r} must be an integer.")
    if not 0 <= low < high:
        raise ValueError(f"GuessNumber-v0: low={low}, high={high}; need 0 <= low < high (e.g. low=1, high=100).")
    if not (np.isfinite(turn_cost) and np.isfinite(solve_reward)):
        raise ValueError(f"GuessNumber-v0: turn_cost={turn_cost} and solve_reward={solve_reward} must be finite.")
    tokenizer = guess_number_tokenizer()
    prompt = PROMPT.format(low=low, high=high)
    max_new_tokens = len(str(high)) + len(END_OF_GUESS)  # the longest valid guess and its newline
    longest_reply = max(len(f + END_OF_GUESS) for f in FEEDBACK)
    prompt_tokens = len(tokenizer(prompt)["input_ids"])
    return Task(
        prompts=[prompt],
        tokenizer=tokenizer,
        reward_model=FunctionRewardModel(no_score),
        max_new_tokens=max_new_tokens,
        # Every earlier turn (a response of any length and the longest reply) fits: the conversation is never cut.
        max_prompt_tokens=prompt_tokens + max(max_turns - 1, 0) * (max_new_tokens + longest_reply),
        stop_strings=(END_OF_GUESS,),
        long_prompt="error",
        turn_rule=GuessNumberRule(int(low), int(high), max_turns, float(turn_cost), float(solve_reward)),
        max_turns=max_turns,
        next_observation="conversation",
        default_policy=str(GUESS_NUMBER_POLICY),  # built for 1 to 100 in 10 turns; it reads up to 192 tokens
        name="guess_number",
    )


def make_guess_number_env(
    low: int = 1,
    high: int = 100,
    max_turns: int = 10,
    turn_cost: float = 0.05,
    solve_reward: float = 1.0,
    render_mode: str | None = None,
) -> TextGenerationEnv:
    r"""``GuessNumber-v0``: find a hidden number with higher/lower hints, one character per step.

    ## Description
    The env holds a secret integer drawn uniformly from `[low, high]` (default 1 to 100). The
    prompt is `"Guess 1-100.\n"`; the agent writes a guess, digits ended by a
    newline (or EOS), one character per step; the env answers `"higher\n"` (the secret is higher
    than the guess), `"lower\n"`, `"invalid\n"` (the response is not digits) or `"out of range\n"`
    and the agent guesses again, seeing the whole conversation. Bisection needs at most
    `ceil(log2(high - low + 2))` guesses (7 for 1 to 100). Agents given no policy load the shipped
    one (`task.default_policy`, :data:`GUESS_NUMBER_POLICY`), an SFT policy that solves 43% of games.

    ## Action Space
    `Discrete(36)` over the character tokenizer of `guess_number_tokenizer()`: pad, bos, eos, unk,
    the digits, newline, space, hyphen, period and the letters of the prompt and the replies.

    ## Observation Space
    `Dict(input_ids=Box(int64, (W,)), attention_mask=Box(int64, (W,)))`: BOS, the prompt, every
    finished guess and reply, and the guess so far, right-aligned and left-padded. `W` is sized so
    that `max_turns` turns are never cut (171 for the defaults). Env-inserted reply tokens arrive
    with the step that ends a guess (`info["env_tokens"]`).

    ## Rewards
    On the step that ends each guess: `-turn_cost` (default 0.05), plus `solve_reward` (default 1)
    when the guess is right; 0 on the other steps. The return of a game solved in `t` turns is
    `solve_reward - turn_cost * t`; of an unsolved game `-turn_cost * max_turns`.

    ## Starting State
    The one prompt; the secret is drawn with the env's RNG, so `reset(seed=...)` fixes it.

    ## Episode End
    `terminated` on a correct guess or after `max_turns` guesses (default 10). The final `info`
    holds `solved`, `turns`, `return`, `secret`, the last `guess` and `feedback`, `response`
    (the transcript after the prompt) and the per-turn `turn_scores`.

    ## Arguments
    * `low`, `high`: the range of the secret (integers, `0 <= low < high`).
    * `max_turns`: guesses allowed (>= 1).
    * `turn_cost`, `solve_reward`: the reward (see above).
    * `render_mode`: `None` or `"ansi"` (the conversation so far).

    ```python
    env = gym.make("GuessNumber-v0", high=1000, max_turns=12)
    ```

    ## Version History
    * v0: initial version.
    """
    return TextGenerationEnv(guess_number_task(low, high, max_turns, turn_cost, solve_reward), render_mode=render_mode)


def make_guess_number_vector_env(
    num_envs: int,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
    **options: Any,
) -> TextGenerationVectorEnv:
    """``num_envs`` games stepped together; ``options`` are :func:`make_guess_number_env`'s (``low``, ``high``, ...)."""
    task = guess_number_task(**options)
    return TextGenerationVectorEnv(task, num_envs, autoreset_mode=autoreset_mode, render_mode=render_mode)
