"""Pure tensor helpers of RLHF policy-gradient methods: masked statistics, KL, GAE, KL controllers.

Every tensor here is ``(B, T)``: one row per response, one column per response token,
right-padded, with ``mask`` 1 on real tokens and 0 on padding. Padding never enters
a statistic (docs/ppo_details.md #6).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from agents.distributed import DistInfo, all_reduce

KLEstimator = Literal["k1", "k2", "k3"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over all, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over masked positions; Bessel-corrected like TRL's ``masked_var``."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(f"masked_var needs at least 2 unmasked values for an unbiased estimate, got {int(n)}.")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  dist: DistInfo | None = None) -> torch.Tensor:
    """Scale ``x`` to unit variance over masked positions, and to zero mean with ``shift_mean``.

    Padding comes back as 0. ``shift_mean=False`` keeps the sign of rewards when they are
    whitened (OAI's lm-human-preferences / TRL's ``whiten(..., shift_mean=False)``). Under
    torchrun (``dist`` with ``world_size > 1``) the mean and variance are taken over every
    rank's rows, so N ranks whiten as one process would (docs/ppo_details.md #9).
    """
    if dist is None or dist.world_size == 1:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        total = all_reduce(torch.stack([(x * mask).sum(), mask.sum()]), dist)
        mean = total[0] / total[1]
        squares = all_reduce(((x - mean) ** 2 * mask).sum(), dist)
        var = squares / (total[1] - 1)  # Bessel-corrected like masked_var
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, kind: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    With ``log r = logp_ref - logp``: ``k1 = -log r`` (unbiased, can be negative),
    ``k2 = (log r)^2 / 2`` (biased, low variance), ``k3 = (r - 1) - log r`` (unbiased,
    never negative). Source: J. Schulman, "Approximating KL divergence" (2020).
    """
    log_ratio = logp_ref - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kind={kind!r} is not a KL estimator; use 'k1', 'k2' or 'k3'.")


def kl_per_response(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                    kind: KLEstimator = "k1") -> torch.Tensor:
    """(B,) each response's KL to the reference: :func:`kl_estimate` summed over its tokens (docs/ppo_details.md #4)."""
    return (kl_estimate(logp, logp_ref, kind) * mask).sum(1)


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the agent's tokens (``mask``); returns (advantages, returns).

    The value after the last agent token is 0: the episode is final and scored, so nothing is
    bootstrapped past it (docs/ppo_details.md #10). Tokens outside ``mask`` (padding, and the
    tokens the env inserts between turns of a multi-turn episode) are skipped, not steps: the
    next state of an agent token is the next agent token's. Returns are ``advantages + values``.
    """
    rewards, values = rewards * mask, values * mask  # (B, T)
    taken = mask.bool()  # (B, T)
    advantages = torch.zeros_like(rewards)  # (B, T)
    last = torch.zeros_like(rewards[:, 0])  # (B,) the advantage of the next agent token
    next_value = torch.zeros_like(last)  # (B,) the value of the next agent token
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = delta + gamma * lam * last
        last = torch.where(taken[:, t], advantage, last)
        next_value = torch.where(taken[:, t], values[:, t], next_value)
        advantages[:, t] = advantage
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO advantages for ``rewards`` of shape (prompts, k): each minus the mean of the other k - 1.

    The baseline excludes the sample itself, so it stays unbiased (Kool et al. 2019; Ahmadian et al. 2024).
    """
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"leave-one-out needs k >= 2 samples per prompt, got rewards of shape {tuple(rewards.shape)}.")
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)  # (prompts, k)
    return rewards - baseline


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target) over masked positions; 1 is perfect, <= 0 useless."""
    var_target = masked_var(target, mask, unbiased=False)
    if var_target == 0:
        return float("nan")
    return float(1 - masked_var(target - predicted, mask, unbiased=False) / var_target)


class FixedKLController:
    """A constant KL coefficient beta (N+ / TRL's new trainers: 0.05; InstructGPT: 0.02)."""

    def __init__(self, beta: float) -> None:
        self.value = float(beta)

    def update(self, current_kl: float, n_episodes: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, float]:
        """The coefficient, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the coefficient from :meth:`state_dict`."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """Beta steered toward a target KL (Ziegler et al. 2019, lm-human-preferences).

    ``e = clip(KL / target - 1, -0.2, 0.2)`` and ``beta *= 1 + e * n_episodes / horizon``:
    a KL above target raises beta, below lowers it, by at most 20% per horizon of episodes.
    """

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target={target} and horizon={horizon} must both be > 0.")
        self.value = float(beta)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_episodes: int) -> None:
        """Move beta after a batch of ``n_episodes`` whose mean per-sequence KL was ``current_kl``."""
        error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.value *= 1 + error * n_episodes / self.horizon

    def state_dict(self) -> dict[str, float]:
        """The current coefficient, for checkpoints (target and horizon come from the config)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the coefficient from :meth:`state_dict`."""
        self.value = float(state["value"])
