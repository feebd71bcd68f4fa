"""What GRPO and REINFORCE++ share: the clipped token-level surrogate, its aggregation by ``loss_type``, the update.

Both agents end an iteration with token advantages ``A`` (B, T) for a generated batch and then
run the same update (:meth:`ClippedPolicyAgent._clipped_update`): ``passes`` over the batch, each
split into ``num_mini_batches`` minibatches, ``gradient_accumulation_steps`` of them per optimiser
step, minimising per token ``-min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)`` with
``r = pi / pi_old`` (PPO, Schulman et al. 2017; asymmetric "clip-higher" bounds: DAPO, Yu et al.
2025), plus ``beta`` times the k3 KL to the reference when the KL sits in the loss (GRPO,
Shao et al. 2024). The token losses are aggregated as TRL 1.16's GRPOTrainer ``_compute_loss``
does for its ``loss_type`` (trl/trainer/grpo_trainer.py), checked against it in tests/test_grpo.py.

Under ``torchrun`` every denominator is global (rows and loss tokens of a step or micro-batch over
all ranks) and the minibatches are drawn over the global batch, so N ranks take the 1-process step
(tests/test_distributed.py); TRL normalises ``bnpo`` per rank instead.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

import numpy as np
import torch

from agents.agent_config import TrainConfig
from agents.base import Agent
from agents.distributed import all_gather_rows, all_reduce
from agents.lora import trainable_parameters
from agents.ppo_utils import kl_estimate, kl_per_response
from agents.rollout import RolloutBatch
from agents.scoring import response_logprobs

__all__ = ["LOSS_TYPES", "ClippedPolicyAgent", "ClippedPolicyConfig", "KLPenalty", "LossScale", "LossType",
           "ScaleRewards", "aggregate_loss", "check_non_negative", "clipped_token_loss",
           "group_advantages", "select_rows"]

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
ScaleRewards = Literal["group", "batch", "none"]


@dataclass
class ClippedPolicyConfig(TrainConfig):
    """Settings of the clipped token-level update GRPO and REINFORCE++ share (TRL's GRPOConfig names)."""

    loss_type: LossType = "dapo"
    """How token losses become the loss (TRL's ``loss_type``): "grpo" mean over each response's tokens then
    over responses; "bnpo" mean over a micro-batch's tokens; "dr_grpo" sum over tokens / (responses x
    max_new_tokens) (Liu et al. 2025); "dapo" sum over tokens / the batch's tokens per optimiser step
    (Yu et al. 2025; TRL's default)."""
    epsilon: float = 0.2
    """Lower clip bound of the ratio, 1 - epsilon; also the upper one unless ``epsilon_high`` (TRL, PPO: 0.2)."""
    epsilon_high: float | None = None
    """Upper clip bound 1 + epsilon_high ("clip-higher", DAPO recommends 0.28); None: ``epsilon`` (TRL)."""
    gradient_accumulation_steps: int | None = None
    """Minibatches whose gradients make one optimiser step; None: all ``num_mini_batches``, one step per pass
    over the batch (TRL's default, ``steps_per_generation = gradient_accumulation_steps``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is unknown; use one of {', '.join(LOSS_TYPES)}.")
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError(f"epsilon={self.epsilon} and epsilon_high={self.epsilon_high} must be >= 0 "
                             "(the ratio is clipped to [1 - epsilon, 1 + epsilon_high]).")
        steps = self.gradient_accumulation_steps
        if steps is not None and (steps < 1 or self.num_mini_batches % steps):
            raise ValueError(f"gradient_accumulation_steps={steps} must be >= 1 and divide "
                             f"num_mini_batches={self.num_mini_batches} (or None: one optimiser step per pass).")

    @property
    def clip_range(self) -> tuple[float, float]:
        """(epsilon_low, epsilon_high) of the ratio clip."""
        return self.epsilon, self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def accumulation(self) -> int:
        """Minibatches per optimiser step."""
        return self.gradient_accumulation_steps or self.num_mini_batches


def check_non_negative(config: object, *names: str) -> None:
    """Refuse a negative coefficient among the fields ``names`` of ``config``."""
    for name in names:
        if getattr(config, name) < 0:
            raise ValueError(f"{name}={getattr(config, name)} must be >= 0.")


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: ScaleRewards = "none") -> torch.Tensor:
    """(B,) rewards minus their group's mean, over consecutive groups of ``group_size``; scaled by a std.

    ``scale_rewards`` as TRL's GRPOTrainer: "group" divides by the group's std, "batch" by the
    std of all rewards, "none" not at all (Dr. GRPO, Liu et al. 2025; REINFORCE++-baseline, Hu 2025);
    stds are Bessel-corrected and get TRL's 1e-4.
    """
    grouped = rewards.view(-1, group_size)  # (prompts, k)
    advantages = (grouped - grouped.mean(1, keepdim=True)).flatten()  # (B,)
    if scale_rewards == "group":
        return advantages / (grouped.std(1).repeat_interleave(group_size) + 1e-4)
    if scale_rewards == "batch":
        return advantages / (rewards.std() + 1e-4)
    if scale_rewards == "none":
        return advantages
    raise ValueError(f"scale_rewards={scale_rewards!r}; use 'group', 'batch' or 'none'.")


def clipped_token_loss(new: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor, epsilon_low: float,
                       epsilon_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss, ratio), each (b, T): ``-min(r A, clip(r, 1 - low, 1 + high) A)`` with ``r = exp(new - old)``."""
    ratio = (new - old).exp()
    return -torch.min(ratio * advantages, ratio.clamp(1 - epsilon_low, 1 + epsilon_high) * advantages), ratio


@dataclass(frozen=True)
class LossScale:
    """The denominators of :func:`aggregate_loss` for the micro-batches of one optimiser step."""

    rows: int
    """Responses per optimiser step ("grpo", "dr_grpo")."""
    tokens: float
    """Loss tokens of the whole batch / optimiser steps per pass ("dapo": TRL's ``num_items_in_batch`` x
    gradient_accumulation_steps / steps_per_generation)."""
    parts: int
    """Micro-batches per optimiser step ("bnpo")."""
    max_completion_length: int
    """The task's ``max_new_tokens`` ("dr_grpo")."""


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: LossType, scale: LossScale,
                   tokens: float) -> torch.Tensor:
    """One micro-batch's share of an optimiser step's ``loss_type`` aggregate of ``per_token`` losses.

    Summed over the step's micro-batches it is the aggregate: TRL's ``_compute_loss`` divided by its
    gradient-accumulation normaliser. ``tokens`` is the micro-batch's loss-token count ("bnpo"): over
    every rank's rows under torchrun, where ``mask`` holds this rank's rows only.
    """
    total = per_token * mask  # (b, T)
    if loss_type == "grpo":
        return (total.sum(1) / mask.sum(1).clamp(min=1)).sum() / scale.rows
    if loss_type == "bnpo":
        return total.sum() / max(tokens, 1.0) / scale.parts
    if loss_type == "dr_grpo":
        return total.sum() / (scale.rows * scale.max_completion_length)
    if loss_type == "dapo":
        return total.sum() / max(scale.tokens, 1.0)
    raise ValueError(f"loss_type={loss_type!r} is unknown; use one of {', '.join(LOSS_TYPES)}.")


def select_rows(batch: RolloutBatch, rows: torch.Tensor) -> RolloutBatch:
    """The episodes ``rows`` (1-D index) of ``batch``, in that order."""
    picked = rows.tolist()
    tensors = {f.name: getattr(batch, f.name)[rows] for f in fields(batch)
               if isinstance(getattr(batch, f.name), torch.Tensor)}
    return replace(batch, **tensors, rewards=batch.rewards[picked], infos=[batch.infos[i] for i in picked])


@dataclass(frozen=True)
class KLPenalty:
    """A KL to the reference inside the loss (GRPO): ``beta * k3(pi, pi_ref)`` per token."""

    ref: torch.Tensor
    """(B, T) the reference's log-probs of the batch's responses."""
    beta: float
    """The KL's weight."""
    bias_correction: bool
    """Multiply the k3 term by the ratio pi / pi_old, so that its gradient is the unbiased reverse-KL
    gradient off-policy too (TRL's ``use_bias_correction_kl``, DeepSeek-V3.2)."""


class ClippedPolicyAgent(Agent):
    """Base of the agents that update by the clipped token-level surrogate (GRPO, REINFORCE++): no value model."""

    config: ClippedPolicyConfig

    def _build(self, checkpoint: object) -> None:
        self._make_optimizer(trainable_parameters(self.policy))  # with LoRA: the adapters only

    def _reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """(B, T) the reference's log-probs of the batch's responses, one packed pass without grad."""
        with torch.no_grad():
            return response_logprobs(self.reference, batch, self.config.temperature, self.task.vocab_size).logprobs

    def _clipped_loss(self, batch: RolloutBatch, idx: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor,
                      kl: KLPenalty | None, scale: LossScale, tokens: float) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch ``idx``'s loss and (clipped-low, clipped-high, approx-KL) token sums / ``tokens``.

        ``tokens`` counts the micro-batch's loss tokens (on every rank under torchrun, so the rank
        shares sum to the micro-batch's means). With ``kl`` its per-token penalty joins the
        surrogate (TRL's GRPO ``_compute_loss``).
        """
        cfg = self.config
        new = response_logprobs(self.policy, batch, cfg.temperature, self.task.vocab_size, index=idx).logprobs
        m, adv, old = loss_mask[idx], advantages[idx], batch.logprobs[idx]  # (b, T)
        low, high = cfg.clip_range
        per_token, ratio = clipped_token_loss(new, old, adv, low, high)  # (b, T)
        if kl is not None and kl.beta:
            k3 = kl_estimate(new, kl.ref[idx], "k3")  # (b, T)
            per_token = per_token + kl.beta * (k3 * ratio if kl.bias_correction else k3)
        loss = aggregate_loss(per_token, m, cfg.loss_type, scale, tokens)
        with torch.no_grad():
            log_ratio = (new - old) * m
            stats = torch.stack([(((ratio < 1 - low) & (adv < 0)) * m).sum(),
                                 (((ratio > 1 + high) & (adv > 0)) * m).sum(),
                                 ((log_ratio.exp() - 1 - log_ratio) * m).sum()]) / max(tokens, 1.0)
        return loss, stats

    def _loss_scale(self, tokens_per_row: torch.Tensor) -> LossScale:
        """The loss denominators of each optimiser step over a batch whose rows hold these (B,) loss tokens."""
        cfg = self.config
        steps_per_pass = cfg.num_mini_batches // cfg.accumulation
        return LossScale(rows=len(tokens_per_row) // steps_per_pass,
                         tokens=float(tokens_per_row.sum()) / steps_per_pass, parts=cfg.accumulation,
                         max_completion_length=self.task.max_new_tokens)

    def _clipped_update(self, batch: RolloutBatch, advantages: torch.Tensor, loss_mask: torch.Tensor,
                        kl: KLPenalty | None, passes: int, reshuffle: bool) -> dict[str, float]:
        """``passes`` over the batch in minibatches; returns the update's mean statistics, over every rank.

        The row order is drawn once per batch (TRL shuffles each generation batch once and reuses
        its order for every iteration) or, with ``reshuffle``, anew every pass (PPO epochs, OpenRLHF).
        Under torchrun the order is over the global batch (the same generator state on every rank)
        and each rank backpropagates its own rows of each micro-batch, as :class:`agents.PPOKL` does.
        """
        cfg, dist = self.config, self.dist
        n = loss_mask.shape[0]
        first = dist.rank * n  # global index of this rank's first row
        tokens_per_row = all_gather_rows(loss_mask.sum(1), dist)  # (world * B,)
        scale = self._loss_scale(tokens_per_row)
        steps_per_pass = cfg.num_mini_batches // cfg.accumulation
        micro: list[torch.Tensor] = []  # this rank's share of each micro-batch's (clip-low, clip-high, approx-KL)
        step_losses: list[torch.Tensor] = []  # this rank's share of each optimiser step's loss
        grad_norms: list[float] = []
        order = torch.randperm(len(tokens_per_row), generator=self.generator, device=self.device)
        for p in range(passes):
            if reshuffle and p:
                order = torch.randperm(len(tokens_per_row), generator=self.generator, device=self.device)
            parts = order.chunk(cfg.num_mini_batches)
            for step in range(steps_per_pass):
                step_loss = torch.zeros((), device=self.device)
                for rows in parts[step * cfg.accumulation:(step + 1) * cfg.accumulation]:
                    idx = rows[(rows >= first) & (rows < first + n)] - first  # this rank's rows, local indices
                    part = torch.zeros(3, device=self.device)
                    if len(idx):
                        tokens = float(tokens_per_row[rows].sum())
                        loss, part = self._clipped_loss(batch, idx, advantages, loss_mask, kl, scale, tokens)
                        self._backward(loss, f"{type(self).__name__} loss")
                        step_loss += loss.detach()
                    micro.append(part)
                step_losses.append(step_loss)
                grad_norms.append(self._optimizer_step())
        # One collective for every statistic: the rank shares sum to the global values.
        totals = all_reduce(torch.cat([torch.stack(micro).flatten(), torch.stack(step_losses)]), dist)
        means = totals[:3 * len(micro)].view(-1, 3).mean(0).tolist()
        return {"clip_ratio_low": means[0], "clip_ratio_high": means[1], "approx_kl": means[2],
                "policy_loss": float(totals[3 * len(micro):].mean()), "grad_norm": float(np.mean(grad_norms))}

    def _kl_metrics(self, batch: RolloutBatch, ref: torch.Tensor, kl: torch.Tensor) -> dict[str, float]:
        """``kl`` (the per-response KL in use) and per-response k1 and k3 KL to the reference of the sampling policy."""
        mask = batch.response_mask.float()
        return {"kl": float(kl.mean()), "kl_k1": float(kl_per_response(batch.logprobs, ref, mask, "k1").mean()),
                "kl_k3": float(kl_per_response(batch.logprobs, ref, mask, "k3").mean())}
