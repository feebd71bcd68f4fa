"""RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt (Ahmadian et al. 2024).

Each iteration samples k responses for each of ``batch_size / k`` prompts. A response's
reward is its score minus beta times its summed KL to the reference; its baseline is
the mean reward of the other k - 1 responses to the same prompt, so no value model is
needed. One on-policy gradient step per batch (minibatches only accumulate gradients).
Runs data-parallel under ``torchrun --nproc_per_node N`` too (the update equals the 1-process one).

    from agents import RLOO, RLOOConfig
    agent = RLOO("RLHFText-v0", config=RLOOConfig(num_generations=4)).learn(50_000)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agents.agent_config import TrainConfig
from agents.base import Agent
from agents.command import agent_cli
from agents.distributed import all_gather_rows, all_reduce, reduce_metrics
from agents.lora import trainable_parameters
from agents.models import PolicyArg
from agents.ppo_utils import KLEstimator, kl_per_response, leave_one_out_advantages, masked_mean, masked_whiten
from agents.scoring import response_logprobs


@dataclass
class RLOOConfig(TrainConfig):
    """RLOO settings (TRL's RLOOTrainer defaults where they apply)."""

    log_dir: str = "runs/rloo"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    num_generations: int = 4
    """Samples per prompt (k); each one's baseline is the mean reward of the other k - 1."""
    beta: float = 0.05
    """Beta of the per-response KL penalty in the reward (TRL: 0.05)."""
    kl_estimator: KLEstimator = "k1"
    """Per-token KL estimator summed over the response: "k1" (logp - logp_ref) or "k3"."""
    normalize_advantages: bool = False
    """Whiten the per-response advantages over the batch (TRL's ``normalize_advantage``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_divides_batch("num_generations", minimum=2)  # a leave-one-out baseline needs another sample


class RLOO(Agent):
    """REINFORCE leave-one-out against a reward model, KL-penalised to the frozen reference.

    Runs data-parallel under ``torchrun`` like :class:`agents.PPOKL`: each rank generates whole
    groups of k samples (``batch_size / WORLD_SIZE`` episodes, a multiple of ``num_generations``), so every
    leave-one-out baseline is local, and N ranks take the 1-process step.

    Args: as :class:`agents.PPOKL`, with an :class:`RLOOConfig`.
    """

    config_class = RLOOConfig
    config: RLOOConfig
    supports_distributed = True

    def __init__(
        self, env: Any, policy: PolicyArg = None, config: RLOOConfig | None = None, reference: PolicyArg = None
    ) -> None:
        super().__init__(env, policy, config, reference)

    def _build(self, checkpoint: Any) -> None:
        self._make_optimizer(trainable_parameters(self.policy))  # with LoRA: the adapters only

    def _iteration(self) -> tuple[dict[str, float], int]:
        cfg, vocab, k, dist = self.config, self.task.vocab_size, self.config.num_generations, self.dist
        # 1. Generate k responses per prompt (under torchrun: this rank's share, B = batch_size / world_size).
        batch = self._generate(group_size=k)
        mask = batch.response_mask.float()  # (B, T)
        n = mask.shape[0]

        # 2. Policy and reference log-probs, no grad: they only shape the reward. The policy's are
        # those the rollout sampled with (equal to a recomputation up to float rounding), so only
        # the reference takes a forward pass.
        old = batch.logprobs  # (B, T)
        with torch.no_grad():
            ref = response_logprobs(self.reference, batch, cfg.temperature, vocab).logprobs  # (B, T)

        # 3. Per-response reward: score minus beta * summed KL (RLOO puts the KL in the sequence reward).
        kl = kl_per_response(old, ref, mask, cfg.kl_estimator)  # (B,)
        score = batch.penalized_rewards(cfg.missing_eos_penalty)  # (B,)
        reward = (score - cfg.beta * kl).view(-1, k)  # (prompts, k)

        # 4. Leave-one-out baseline: the mean reward of the other k - 1 samples of the prompt.
        advantages = leave_one_out_advantages(reward).flatten()  # (B,)
        if cfg.normalize_advantages:  # mean and variance over every rank's responses
            advantages = masked_whiten(advantages, torch.ones_like(advantages), dist=dist)

        # 5. One REINFORCE step: -A * log pi(response), averaged over the global batch; gradients are
        # accumulated over minibatches and summed over ranks by the optimiser step.
        loss_total = torch.zeros((), device=self.device)
        for idx in torch.arange(n, device=self.device).chunk(cfg.num_mini_batches):
            new = response_logprobs(self.policy, batch, cfg.temperature, vocab, index=idx)
            loss = -(advantages[idx] * new.logprobs.sum(1)).sum() / (n * dist.world_size)
            self._backward(loss, "RLOO loss")
            loss_total += loss.detach()
        grad_norm = self._optimizer_step()

        # 6. Log: per-episode means averaged over ranks (reduce_metrics); global values stay as they are.
        metrics = batch.metrics()
        metrics.update(
            kl=float(kl.mean()),
            kl_k1=float(kl_per_response(old, ref, mask, "k1").mean()),
            kl_k3=float(kl_per_response(old, ref, mask, "k3").mean()),
            beta=cfg.beta,
            objective=float(reward.mean()),
            entropy=float(masked_mean(batch.entropy, mask)),
            policy_loss=float(all_reduce(loss_total, dist)),
            advantage_std=float(all_gather_rows(advantages, dist).std()),
            grad_norm=grad_norm,
        )
        metrics = reduce_metrics(metrics, dist, self.device)
        return metrics, int(all_reduce(mask.sum(), dist))  # global timesteps: every rank stops together


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.rloo [--flags]``: train on RLHFText-v0 (or ``--env``) and save the agent."""
    return agent_cli(RLOO, argv, description=__doc__.splitlines()[0], default_timesteps=200_000)


if __name__ == "__main__":
    sys.exit(cli())
