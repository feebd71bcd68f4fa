"""TextGenerationEnv: one token per action, one response per episode."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from text_env.task import Task


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
    given as `reset(options={"prompt": ...})`.

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
        vocab, window = task.vocab_size, task.window
        self.action_space = spaces.Discrete(vocab)
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, vocab - 1, (window,), np.int64),
                "attention_mask": spaces.Box(0, 1, (window,), np.int64),
            }
        )
        self.prompt: str | None = None
        self.prompt_ids: list[int] = []
        self.response_ids: list[int] = []
        self._mask: np.ndarray | None = None
        self._done = True

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Append one token; score the response if it just ended."""
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first.")
        token = self.task.check_action(action)
        if self._mask is not None and self.task.enforce_action_mask and not self._mask[token]:
            raise ValueError(f"action {token} is masked out at this step; choose one where info['action_mask'] is 1.")
        self.response_ids.append(token)

        reason = self.task.end_reason(self.response_ids)
        reward, info = 0.0, {}
        if reason is not None:
            self._done = True
            rewards, infos = self.task.finish([self.prompt], [self.response_ids], [reason])
            reward, info = float(rewards[0]), infos[0]
        self._update_mask(info)
        return self._obs(), reward, reason is not None, False, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a response to a new prompt (or to ``options["prompt"]``)."""
        super().reset(seed=seed)
        if options and "prompt" in options:
            self.prompt = options["prompt"]
        else:
            self.prompt = self.task.sample_prompt(self.np_random)
        self.prompt_ids = self.task.encode_prompt(self.prompt)
        self.response_ids = []
        self._done = False
        info: dict[str, Any] = {"prompt": self.prompt}
        self._update_mask(info)
        return self._obs(), info

    def render(self) -> str | None:
        """The prompt and the response so far as text (``render_mode="ansi"``)."""
        if self.render_mode != "ansi":
            return None
        return f"{self.prompt}{self.task.response_text(self.response_ids)}"

    def close(self) -> None:
        """Release the task's resources (e.g. the chess critic's engine process)."""
        self.task.close()

    def action_masks(self) -> np.ndarray:
        """Allowed next tokens as a bool array (sb3-contrib's MaskablePPO calls this)."""
        if self._mask is None:
            return np.ones(self.task.vocab_size, dtype=bool)
        return self._mask.astype(bool)

    def _update_mask(self, info: dict[str, Any]) -> None:
        if self.task.action_mask is None or self._done:
            self._mask = None
            return
        self._mask = self.task.mask(self.prompt, self.response_ids)
        info["action_mask"] = self._mask

    def _obs(self) -> dict[str, np.ndarray]:
        tokens = self.prompt_ids + self.response_ids
        window = self.task.window
        input_ids = np.full(window, self.task.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros(window, dtype=np.int64)
        input_ids[window - len(tokens) :] = tokens
        attention_mask[window - len(tokens) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
