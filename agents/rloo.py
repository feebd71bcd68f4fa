"""RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt (Ahmadian et al. 2024).

Each iteration samples k responses for each of ``batch_size / k`` prompts. A response's
reward is its score minus beta times its summed KL to the reference; its baseline is
the mean reward of the other k - 1 responses to the same prompt, so no value model is
needed. One on-policy gradient step per batch (minibatches only accumulate gradients).

    from agents import RLOO, RLOOConfig
    agent = RLOO("RLHFText-v0", config=RLOOConfig(rloo_k=4)).learn(50_000)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents.base import Agent, PolicyArg, TrainConfig, config_cli
from agents.lora import trainable_parameters
from agents.ppo_utils import KLEstimator, kl_estimate, leave_one_out_advantages, masked_mean
from agents.rollout import response_logprobs


@dataclass
class RLOOConfig(TrainConfig):
    """RLOO settings (TRL's RLOOTrainer defaults where they apply)."""

    log_dir: str = "runs/rloo"
    rloo_k: int = 4
    """Samples per prompt; each one's baseline is the mean reward of the other k - 1."""
    kl_coef: float = 0.05
    """Beta of the per-response KL penalty in the reward (TRL: 0.05)."""
    kl_estimator: KLEstimator = "k1"
    """Per-token KL estimator summed over the response: "k1" (logp - logp_ref) or "k3"."""
    missing_eos_penalty: float = 0.0
    """Extra score penalty when a response hits the length cap, on top of the task's own."""
    normalize_advantages: bool = False
    """Whiten the per-response advantages over the batch (TRL's ``normalize_advantage``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rloo_k < 2 or self.batch_size % self.rloo_k:
            raise ValueError(f"rloo_k={self.rloo_k} must be >= 2 and divide batch_size={self.batch_size}.")


class RLOO(Agent):
    """REINFORCE leave-one-out against a reward model, KL-penalised to the frozen reference.

    Args: as :class:`agents.PPOKL`, with an :class:`RLOOConfig`.
    """

    config_class = RLOOConfig
    config: RLOOConfig

    def __init__(
        self, env: Any, policy: PolicyArg = None, config: RLOOConfig | None = None, reference: PolicyArg = None
    ) -> None:
        super().__init__(env, policy, config, reference)

    def _build(self, checkpoint: Any) -> None:
        self._make_optimizer(trainable_parameters(self.policy))  # with LoRA: the adapters only

    def _iteration(self) -> tuple[dict[str, float], int]:
        cfg, vocab, k = self.config, self.task.vocab_size, self.config.rloo_k
        # 1. Generate k responses per prompt.
        batch = self._generate(group_size=k)
        mask = batch.response_mask.float()  # (B, T)
        n = mask.shape[0]

        # 2. Policy and reference log-probs, no grad: they only shape the reward.
        with torch.no_grad():
            old = response_logprobs(self.policy, batch, cfg.temperature, vocab)
            ref = response_logprobs(self.reference, batch, cfg.temperature, vocab)

        # 3. Per-response reward: score minus beta * summed KL (RLOO puts the KL in the sequence reward).
        kl = (kl_estimate(old.logprobs, ref.logprobs, cfg.kl_estimator) * mask).sum(1)  # (B,)
        capped = np.array([info["end_reason"] == "max_new_tokens" for info in batch.infos])
        score = torch.as_tensor(batch.rewards - cfg.missing_eos_penalty * capped,
                                dtype=torch.float32, device=self.device)  # (B,)
        reward = (score - cfg.kl_coef * kl).view(-1, k)  # (prompts, k)

        # 4. Leave-one-out baseline: the mean reward of the other k - 1 samples of the prompt.
        advantages = leave_one_out_advantages(reward).flatten()  # (B,)
        if cfg.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        # 5. One REINFORCE step: -A * log pi(response), gradients accumulated over minibatches.
        loss_total = 0.0
        for idx in torch.arange(n, device=self.device).chunk(cfg.num_minibatches):
            new = response_logprobs(self.policy, batch, cfg.temperature, vocab, index=idx)
            loss = -(advantages[idx] * new.logprobs.sum(1)).sum() / n
            self._backward(loss, "RLOO loss")
            loss_total += float(loss.detach())
        grad_norm = self._optimizer_step()

        # 6. Log.
        metrics = batch.metrics()
        metrics.update(
            kl=float(kl.mean()),
            kl_k1=float((kl_estimate(old.logprobs, ref.logprobs, "k1") * mask).sum(1).mean()),
            kl_k3=float((kl_estimate(old.logprobs, ref.logprobs, "k3") * mask).sum(1).mean()),
            beta=cfg.kl_coef,
            objective=float(reward.mean()),
            entropy=float(masked_mean(old.entropy, mask)),
            policy_loss=loss_total,
            advantage_std=float(advantages.std()),
            grad_norm=grad_norm,
        )
        return metrics, int(mask.sum())


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.rloo [--flags]``: train on RLHFText-v0 (or ``--env``) and save the agent."""
    return config_cli(RLOO, argv, description=__doc__.splitlines()[0], default_timesteps=200_000)


if __name__ == "__main__":
    sys.exit(cli())
