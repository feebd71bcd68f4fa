"""TextGenerationVectorEnv: a native batch of text episodes, scored in one reward-model call.

It behaves exactly like ``SyncVectorEnv`` over :class:`TextGenerationEnv` copies (the
tests check this step by step): both step the same :class:`~text_env.episode.EpisodeBatch`,
here with ``num_envs`` rows in two ``(num_envs, W)`` arrays, so every episode that ends
on a step is scored together, which is what fast rollouts need.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from text_env.episode import EpisodeBatch, game_rng, task_spaces
from text_env.task import Task


class TextGenerationVectorEnv(VectorEnv):
    """``num_envs`` text episodes stepped together.

    Autoreset modes (Gymnasium's ``AutoresetMode``):
      * ``NEXT_STEP`` (default): the step after an episode ends resets that sub-env
        and ignores its action, as in ``SyncVectorEnv``.
      * ``SAME_STEP``: a finished sub-env resets at once; ``info["final_obs"]`` and
        ``info["final_info"]`` hold the finished episode.
      * ``DISABLED``: synchronous batches. A finished sub-env stays frozen (its actions
        are ignored, reward 0, ``terminated`` stays True, no info) until ``reset()``,
        or ``reset(options={"reset_mask": mask})`` for some sub-envs. This lets an
        agent step the whole batch until every response has ended.

    Sub-env ``i`` is seeded with ``seed + i`` like ``SyncVectorEnv``, so the same seed
    gives the same prompts as a list of single envs.
    """

    metadata = {
        "render_modes": ["ansi"],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        task: Task,
        num_envs: int,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} must be >= 1.")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'ansi'.")
        self.task = task
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}

        self.single_observation_space, self.single_action_space = task_spaces(task)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._episodes = EpisodeBatch(task, num_envs, name_rows=True)
        self._rngs: list[np.random.Generator | None] = [None] * num_envs

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset all sub-envs, or those in ``options["reset_mask"]``.

        ``options["prompt"]`` and ``options["game_seed"]`` apply to every sub-env reset: sub-envs
        given both face the same prompt and the same game (see ``TextGenerationEnv``).
        """
        seeds = self._seed_list(seed)
        options = dict(options or {})
        reset_mask = options.pop("reset_mask", None)
        if reset_mask is None:
            reset_mask = np.ones(self.num_envs, dtype=bool)
        elif not (isinstance(reset_mask, np.ndarray) and reset_mask.dtype == np.bool_
                  and reset_mask.shape == (self.num_envs,) and reset_mask.any()):
            raise ValueError(
                f"options['reset_mask'] must be a bool numpy array of shape ({self.num_envs},) "
                f"with at least one True, got {reset_mask!r}."
            )
        infos: dict[str, Any] = {}
        for i in np.flatnonzero(reset_mask):
            if seeds[i] is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(seeds[i])
            infos = self._add_info(infos, self._reset_one(i, options), i)
        return self._episodes.obs(), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Append one token to every running response; score those that end, in one call."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions has shape {actions.shape}; expected ({self.num_envs},), one token per sub-env.")
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}

        stepping = np.flatnonzero(~self.done)  # (b,) the sub-envs whose episode runs
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            for i in np.flatnonzero(self.done):
                infos = self._add_info(infos, self._reset_one(i, {}), i)
        elif self.autoreset_mode == AutoresetMode.DISABLED:
            terminated[self.done] = True

        rewards[stepping], terminated[stepping], step_infos = self._episodes.step(stepping, actions[stepping])
        for i, info in zip(stepping, step_infos, strict=True):
            if self.autoreset_mode == AutoresetMode.SAME_STEP and self.done[i]:
                infos = self._add_info(infos, {"final_obs": self._episodes.obs(i), "final_info": info}, i)
                info = self._reset_one(i, {})
            infos = self._add_info(infos, info, i)
        return self._episodes.obs(), rewards, terminated, truncated, infos

    def render(self) -> tuple[str, ...] | None:
        """Each sub-env's prompt and response so far (``render_mode="ansi"``)."""
        if self.render_mode != "ansi":
            return None
        return tuple(self._episodes.text(i) for i in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        """Release the task's resources (e.g. the chess critic's engine process)."""
        self.task.close()

    def action_masks(self) -> np.ndarray:
        """Allowed next tokens, bool ``(num_envs, vocab_size)``; all True without a mask rule."""
        return self._episodes.allowed()

    @property
    def done(self) -> np.ndarray:
        """``(num_envs,)`` bool: the sub-env's episode is over (frozen, or due for autoreset)."""
        return self._episodes.done

    def _seed_list(self, seed: int | list[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, int):
            return [seed + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"seed is a list of {len(seed)}; it must have num_envs={self.num_envs} entries.")
        return list(seed)

    def _reset_one(self, i: int, options: dict[str, Any]) -> dict[str, Any]:
        prompt = options["prompt"] if "prompt" in options else self.task.sample_prompt(self._rngs[i])
        return self._episodes.start(i, prompt, game_rng(options, self._rngs[i]))
