"""Variational best-of-n (vBoN, Amini, Vieira, Ash and Cotterell 2024, arXiv:2407.06057): best-of-n distilled by PPO.

Best-of-n from the reference puts probability n F(r(y))^(n-1) pi_ref(y) on a response y whose
reward-model score is r(y), where F(r) = P_{y' ~ pi_ref}(r(y') < r) is the CDF of the reference's
scores for that prompt (no ties). vBoN fits the policy to it by minimising KL(pi || pi_bon); the
paper's lower bound of that objective, the one trained here, is the KL-regularised RL objective

    max_pi  E_pi[log F(r(x, y))] - 1/(n-1) KL(pi || pi_ref),

whose maximiser pi_ref(y) F(r(y))^(n-1) / Z is pi_bon itself for continuous scores. So vBoN is
:class:`agents.PPOKL` with two changes: the score on the last token is log F_hat(score), and beta is
1/(n-1). The reward is bounded (log F <= 0) and invariant to any increasing transform of the reward
model's score; once a response beats every reference sample, more score buys nothing.

F is estimated per prompt from M (``reference_samples``) responses of the frozen reference, scored
by the env's reward model with the same penalties (the task's and ``missing_eos_penalty``) as the
policy's: F_hat(r) = (#{reference scores < r} + 1) / (M + 1), the authors' estimator
(github.com/rycolab/vbon, examples/ppo_sentiments.py: ``load_bon_dict``, ``calc_bon_reward``). It is
the empirical CDF of the M + 1 scores that include the response itself, so log F_hat lies in
[-log(M + 1), 0] and is never -inf. The reference is frozen, so each prompt's sorted scores are
sampled once, the first time the prompt appears, cached, and kept in the checkpoint.

Cost: the reference's tokens (logged cumulatively as ``reference_tokens``) do NOT count toward
``timesteps``, which stay the policy's env steps as for every agent, so vBoN gets the same number
of policy updates per budget as PPOKL; their wall time is inside the iteration, so ``train_seconds``
(and the pipeline's training-seconds column) includes it. The paper's exact vBoN objective (``--bound
exact`` in the authors' code) is not implemented: its extra terms weigh pi_ref(y)^i for i >= 2, which
is negligible for responses of more than a few tokens.

    from agents import VBoN, VBoNConfig
    agent = VBoN("RLHFText-v0", config=VBoNConfig(n=16, reference_samples=32)).learn(196_608)

Data-parallel under torchrun like PPOKL: the ranks agree on the batch's new prompts, share out their
reference sampling (chunk c on rank c mod N) and exchange the scores, so every rank holds the whole
cache (rank 0 saves it) and N ranks take the 1-process step.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gymnasium.vector import AutoresetMode

from agents.command import agent_cli
from agents.distributed import all_gather_objects, reduce_metrics
from agents.lora import AdapterDisabled
from agents.models import PolicyArg
from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.rollout import RolloutBatch, rollout
from text_env import TextGenerationVectorEnv

__all__ = ["VBoN", "VBoNConfig", "log_cdf"]

REFERENCE_SCORES_FILE = "reference_scores.json"
"""Checkpoint file with every cached prompt's sorted reference scores."""
REFERENCE_SEED = 2**40
"""Offset of the reference samples' episode seeds: far from the policy's (``seed + iteration * batch_size + i``)."""


@dataclass
class VBoNConfig(PPOKLConfig):
    """vBoN settings: PPOKL's, with beta set by ``n`` (Amini et al. 2024) and the CDF's reference sample count."""

    log_dir: str = "runs/vbon"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    n: int = 16
    """The n of the best-of-n distribution to distill (the paper's N); beta = 1/(n-1). Best-of-n's KL to the
    reference is ln n - (n-1)/n nats (1.84 for 16), the KL the policy tends to as it converges."""
    reference_samples: int = 32
    """M: reference responses per prompt that estimate its score CDF (sampled once per prompt, cached).
    log F_hat ranges over [-ln(M+1), 0], so M should well exceed n; the authors used up to 300."""
    beta: float | None = None
    """KL weight, fixed at 1/(n-1) by the objective: leave it None (derived), or give exactly 1/(n-1)."""

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n={self.n} must be >= 2: vBoN distills best-of-n with beta = 1/(n-1).")
        if self.reference_samples < 1:
            raise ValueError(f"reference_samples={self.reference_samples} must be >= 1 (M reference responses "
                             "per prompt estimate the score CDF; 32 or more is sensible).")
        derived = 1 / (self.n - 1)
        if self.beta is not None and not math.isclose(self.beta, derived, rel_tol=1e-9):
            raise ValueError(f"beta={self.beta} conflicts with n={self.n}: vBoN's KL weight is 1/(n-1) = "
                             f"{derived:.6g}; leave beta unset (None) and choose n instead.")
        self.beta = derived
        if self.kl_target is not None:
            raise ValueError(f"kl_target={self.kl_target}: vBoN keeps beta fixed at 1/(n-1); use kl_target=None.")
        super().__post_init__()


def log_cdf(reference: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(B,) log F_hat(score) = log((#{reference < score} + 1) / (M + 1)) per row.

    ``reference`` (B, M) holds each row's prompt's reference scores, sorted ascending; ``scores`` (B,).
    Strictly below, as the authors' ``searchsorted`` (left side): a tie with a reference sample is not a win.
    """
    below = torch.searchsorted(reference.contiguous(), scores[:, None].contiguous()).squeeze(1)  # (B,)
    return torch.log((below + 1).double() / (reference.shape[1] + 1)).float()


class VBoN(PPOKL):
    """PPOKL on log F_hat(score) with beta = 1/(n-1): the policy tends to best-of-n from the reference.

    Args: as :class:`agents.PPOKL`, with a :class:`VBoNConfig`.
    """

    config_class = VBoNConfig
    config: VBoNConfig

    def __init__(
        self, env: Any, policy: PolicyArg = None, config: VBoNConfig | None = None, reference: PolicyArg = None
    ) -> None:
        super().__init__(env, policy, config, reference)

    def _build(self, checkpoint: Path | None) -> None:
        super()._build(checkpoint)
        self.reference_scores: dict[str, torch.Tensor] = {}  # prompt -> (M,) sorted penalized reference scores
        self.reference_tokens = 0
        self.reference_seconds = 0.0
        self._reference_envs: dict[int, TextGenerationVectorEnv] = {}
        self._cdf_metrics: dict[str, float] = {}
        if checkpoint is not None:
            saved = json.loads((checkpoint / REFERENCE_SCORES_FILE).read_text(encoding="utf-8"))
            self.reference_scores = {p: torch.tensor(s, dtype=torch.float32) for p, s in saved.items()}

    def _iteration(self) -> tuple[dict[str, float], int]:
        # PPOKL's numbered steps; step 4 takes its score from _token_rewards below.
        metrics, steps = super()._iteration()
        metrics.update(reduce_metrics(self._cdf_metrics, self.dist, self.device))
        return metrics, steps

    def _token_rewards(self, batch: RolloutBatch) -> torch.Tensor:
        """(B, T) log F_hat of each episode's penalized return under its prompt's cached ones, on the last token."""
        score = batch.penalized_rewards(self.config.missing_eos_penalty)  # (B,) the same penalties as the reference's
        prompts = [str(info["prompt"]) for info in batch.infos]
        every_rank = all_gather_objects(prompts, self.dist)  # the global batch's prompts, in one process's order
        self._sample_reference([p for p in dict.fromkeys(every_rank) if p not in self.reference_scores])
        table = torch.stack([self.reference_scores[p] for p in prompts])  # (B, M) sorted
        reward = log_cdf(table, score.cpu())  # (B,)
        self._cdf_metrics = {
            "log_cdf": float(reward.mean()),
            "reference_win_rate": float((table < score.cpu()[:, None]).float().mean()),
            "reference_tokens": float(self.reference_tokens),
            "reference_seconds": self.reference_seconds,
            "reference_prompts": float(len(self.reference_scores)),
        }
        return batch.on_last_token(reward.to(score.device))

    def _sample_reference(self, prompts: list[str]) -> None:
        """Sample M reference responses for each of ``prompts``, score them, and cache their sorted scores.

        Chunks of ``batch_size / M`` prompts (at least one) fill one private vector env of M responses
        per prompt, so each rollout is as wide as a training batch. Under torchrun every rank gets the
        same ``prompts``, samples chunks c = rank, rank + N, ... and receives the others' scores.
        """
        cfg, m, dist = self.config, self.config.reference_samples, self.dist
        start = time.perf_counter()
        per_chunk, done = max(1, cfg.batch_size // m), len(self.reference_scores)
        mine: list[tuple[int, list[str], list[list[float]], int]] = []  # (first, prompts, sorted scores, tokens)
        for first in range(0, len(prompts), per_chunk)[dist.rank::dist.world_size]:
            chunk = prompts[first:first + per_chunk]
            env = self._reference_env(len(chunk) * m)
            # Episode seeds continue after the reference responses already drawn: a resumed run draws the same.
            seed = cfg.seed + REFERENCE_SEED + (done + first) * m
            batch = self._reference_rollout(env, chunk, seed)
            scores = batch.penalized_rewards(cfg.missing_eos_penalty).cpu().view(len(chunk), m)  # (prompts, M)
            mine.append((first, chunk, scores.sort(1).values.tolist(), int(batch.response_mask.sum())))
        for _, chunk, rows, tokens in sorted(all_gather_objects(mine, dist)):  # in chunk order, as one process
            for prompt, row in zip(chunk, rows, strict=True):
                self.reference_scores[prompt] = torch.tensor(row, dtype=torch.float32)
            self.reference_tokens += tokens
        self.reference_seconds += time.perf_counter() - start

    def _reference_rollout(self, env: TextGenerationVectorEnv, prompts: list[str], seed: int) -> RolloutBatch:
        """M samples of the frozen reference per prompt (under LoRA: the policy with its adapters off)."""
        kwargs = dict(temperature=self.config.temperature, group_size=self.config.reference_samples,
                      prompts=prompts, seed=seed)
        if isinstance(self.reference, AdapterDisabled):
            with self.reference.model.disable_adapter():
                return rollout(self.reference.model, env, **kwargs)
        return rollout(self.reference, env, **kwargs)

    def _reference_env(self, num_envs: int) -> TextGenerationVectorEnv:
        """A private env of ``num_envs`` sub-envs on the agent's task (the training env's wrappers never see it)."""
        if num_envs not in self._reference_envs:
            self._reference_envs[num_envs] = TextGenerationVectorEnv(self.task, num_envs,
                                                                     autoreset_mode=AutoresetMode.DISABLED)
        return self._reference_envs[num_envs]

    # ---- checkpoint extras -----------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "reference_tokens": self.reference_tokens,
                "reference_seconds": self.reference_seconds}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self.reference_tokens, self.reference_seconds = state["reference_tokens"], state["reference_seconds"]

    def _save_extra(self, folder: Path) -> None:
        super()._save_extra(folder)
        scores = {p: s.tolist() for p, s in self.reference_scores.items()}  # float32 values: exact in JSON
        (folder / REFERENCE_SCORES_FILE).write_text(json.dumps(scores), encoding="utf-8")


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.vbon [--flags]``: train on RLHFText-v0 (or ``--env``) and save the agent."""
    return agent_cli(VBoN, argv, description=__doc__.splitlines()[0], default_timesteps=200_000)


if __name__ == "__main__":
    sys.exit(cli())
