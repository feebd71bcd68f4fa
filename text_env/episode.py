"""The step logic of text episodes, written once for a batch: both environments step an :class:`EpisodeBatch`.

:class:`~text_env.TextGenerationEnv` is the one-row case; :class:`~text_env.TextGenerationVectorEnv`
adds autoreset and per-sub-env seeding around the same batch, which is why the two agree step for
step (tests/test_vector_env.py) and why the vector env scores every episode ending on a step in one
reward-model call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from text_env.task import Prompt, Task


def task_spaces(task: Task) -> tuple[spaces.Dict, spaces.Discrete]:
    """One env's observation and action spaces: a right-aligned window of token ids, one token per action."""
    vocab, window = task.vocab_size, task.window
    observation_space = spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab - 1, (window,), np.int64),
            "attention_mask": spaces.Box(0, 1, (window,), np.int64),
        }
    )
    return observation_space, spaces.Discrete(vocab)


class EpisodeBatch:
    """``n`` episodes of one task: the observation windows, prompts, responses, action masks, done flags.

    Row ``i`` holds prompt then response right-aligned in ``input_ids[i]`` (left padding has
    ``attention_mask == 0`` and the pad id), so the newest token is always at column -1.
    A row whose episode is over keeps its last observation and allows every token.
    """

    def __init__(self, task: Task, n: int, name_rows: bool = False) -> None:
        self.task = task
        self.name_rows = name_rows  # errors name the row as "sub-env i" (the vector env)
        self.input_ids = np.full((n, task.window), task.pad_token_id, dtype=np.int64)  # (n, W)
        self.attention_mask = np.zeros((n, task.window), dtype=np.int64)  # (n, W)
        self.prompts: list[str | None] = [None] * n
        self.response_ids: list[list[int]] = [[] for _ in range(n)]
        self.done = np.ones(n, dtype=bool)  # (n,) episode over (or never started)
        self.masks: np.ndarray | None = None  # (n, V) int8 allowed next tokens, once a masked task starts a row

    def start(self, i: int, prompt: Prompt) -> dict[str, Any]:
        """Start row ``i``'s episode from ``prompt`` (text, or a conversation the task renders); returns ``info``."""
        prompt = self.task.render_prompt(prompt)
        ids = self.task.encode_prompt(prompt)
        self.prompts[i] = prompt
        self.response_ids[i] = []
        self.done[i] = False
        self.input_ids[i] = self.task.pad_token_id
        self.attention_mask[i] = 0
        self.input_ids[i, -len(ids) :] = ids
        self.attention_mask[i, -len(ids) :] = 1
        info: dict[str, Any] = {"prompt": prompt}
        if self.task.action_mask is not None:
            if self.masks is None:
                self.masks = np.ones((len(self.done), self.task.vocab_size), dtype=np.int8)
            info["action_mask"] = self.masks[i] = self.task.mask(prompt, [])
        return info

    def step(self, rows: np.ndarray, actions: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Append ``actions[j]`` to running row ``rows[j]``; score the responses that end, in one call.

        Returns per stepped row: the reward (float64, 0 unless the episode ended), whether it
        ended (``terminated``), and its ``info`` (the final info, or the next action mask).
        Raises TypeError / ValueError, before changing anything, on an action that is not an
        allowed token id.
        """
        task = self.task
        tokens = [task.check_action(a) for a in actions]
        if self.masks is not None and task.enforce_action_mask:
            for i, t in zip(rows, tokens, strict=True):
                if not self.masks[i, t]:
                    row = f" of sub-env {i}" if self.name_rows else ""
                    raise ValueError(
                        f"action {t}{row} is masked out at this step; choose one where info['action_mask'] is 1."
                    )
        # Shift the right-aligned window one slot left and write the new token last.
        self.input_ids[rows, :-1] = self.input_ids[rows, 1:]
        self.attention_mask[rows, :-1] = self.attention_mask[rows, 1:]
        self.input_ids[rows, -1] = tokens
        self.attention_mask[rows, -1] = 1

        rewards = np.zeros(len(rows), dtype=np.float64)
        infos: list[dict[str, Any]] = [{} for _ in rows]
        ended, reasons = [], []
        for j, (i, t) in enumerate(zip(rows, tokens, strict=True)):
            self.response_ids[i].append(t)
            reason = task.end_reason(self.response_ids[i])
            if reason is not None:
                ended.append(j)
                reasons.append(reason)
        if ended:
            finished = rows[ended]
            final_rewards, final_infos = task.finish(
                [self.prompts[i] for i in finished], [self.response_ids[i] for i in finished], reasons
            )
            rewards[ended] = final_rewards
            self.done[finished] = True
            if self.masks is not None:
                self.masks[finished] = 1  # nothing is masked once an episode is over
            for j, info in zip(ended, final_infos, strict=True):
                infos[j] = info
        if task.action_mask is not None:
            for j, i in enumerate(rows):
                if not self.done[i]:
                    infos[j]["action_mask"] = self.masks[i] = task.mask(self.prompts[i], self.response_ids[i])
        return rewards, self.done[rows], infos

    def allowed(self) -> np.ndarray:
        """Allowed next tokens, bool ``(n, vocab_size)``; all True without a mask rule or after the end."""
        if self.masks is None:
            return np.ones((len(self.done), self.task.vocab_size), dtype=bool)
        return self.masks.astype(bool)

    def text(self, i: int) -> str:
        """Row ``i``'s prompt and response so far."""
        return f"{self.prompts[i]}{self.task.response_text(self.response_ids[i])}"

    def obs(self, i: int | None = None) -> dict[str, np.ndarray]:
        """A copy of the observation of row ``i`` ``(W,)``, or of every row ``(n, W)``."""
        rows = slice(None) if i is None else i
        return {"input_ids": self.input_ids[rows].copy(), "attention_mask": self.attention_mask[rows].copy()}
