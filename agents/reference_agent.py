"""ReferenceAgent: samples the SFT policy unchanged; the baseline every RL agent must beat."""

from __future__ import annotations

from typing import Any

from agents.agent_config import AgentConfig
from agents.base import Agent
from agents.models import PolicyArg
from agents.rollout import rollout


class ReferenceAgent(Agent):
    """Samples the (SFT) policy as is; ``learn`` only measures it, batch after batch.

    Args:
        env: a text env or id, as for :class:`agents.PPOKL`.
        policy: a causal LM, its folder, or None for the embedded default policy.
        config: :class:`agents.agent_config.AgentConfig` (batch size, temperature, seed, log dir).
    """

    needs_reference = False

    def __init__(self, env: Any, policy: PolicyArg = None, config: AgentConfig | None = None) -> None:
        super().__init__(env, policy, config or AgentConfig(log_dir="runs/reference", save_steps=0))

    def _iteration(self) -> tuple[dict[str, float], int]:
        batch = rollout(self.policy, self.env, temperature=self.config.temperature,
                        seed=self._prompt_seed(), generator=self.generator)
        return batch.metrics(), int(batch.response_mask.sum())
