"""The step logic of text episodes, written once for a batch: both environments step an :class:`EpisodeBatch`.

:class:`~text_env.TextGenerationEnv` is the one-row case; :class:`~text_env.TextGenerationVectorEnv`
adds autoreset and per-sub-env seeding around the same batch, which is why the two agree step for
step (tests/test_vector_env.py) and why the vector env scores every episode ending on a step in one
reward-model call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from text_env.task import Prompt, Task
from text_env.turns import Game, check_reply


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


def game_rng(options: dict[str, Any] | None, env_rng: np.random.Generator | None) -> np.random.Generator | None:
    """The RNG an episode's game draws from: ``options["game_seed"]``'s own, else the env's.

    A seed of its own lets several envs face the same game (the same hidden number, the same
    stream of opponent choices), which is what a group of samples of one prompt compares.
    """
    seed = (options or {}).get("game_seed")
    if seed is None:
        return env_rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"reset(options={{'game_seed': {seed!r}}}): game_seed must be a non-negative int or None.")
    return np.random.default_rng(int(seed))


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
        # Multi-turn state (a task with a turn rule, text_env/turns.py): the text the current response answers
        # (what the reward model and mask rule read), the game, and the finished turns.
        self.warned_truncation = False
        self.contexts: list[str | None] = [None] * n
        self.games: list[Game | None] = [None] * n
        self.turns: list[list[dict[str, Any]]] = [[] for _ in range(n)]

    def start(self, i: int, prompt: Prompt, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Start row ``i``'s episode from ``prompt`` (text, or a conversation the task renders); returns ``info``.

        ``rng`` (the env's) draws the episode's game when the task has a turn rule.
        """
        task = self.task
        prompt = task.render_prompt(prompt)
        ids = task.encode_prompt(prompt)
        self.prompts[i] = self.contexts[i] = prompt
        self.response_ids[i] = []
        self.turns[i] = []
        if task.turn_rule is not None:
            if rng is None:
                raise ValueError(f"Task {task.name!r} has a turn rule: starting an episode needs the env's rng.")
            self.games[i] = task.turn_rule(prompt, rng)
        self.done[i] = False
        self._set_window(i, ids)
        info: dict[str, Any] = {"prompt": prompt}
        if task.action_mask is not None:
            if self.masks is None:
                self.masks = np.ones((len(self.done), task.vocab_size), dtype=np.int8)
            info["action_mask"] = self.masks[i] = task.mask(prompt, [])
        return info

    def _set_window(self, i: int, ids: Sequence[int]) -> None:
        """Row ``i``'s window holds exactly ``ids``, right-aligned."""
        self.input_ids[i] = self.task.pad_token_id
        self.attention_mask[i] = 0
        self.input_ids[i, -len(ids) :] = ids
        self.attention_mask[i, -len(ids) :] = 1

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
            turn_rewards, turn_infos = task.finish(
                [self.contexts[i] for i in finished], [self.response_ids[i] for i in finished], reasons
            )
            if task.turn_rule is None:
                rewards[ended] = turn_rewards
                self.done[finished] = True
                for j, info in zip(ended, turn_infos, strict=True):
                    infos[j] = info
            else:  # the game replies: the episode goes on or ends
                for j, i, reward, info in zip(ended, finished, turn_rewards, turn_infos, strict=True):
                    rewards[j], infos[j] = self._next_turn(i, reward, info)
            if self.masks is not None:
                self.masks[finished[self.done[finished]]] = 1  # nothing is masked once an episode is over
        if task.action_mask is not None:
            for j, i in enumerate(rows):
                if not self.done[i]:
                    infos[j]["action_mask"] = self.masks[i] = task.mask(self.contexts[i], self.response_ids[i])
        return rewards, self.done[rows], infos

    def _next_turn(self, i: int, reward: float, info: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Row ``i``'s response ended with ``reward`` and ``info``: let the game reply, then go on or end.

        Returns the turn's reward (the reward model's score plus the game's) and the step's ``info``:
        going on, the turn's info with ``reply``, ``env_tokens`` (what a model reads next) and ``restart``
        (whether those tokens replace the context instead of extending it); at the end, the episode's.
        """
        task, turns = self.task, self.turns[i]
        reply = check_reply(self.games[i].reply(info["response"]), task.name)
        reward = float(reward) + reply.reward
        over = reply.text is None or len(turns) + 1 >= task.max_turns
        turns.append({**info, **reply.info, "reward": reward, "reply": None if over else reply.text})
        self.response_ids[i] = []
        if over:
            self.done[i] = True
            return reward, self._episode_info(i)
        ids = task.encode_reply(reply.text)
        restart = task.next_observation == "state"
        if restart:
            self.contexts[i] = reply.text
            self._set_window(i, ids)
        else:
            self.contexts[i] = f"{self.contexts[i]}{info['response']}{reply.text}"
            self._append(i, ids)
            kept = int(self.attention_mask[i].sum())
            if kept > task.max_prompt_tokens:  # the conversation outgrew its part of the window
                self._warn_truncation(kept)
                ids = self.input_ids[i, -task.max_prompt_tokens :].tolist()
                self._set_window(i, ids)
                restart = True
        return reward, {**turns[-1], "turn": len(turns), "env_tokens": tuple(ids), "restart": restart}

    def _append(self, i: int, ids: Sequence[int]) -> None:
        """Shift row ``i``'s window left by ``len(ids)`` and write ``ids`` last."""
        k = len(ids)
        self.input_ids[i, :-k] = self.input_ids[i, k:]
        self.attention_mask[i, :-k] = self.attention_mask[i, k:]
        self.input_ids[i, -k:] = ids
        self.attention_mask[i, -k:] = 1

    def _warn_truncation(self, length: int) -> None:
        if not self.warned_truncation:
            self.warned_truncation = True
            warnings.warn(
                f"Task {self.task.name!r}: the conversation of {length} tokens was left-truncated to "
                f"max_prompt_tokens={self.task.max_prompt_tokens}; the agent no longer sees its start "
                "(raise max_prompt_tokens, or use next_observation='state').",
                stacklevel=4,
            )

    def _episode_info(self, i: int) -> dict[str, Any]:
        """The final ``info`` of a multi-turn episode: the last turn's, with totals over every turn."""
        turns = self.turns[i]
        info = {
            **turns[-1],
            "prompt": self.prompts[i],
            "response": self.transcript(i),
            "score": sum(t["score"] for t in turns),
            "return": sum(t["reward"] for t in turns),
            "response_length": sum(t["response_length"] for t in turns),
            "turns": len(turns),
            "turn_scores": [t["score"] for t in turns],
        }
        if "gold_score" in turns[-1]:
            info["gold_score"] = sum(t["gold_score"] for t in turns)
        return info

    def transcript(self, i: int) -> str:
        """Row ``i``'s finished turns after the prompt: each response, then the env's reply."""
        return "".join(f"{t['response']}{t['reply'] or ''}" for t in self.turns[i])

    def allowed(self) -> np.ndarray:
        """Allowed next tokens, bool ``(n, vocab_size)``; all True without a mask rule or after the end."""
        if self.masks is None:
            return np.ones((len(self.done), self.task.vocab_size), dtype=bool)
        return self.masks.astype(bool)

    def text(self, i: int) -> str:
        """Row ``i``'s prompt, finished turns and response so far."""
        return f"{self.prompts[i]}{self.transcript(i)}{self.task.response_text(self.response_ids[i])}"

    def obs(self, i: int | None = None) -> dict[str, np.ndarray]:
        """A copy of the observation of row ``i`` ``(W,)``, or of every row ``(n, W)``."""
        rows = slice(None) if i is None else i
        return {"input_ids": self.input_ids[rows].copy(), "attention_mask": self.attention_mask[rows].copy()}
