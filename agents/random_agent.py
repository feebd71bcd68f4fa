"""RandomAgent: uniform over the allowed tokens; the floor of every comparison."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.agent_config import AgentConfig
from agents.base import Agent
from agents.rollout import rollout


class RandomAgent(Agent):
    """Picks every token uniformly among those the action mask allows (all, without a mask).

    ``learn`` only measures it, batch after batch. Args: ``env`` as for
    :class:`agents.PPOKL`; ``config``: :class:`agents.agent_config.AgentConfig`.
    """

    needs_policy = False
    needs_reference = False

    def __init__(self, env: Any, config: AgentConfig | None = None) -> None:
        super().__init__(env, None, config or AgentConfig(log_dir="runs/random", save_steps=0))

    def _iteration(self) -> tuple[dict[str, float], int]:
        batch = rollout(None, self.env, seed=self._prompt_seed(), generator=self.generator)
        return batch.metrics(), int(batch.response_mask.sum())

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """A uniform allowed token for one observation ``(W,)`` or each of a batch ``(N, W)``."""
        ids = np.asarray(observation["input_ids"])
        rows = 1 if ids.ndim == 1 else len(ids)
        allowed = np.ones((rows, self.task.vocab_size)) if action_masks is None else np.asarray(action_masks)
        weights = torch.as_tensor(allowed.reshape(rows, -1), dtype=torch.float32)  # (N, V)
        action = torch.multinomial(weights, 1, generator=self.generator).squeeze(-1).numpy()  # (N,)
        return (action[0] if ids.ndim == 1 else action), state
