"""GRPO: group-relative advantages, a clipped token-level surrogate and a k3 KL in the loss (Shao et al. 2024).

Each iteration samples ``num_generations`` responses for each of ``batch_size / num_generations``
prompts; a response's advantage is its score minus its group's mean, divided by a std
(``scale_rewards``), and is given to every one of its tokens. No value model. Settings, names and
defaults are TRL 1.16's GRPOConfig (trl/trainer/grpo_config.py), the loss its GRPOTrainer
``_compute_loss`` (checked in tests/test_grpo.py): ``loss_type`` "grpo" / "bnpo" / "dr_grpo"
(Liu et al. 2025) / "dapo" (Yu et al. 2025), clip-higher ``epsilon_high``, ``num_iterations``
passes over each batch against the rollout's log-probs, ``mask_truncated_completions``.
DAPO's dynamic sampling (``dynamic_sampling``, not in TRL) is optional. Data-parallel under
``torchrun`` (each rank generates whole groups; scaling by the batch std and every loss
denominator are global), except with dynamic sampling.

    from agents import GRPO, GRPOConfig
    agent = GRPO("RLHFText-v0", config=GRPOConfig(num_generations=4, beta=0.05)).learn(50_000)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agents.command import agent_cli
from agents.distributed import DistInfo, all_gather_rows, all_reduce, reduce_metrics
from agents.models import PolicyArg
from agents.policy_gradient import (
    ClippedPolicyAgent,
    ClippedPolicyConfig,
    KLPenalty,
    ScaleRewards,
    check_non_negative,
    group_advantages,
    select_rows,
)
from agents.ppo_utils import kl_per_response, masked_mean
from agents.rollout import RolloutBatch
from text_env.task import END_MAX_TOKENS

__all__ = ["GRPO", "GRPOConfig"]

DRAW_SEED_STRIDE = 2**31
"""Prompt-seed offset of each extra generation of dynamic sampling: far from every iteration's own seeds."""


@dataclass
class GRPOConfig(ClippedPolicyConfig):
    """GRPO settings: TRL 1.16's GRPOConfig names and defaults where it has the setting."""

    log_dir: str = "runs/grpo"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    num_generations: int = 8
    """Samples per prompt, the group of the group-relative advantage (TRL: 8); must divide batch_size."""
    beta: float = 0.0
    """Weight of the k3 KL to the reference in the loss (TRL: 0.0, and then no reference pass at all;
    DeepSeek-R1: 0.001)."""
    num_iterations: int = 1
    """Passes over each batch (TRL's mu, default 1); later passes are off-policy and clip against the
    rollout's log-probs."""
    scale_rewards: ScaleRewards = "group"
    """Divide advantages by the group's reward std ("group", TRL's default), the batch's ("batch") or
    nothing ("none", Dr. GRPO)."""
    use_bias_correction_kl: bool = True
    """Multiply the k3 KL term by the ratio pi / pi_old: the unbiased reverse-KL gradient (TRL: True,
    after DeepSeek-V3.2); it changes the KL gradient even on-policy, where the ratio is 1 but differentiable."""
    mask_truncated_completions: bool = False
    """Overlong filtering: no loss on responses cut by the length cap (``end_reason == "max_new_tokens"``);
    they still count in their group's mean and std (TRL: False; DAPO: True)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: drop groups whose rewards are all equal (zero advantage) and generate more
    groups to refill the batch, at most ``max_num_gen_batches`` generations per iteration; a batch
    still short is topped up with dropped groups. Every generated token counts as a timestep."""
    max_num_gen_batches: int = 4
    """Generations of ``batch_size`` episodes per iteration with ``dynamic_sampling``, the first included
    (verl's DAPO recipe has the same bound, default 10; 4 bounds the cost to 4x)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_divides_batch("num_generations", minimum=2)  # a group mean needs another sample
        check_non_negative(self, "beta")
        if self.num_iterations < 1 or self.max_num_gen_batches < 1:
            raise ValueError(f"num_iterations={self.num_iterations} and max_num_gen_batches="
                             f"{self.max_num_gen_batches} must be >= 1.")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards={self.scale_rewards!r}; use 'group', 'batch' or 'none'.")


class GRPO(ClippedPolicyAgent):
    """GRPO against a reward model, with an optional k3 KL penalty to the frozen reference in the loss.

    Data-parallel under torchrun like :class:`agents.PPOKL` (N ranks take the 1-process step), but not
    with ``dynamic_sampling``, whose refill picks groups across the whole batch.

    Args: as :class:`agents.PPOKL`, with a :class:`GRPOConfig`.
    """

    config_class = GRPOConfig
    config: GRPOConfig
    supports_distributed = True

    def __init__(
        self, env: Any, policy: PolicyArg = None, config: GRPOConfig | None = None, reference: PolicyArg = None
    ) -> None:
        super().__init__(env, policy, config, reference)

    def _check_distributed(self, info: DistInfo) -> DistInfo:
        info = super()._check_distributed(info)
        if info.world_size > 1 and self.config.dynamic_sampling:
            raise ValueError(f"dynamic_sampling=True cannot run under torchrun (WORLD_SIZE={info.world_size}): "
                             "its refill picks groups across the whole batch; turn it off or run one process.")
        return info

    def _build(self, checkpoint: Any) -> None:
        super()._build(checkpoint)
        self._draw = 0  # which generation of the iteration `_prompt_seed` seeds (dynamic sampling)

    def _prompt_seed(self) -> int:
        return super()._prompt_seed() + self._draw * DRAW_SEED_STRIDE

    def _sample_groups(self) -> tuple[RolloutBatch, int, int]:
        """A batch of whole groups; with dynamic sampling, informative ones first. Returns (batch, tokens, draws)."""
        cfg, k = self.config, self.config.num_generations
        batches, tokens = [], 0
        for draw in range(cfg.max_num_gen_batches if cfg.dynamic_sampling else 1):
            self._draw = draw
            batches.append(self._generate(group_size=k))
            tokens += int(batches[-1].response_mask.sum())
            if not cfg.dynamic_sampling:
                break
            scores = torch.cat([b.penalized_rewards(cfg.missing_eos_penalty) for b in batches]).view(-1, k)
            informative = (scores != scores[:, :1]).any(1)  # (groups,) rewards not all equal
            if int(informative.sum()) * k >= cfg.batch_size:
                break
        self._draw = 0
        batch = RolloutBatch.concat(batches, self.task.pad_token_id) if len(batches) > 1 else batches[0]
        if cfg.dynamic_sampling:
            # Informative groups first (in generation order), then the dropped ones to top up a short batch.
            groups = torch.cat([informative.nonzero().flatten(), (~informative).nonzero().flatten()])
            groups = groups[: cfg.batch_size // k].to(self.device)
            rows = (groups[:, None] * k + torch.arange(k, device=self.device)).flatten()
            batch = select_rows(batch, rows)
        return batch, tokens, len(batches)

    def _iteration(self) -> tuple[dict[str, float], int]:
        cfg, k, dist = self.config, self.config.num_generations, self.dist
        # 1. Generate k responses per prompt (with dynamic sampling: until the batch holds informative groups;
        # under torchrun: this rank's share of whole groups, B = batch_size / world_size).
        batch, tokens, draws = self._sample_groups()
        mask = batch.response_mask.float()  # (B, T)

        # 2. Group-relative advantages of the scores, one per response, given to each of its tokens;
        # computed on every rank's scores (the "batch" std is global), this rank's rows kept.
        score = batch.penalized_rewards(cfg.missing_eos_penalty)  # (B,)
        scores = all_gather_rows(score, dist)  # (world * B,)
        all_advantages = group_advantages(scores, k, cfg.scale_rewards)  # (world * B,)
        advantages = all_advantages[dist.rank * len(score):(dist.rank + 1) * len(score)]  # (B,)
        token_advantages = advantages[:, None] * mask  # (B, T)

        # 3. The tokens that carry loss: overlong filtering drops responses cut by the length cap.
        truncated = torch.tensor([info["end_reason"] == END_MAX_TOKENS for info in batch.infos], device=self.device)
        loss_mask = mask * (~truncated[:, None]).float() if cfg.mask_truncated_completions else mask  # (B, T)

        # 4. Old log-probs are the rollout's (sampled with, no second pass); the reference takes one
        # packed pass only when its KL is in the loss (beta > 0), as in TRL.
        ref = self._reference_logprobs(batch) if cfg.beta else None  # (B, T)

        # 5. num_iterations passes in num_mini_batches micro-batches, one optimiser step per
        # gradient_accumulation_steps of them; per token -min(r A, clip(r) A) + beta * r * k3.
        kl = None if ref is None else KLPenalty(ref, cfg.beta, cfg.use_bias_correction_kl)
        update = self._clipped_update(batch, token_advantages, loss_mask, kl, cfg.num_iterations, reshuffle=False)

        # 6. Log: per-episode means averaged over ranks (reduce_metrics); global values stay as they are.
        grouped = scores.view(-1, k)
        metrics = batch.metrics()
        metrics.update(update, beta=cfg.beta, entropy=float(masked_mean(batch.entropy, mask)),
                       advantage_std=float(all_advantages.std()), reward_std=float(scores.std()),
                       frac_reward_zero_std=float((grouped.std(1) == 0).float().mean()),
                       truncated_fraction=float(truncated.float().mean()), generation_batches=draws)
        if ref is not None:
            metrics.update(self._kl_metrics(batch, ref, kl_per_response(batch.logprobs, ref, mask, "k1")))
            metrics["objective"] = float(score.mean()) - cfg.beta * metrics["kl_k3"]
        metrics = reduce_metrics(metrics, dist, self.device)
        return metrics, int(all_reduce(torch.tensor(tokens, device=self.device), dist))  # global: ranks stop together


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.grpo [--flags]``: train on RLHFText-v0 (or ``--env``) and save the agent."""
    return agent_cli(GRPO, argv, description=__doc__.splitlines()[0], default_timesteps=200_000)


if __name__ == "__main__":
    sys.exit(cli())
