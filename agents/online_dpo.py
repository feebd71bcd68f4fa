"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"; TRL's OnlineDPOTrainer).

Each iteration samples two responses to each of ``batch_size / 2`` prompts from the current
policy through the env, ranks each pair by the env's reward (the task's reward model, minus
``missing_eos_penalty`` for a response cut by the length cap), and takes one step on the mean
DPO or IPO loss of the pairs against the frozen reference (:mod:`agents.dpo_loss`, shared with
offline :class:`agents.DPO`). A pair whose two rewards tie states no preference: it is skipped
and counted (TRL ranks a tie as the first sample preferred). IPO averages the log-ratios over
each response's tokens as TRL's offline ``DPOTrainer`` does (its online trainer does not).

    from agents import OnlineDPO, OnlineDPOConfig
    agent = OnlineDPO("RLHFText-v0", config=OnlineDPOConfig()).learn(200_000)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agents.command import agent_cli
from agents.distributed import all_reduce, reduce_metrics
from agents.dpo_loss import DPOLossConfig, PairBatch, PreferenceAgent
from agents.models import PolicyArg
from agents.ppo_utils import kl_per_response, masked_mean
from agents.scoring import response_logprobs

__all__ = ["OnlineDPO", "OnlineDPOConfig"]


@dataclass
class OnlineDPOConfig(DPOLossConfig):
    """Online DPO settings (TRL 1.16 ``OnlineDPOConfig`` names and defaults where they apply)."""

    log_dir: str = "runs/online_dpo"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    learning_rate: float = 1e-5
    """Adam step size at the start (TRL: 5e-7 for 7B models; the embedded 4.24 M-parameter policy takes more)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size % 2:
            raise ValueError(f"batch_size={self.batch_size} must be even: online DPO samples 2 responses per prompt.")
        if self.num_mini_batches > self.batch_size // 2:
            raise ValueError(f"num_mini_batches={self.num_mini_batches} must be <= the {self.batch_size // 2} pairs "
                             "of a batch (batch_size / 2).")


class OnlineDPO(PreferenceAgent):
    """Online DPO or IPO (``loss_type``): pairs sampled from the policy, ranked by the env's reward.

    Data-parallel under torchrun: each rank samples whole pairs, and the mean is over the untied pairs
    of every rank, so N ranks take the 1-process step.

    Args: as :class:`agents.PPOKL`, with an :class:`OnlineDPOConfig`.
    """

    config_class = OnlineDPOConfig
    config: OnlineDPOConfig
    supports_distributed = True

    def __init__(
        self, env: Any, policy: PolicyArg = None, config: OnlineDPOConfig | None = None, reference: PolicyArg = None
    ) -> None:
        super().__init__(env, policy, config, reference)

    def _samples_per_prompt(self) -> int:
        return 2

    def _iteration(self) -> tuple[dict[str, float], int]:
        cfg = self.config
        # 1. Generate 2 responses per prompt from the current policy (consecutive rows share a prompt).
        batch = self._generate(group_size=2)
        mask = batch.response_mask.float()  # (B, T)

        # 2. Reference log-probs, one packed no-grad pass; the policy's are the rollout's (for the KL metrics).
        with torch.no_grad():
            ref = response_logprobs(self.reference, batch, cfg.temperature, self.task.vocab_size).logprobs  # (B, T)

        # 3. Rank each pair by the env's reward minus the missing-EOS penalty; skip ties.
        reward = batch.penalized_rewards(cfg.missing_eos_penalty).view(-1, 2)  # (B/2, 2)
        untied = torch.nonzero(reward[:, 0] != reward[:, 1]).flatten()  # (n,) pairs that state a preference
        second_wins = (reward[untied, 1] > reward[untied, 0]).long()
        chosen, rejected = 2 * untied + second_wins, 2 * untied + 1 - second_wins  # (n,) rows of the batch

        # 4. One step on the mean DPO/IPO loss over the untied pairs of every rank (none: no step).
        metrics = batch.metrics()
        kl = kl_per_response(batch.logprobs, ref, mask, "k1")  # (B,)
        margin = reward[untied].max(1).values - reward[untied].min(1).values  # (n,)
        untied_all, margin_all = all_reduce(torch.stack([margin.new_tensor(len(untied)), margin.sum()]),
                                            self.dist).tolist()
        if untied_all:
            ref_sums = ref.sum(1)  # (B,)
            metrics.update(self._dpo_update(PairBatch(batch, chosen, rejected, ref_sums[chosen], ref_sums[rejected])))

        # 5. Log: episode statistics, the ties skipped, the reward margin and the KL of the samples.
        metrics.update(
            tied_pairs=len(reward) * self.dist.world_size - untied_all,  # every rank's: global
            scores_margin=margin_all / untied_all if untied_all else 0.0,
            kl=float(kl.mean()),
            kl_k1=float(kl.mean()),
            kl_k3=float(kl_per_response(batch.logprobs, ref, mask, "k3").mean()),
            beta=cfg.beta,
            entropy=float(masked_mean(batch.entropy, mask)),
        )
        metrics = reduce_metrics(metrics, self.dist, self.device)
        return metrics, int(all_reduce(mask.sum(), self.dist))  # global timesteps: every rank stops together


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.online_dpo [--flags]``: train on RLHFText-v0 (or ``--env``) and save the agent."""
    return agent_cli(OnlineDPO, argv, description=__doc__.splitlines()[0], default_timesteps=200_000)


if __name__ == "__main__":
    sys.exit(cli())
