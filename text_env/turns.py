"""Multi-turn episodes: what the environment says between the agent's responses.

A task with a turn rule keeps an episode going after a response ends: the rule's game
answers (an opponent's move, a hint, a tool's output) and the agent writes again, one
token per action as before. The env inserts the reply's tokens itself; they are not
actions, so agents give them no policy loss, no KL term and no value target.

The rule is ``turn_rule(prompt, rng) -> Game``: a fresh game per episode, drawn with the
env's RNG (so a seed fixes the hidden number or the opponent's choices). Each time a
response ends, the env calls ``game.reply(response_text)`` and gets a :class:`Reply`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

NextObservation = Literal["conversation", "state"]
"""What the agent sees after the env's reply: the whole conversation so far (the reply appended,
left-truncated to ``max_prompt_tokens``), or the reply alone as a fresh prompt (a rendering of the
new state, e.g. a chess position)."""


@dataclass
class Reply:
    """The environment's turn after the agent's response."""

    text: str | None = None
    """What the agent reads next; None ends the episode (as does the task's ``max_turns``)."""
    reward: float = 0.0
    """Added to the reward model's score of the response just ended (e.g. the game's result)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Merged into the turn's ``info`` (e.g. the opponent's move)."""


@runtime_checkable
class Game(Protocol):
    """One episode's environment side: answers each response of the agent."""

    def reply(self, response: str) -> Reply:
        """The env's answer to ``response`` (text, stop strings cut): the next text, a reward, or the end."""
        ...


RESERVED_INFO_KEYS = frozenset({"prompt", "response", "score", "gold_score", "reward", "reply", "end_reason",
                                "response_length", "turn", "turns", "return", "env_tokens", "restart"})
"""``info`` keys the env writes itself; a game's ``Reply.info`` may not overwrite them."""

TurnRule = Callable[[str, np.random.Generator], Game]
"""``rule(prompt, rng) -> Game``: a new game for an episode starting from ``prompt``, drawing from the env's RNG."""


def check_reply(reply: Any, task_name: str) -> Reply:
    """``reply`` if it is a :class:`Reply` with a finite reward, else a clear error naming the task."""
    if not isinstance(reply, Reply):
        raise TypeError(
            f"Task {task_name!r}: the turn rule's game.reply() returned {type(reply).__name__}; "
            "return a text_env.Reply(text=..., reward=...)."
        )
    if reply.text is not None and not isinstance(reply.text, str):
        raise TypeError(f"Task {task_name!r}: Reply.text is {type(reply.text).__name__}; give a str, or None to end.")
    clash = RESERVED_INFO_KEYS & set(reply.info)
    if clash:
        raise ValueError(f"Task {task_name!r}: Reply.info uses the env's own keys {sorted(clash)}; rename them.")
    if not np.isfinite(reply.reward):
        raise FloatingPointError(
            f"Task {task_name!r}: the turn rule's Reply.reward is {reply.reward}; rewards must be finite."
        )
    return reply
