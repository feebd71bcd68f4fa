"""REINFORCE++: per-token KL in the reward, returns whitened over the batch, PPO clipping, no critic (Hu 2025).

Each token's reward is ``-beta * KL`` to the reference (k1 by default), plus the reward-model
score on the last token; its return is the (discounted) sum of the rewards from there on, and the
returns, whitened over every token of the batch, are the advantages of a PPO-clipped update. The
baseline variant (``baseline=True``, "REINFORCE++-baseline") first subtracts from each score the
mean score of the ``num_generations`` samples of its prompt. Source: J. Hu, "REINFORCE++"
(arXiv:2501.03262) and its implementation, OpenRLHF's ``reinforce`` / ``reinforce_baseline``
advantage estimators (openrlhf/trainer/ppo_utils/experience_maker.py, ``compute_advantages_and_returns``;
loss in openrlhf/models/loss.py ``PolicyLoss``).

    from agents import ReinforcePP, ReinforcePPConfig
    agent = ReinforcePP("RLHFText-v0", config=ReinforcePPConfig(baseline=True, num_generations=4)).learn(50_000)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agents.command import agent_cli
from agents.distributed import all_reduce, reduce_metrics
from agents.models import PolicyArg
from agents.policy_gradient import (
    ClippedPolicyAgent,
    ClippedPolicyConfig,
    LossType,
    check_non_negative,
    group_advantages,
)
from agents.ppo_utils import KLEstimator, compute_gae, kl_estimate, masked_mean, masked_whiten

__all__ = ["ReinforcePP", "ReinforcePPConfig"]


@dataclass
class ReinforcePPConfig(ClippedPolicyConfig):
    """REINFORCE++ settings: OpenRLHF's defaults where it has the setting (openrlhf/cli/train_ppo_ray.py)."""

    log_dir: str = "runs/reinforce_pp"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    baseline: bool = False
    """REINFORCE++-baseline: subtract the mean score of the prompt's ``num_generations`` samples first
    (OpenRLHF's ``reinforce_baseline``); False: plain REINFORCE++ (``reinforce``)."""
    num_generations: int = 1
    """Samples per prompt (OpenRLHF's ``n_samples_per_prompt``, default 1); the baseline needs >= 2."""
    beta: float = 0.01
    """Weight of the per-token KL penalty in the reward (OpenRLHF's ``init_kl_coef``: 0.01)."""
    kl_estimator: KLEstimator = "k1"
    """Per-token KL estimator in the reward: "k1" (OpenRLHF's default), "k2" or "k3"."""
    gamma: float = 1.0
    """Discount of the returns across response tokens (OpenRLHF: 1)."""
    num_ppo_epochs: int = 1
    """Passes over each batch, reshuffled every pass (OpenRLHF's ``max_epochs``: 1)."""
    loss_type: LossType = "bnpo"
    """Token losses averaged over each minibatch's tokens: OpenRLHF's ``PolicyLoss`` (token-level loss)."""
    gradient_accumulation_steps: int | None = 1
    """Minibatches per optimiser step: 1, a step per minibatch (OpenRLHF: ``train_batch_size`` below the
    rollout batch makes several steps per batch)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_divides_batch("num_generations", minimum=2 if self.baseline else 1)
        check_non_negative(self, "beta")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator={self.kl_estimator!r}; use 'k1', 'k2' or 'k3'.")
        if not 0 <= self.gamma <= 1 or self.num_ppo_epochs < 1:
            raise ValueError(f"gamma={self.gamma} must be in [0, 1] and num_ppo_epochs={self.num_ppo_epochs} >= 1.")


class ReinforcePP(ClippedPolicyAgent):
    """REINFORCE++ (or REINFORCE++-baseline) against a reward model, KL-penalised per token to the reference.

    Data-parallel under torchrun like :class:`agents.PPOKL`: the whitening and every loss denominator are
    global, so N ranks take the 1-process step.

    Args: as :class:`agents.PPOKL`, with a :class:`ReinforcePPConfig`.
    """

    config_class = ReinforcePPConfig
    config: ReinforcePPConfig
    supports_distributed = True

    def __init__(
        self, env: Any, policy: PolicyArg = None, config: ReinforcePPConfig | None = None, reference: PolicyArg = None
    ) -> None:
        super().__init__(env, policy, config, reference)

    def _iteration(self) -> tuple[dict[str, float], int]:
        cfg, dist = self.config, self.dist
        # 1. Generate (num_generations samples per prompt; the baseline needs several).
        batch = self._generate(group_size=cfg.num_generations)
        mask = batch.response_mask.float()  # (B, T)

        # 2. Old log-probs are the rollout's; the reference takes one packed pass.
        ref = self._reference_logprobs(batch)  # (B, T)

        # 3. Per-token KL to the reference (docs/ppo_details.md #1, #4).
        kl = kl_estimate(batch.logprobs, ref, cfg.kl_estimator) * mask  # (B, T)

        # 4. Scores; REINFORCE++-baseline subtracts the mean score of the prompt's samples.
        raw = batch.penalized_rewards(cfg.missing_eos_penalty)  # (B,)
        score = group_advantages(raw, cfg.num_generations) if cfg.baseline else raw  # (B,)

        # 5. Token rewards: -beta * KL everywhere, the score on the last token (multi-turn: each turn's
        # reward on its last token, the baseline on the episode's); returns are their discounted sums
        # to the end (GAE with zero values and lambda 1 is exactly that).
        rewards = -cfg.beta * kl + batch.token_rewards(cfg.missing_eos_penalty)  # (B, T)
        if cfg.baseline:
            rewards = rewards + batch.on_last_token(score - raw)
        returns, _ = compute_gae(rewards, torch.zeros_like(rewards), mask, cfg.gamma, 1.0)  # (B, T)

        # 6. Advantages: the returns whitened over every token of the batch (global, OpenRLHF).
        advantages = masked_whiten(returns, mask, dist=dist)  # (B, T)

        # 7. PPO-clipped update, minibatches reshuffled every epoch; no critic, no KL in the loss.
        update = self._clipped_update(batch, advantages, mask, None, cfg.num_ppo_epochs, reshuffle=True)

        # 8. Log.
        metrics = batch.metrics()
        metrics.update(update, **self._kl_metrics(batch, ref, kl.sum(1)), beta=cfg.beta,
                       objective=float((raw - cfg.beta * kl.sum(1)).mean()),
                       entropy=float(masked_mean(batch.entropy, mask)), return_mean=float(masked_mean(returns, mask)))
        metrics = reduce_metrics(metrics, dist, self.device)
        return metrics, int(all_reduce(mask.sum(), dist))  # global timesteps: every rank stops together


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.reinforce_pp [--flags]``: train on RLHFText-v0 (or ``--env``) and save the agent."""
    return agent_cli(ReinforcePP, argv, description=__doc__.splitlines()[0], default_timesteps=200_000)


if __name__ == "__main__":
    sys.exit(cli())
