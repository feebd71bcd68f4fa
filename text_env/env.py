"""TextGenerationEnv: one token per action, one response per episode."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from text_env.episode import EpisodeBatch, game_rng, task_spaces
from text_env.task import Task

_ROW = np.zeros(1, dtype=np.intp)
"""The one row of this env's :class:`EpisodeBatch`."""


class TextGenerationEnv(gym.Env):
    """Generate a response to a prompt, one token per step, scored by a reward model at the end.

    ## Description
    An episode is one response. It starts from a prompt drawn from the task's prompt
    source; each action appends one token; the episode ends when the response ends
    (EOS, a stop string or the length cap) and the task's reward model scores it.

    ## Action Space
    `Discrete(vocab_size)`: the id of the next token. With an action-mask rule, only
    tokens allowed by `info["action_mask"]` (or `action_masks()`) may be chosen, unless
    the task sets `enforce_action_mask=False` (then the mask is advice).

    ## Observation Space
    `Dict(input_ids=Box(int64, (W,)), attention_mask=Box(int64, (W,)))` with
    `W = max_prompt_tokens + max_new_tokens`: prompt then response so far, right-aligned
    (left-padded), so the newest token is always at index -1. Padding slots have
    `attention_mask == 0`; their ids are the pad token.

    ## Rewards
    0 on every step but the last; there, the reward model's score, minus
    `missing_eos_penalty` when the response hit the length cap.

    ## Starting State
    A prompt drawn with the env's RNG (`reset(seed=...)` fixes the sequence), or the one
    given as `reset(options={"prompt": ...})`. On a multi-turn task the episode's game
    (the hidden number, the opponent's random choices) draws from the env's RNG too, or from
    its own `reset(options={"game_seed": int})`: envs given the same prompt and game seed
    face the same game (a group of samples for RLOO and GRPO).

    ## Episode End
    `terminated` on EOS, a stop string or `max_new_tokens`: the response is final, so
    there is nothing to bootstrap. `truncated` is left to outside time limits.
    The final `info` holds `prompt`, `response`, `score` (raw), `end_reason`,
    `response_length` and, when the task has one, `gold_score`.

    ## Arguments
    `task`: a :class:`text_env.Task`; `render_mode`: `None` or `"ansi"`.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, task: Task, render_mode: str | None = None) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'ansi'.")
        self.task = task
        self.render_mode = render_mode
        self.observation_space, self.action_space = task_spaces(task)
        self._episode = EpisodeBatch(task, 1)  # this env is the one-row case of the shared step logic

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Append one token; score the response if it just ended."""
        if self._episode.done[0]:
            raise RuntimeError("step() called on a finished episode; call reset() first.")
        rewards, terminated, infos = self._episode.step(_ROW, [action])
        return self._episode.obs(0), float(rewards[0]), bool(terminated[0]), False, infos[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a response to a new prompt (or to ``options["prompt"]``)."""
        super().reset(seed=seed)
        if options and "prompt" in options:
            prompt = options["prompt"]
        else:
            prompt = self.task.sample_prompt(self.np_random)
        info = self._episode.start(0, prompt, game_rng(options, self.np_random))
        return self._episode.obs(0), info

    def render(self) -> str | None:
        """The prompt and the response so far as text (``render_mode="ansi"``)."""
        if self.render_mode != "ansi":
            return None
        return self._episode.text(0)

    def close(self) -> None:
        """Release the task's resources (e.g. the chess critic's engine process)."""
        self.task.close()

    def action_masks(self) -> np.ndarray:
        """Allowed next tokens as a bool array (sb3-contrib's MaskablePPO calls this)."""
        return self._episode.allowed()[0]

    @property
    def prompt(self) -> str | None:
        """The current episode's prompt (None before the first reset)."""
        return self._episode.prompts[0]
