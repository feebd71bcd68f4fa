"""Best-of-n: sample n responses from the reference policy, keep the one the reward model scores best.

No training: the policy is the reference, and picking the best of n moves the output
distribution by exactly KL(BoN || ref) = ln n - (n - 1) / n nats (docs/ppo_details.md #16), the
yardstick RL's KL-vs-score curve is compared against (Gao et al. 2022).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from agents.agent_config import AgentConfig
from agents.base import Agent
from agents.command import agent_cli
from agents.models import PolicyArg
from agents.rollout import RolloutBatch, rollout
from text_env import TextGenerationVectorEnv


@dataclass
class BestOfNConfig(AgentConfig):
    """Best-of-n settings; ``batch_size`` counts samples, so ``batch_size / num_generations`` prompts per iteration."""

    log_dir: str = "runs/best_of_n"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    save_steps: int = 0
    """Save a checkpoint every this many iterations; 0 never (best-of-n learns nothing to resume)."""
    num_generations: int = 4
    """Samples per prompt (n); the best by the env's reward is kept."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_divides_batch("num_generations")


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n || reference) in nats: ln n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def best_of_n_mean(proxy: np.ndarray, values: np.ndarray, n: int) -> float:
    """Mean of ``values`` at the proxy's favourite of a random n-subset of each row's samples.

    Exact over all subsets: the sample ranked ``i``-th lowest of ``N`` by the proxy (from 0)
    is the favourite of ``C(i, n-1)`` of the ``C(N, n)`` subsets. Lower variance than
    disjoint groups, and any n up to N works. ``proxy`` and ``values`` are ``(prompts, N)``.
    """
    rows, samples = proxy.shape  # (P, N)
    order = np.argsort(proxy, axis=1, kind="stable")  # (P, N) ascending proxy
    weights = np.array([math.comb(i, n - 1) for i in range(samples)], dtype=np.float64) / math.comb(samples, n)  # (N,)
    return float((np.take_along_axis(values, order, 1) @ weights).mean())


def matched_best_of_n(dense: Sequence[dict[str, float]], kl: float) -> dict[str, float] | None:
    """Best-of-n at KL ``kl``, or None beyond the largest n measured.

    n, gold and proxy are interpolated linearly in KL between the neighbouring measured n.

    ``dense`` is best-of-n measured for n = 1, 2, 3, ... (rows with ``n``, ``kl``, ``gold``,
    ``proxy``), e.g. ``rlhf_gym.pipeline.best_of_n_curve(...)["dense"]``. An RL policy's gain
    over the reference is judged against best-of-n's gain at the same KL (Gao et al. 2022).
    """
    if not dense or kl > dense[-1]["kl"]:
        return None
    kl = max(kl, 0.0)
    upper = next(i for i, r in enumerate(dense) if r["kl"] >= kl)
    if upper == 0:
        return {"n": 1.0, "kl": kl, "gold": dense[0]["gold"], "proxy": dense[0]["proxy"]}
    lo, hi = dense[upper - 1], dense[upper]
    w = (kl - lo["kl"]) / (hi["kl"] - lo["kl"])
    return {"n": lo["n"] + w * (hi["n"] - lo["n"]), "kl": kl,
            "gold": lo["gold"] + w * (hi["gold"] - lo["gold"]), "proxy": lo["proxy"] + w * (hi["proxy"] - lo["proxy"])}


class BestOfN(Agent):
    """Samples n (``num_generations``) responses per prompt from the reference and keeps the reward model's best.

    ``learn`` measures it (score of the kept responses, analytic KL). ``predict`` plays it
    in an env: at an episode's first step (``state`` None or ``episode_start`` True) it
    decodes the prompt from the observation, samples n responses in a private env of the
    same task, and returns the best one token by token through ``state``.

    Args: ``env``, ``policy`` as for :class:`agents.ReferenceAgent`; ``config``: :class:`BestOfNConfig`.
    """

    config_class = BestOfNConfig
    config: BestOfNConfig
    needs_reference = False

    def __init__(self, env: Any, policy: PolicyArg = None, config: BestOfNConfig | None = None) -> None:
        super().__init__(env, policy, config)

    def _build(self, checkpoint: Any) -> None:
        n = self.config.num_generations
        self._plan_env = TextGenerationVectorEnv(self.task, n, autoreset_mode=AutoresetMode.DISABLED)

    def best(self, batch: RolloutBatch) -> np.ndarray:
        """Row index of the highest env reward in each group of n consecutive rows.

        Ties go to the later sample, as in :func:`best_of_n_mean` (the last of a stable ascending
        sort), so the response ``predict`` plays is the one ``learn``'s metrics describe.
        """
        n = self.config.num_generations
        rewards = batch.rewards.reshape(-1, n)  # (prompts, n)
        favourite = np.argsort(rewards, axis=1, kind="stable")[:, -1]  # (prompts,)
        return favourite + np.arange(len(rewards)) * n

    def _iteration(self) -> tuple[dict[str, float], int]:
        n = self.config.num_generations
        batch = rollout(self.policy, self.env, temperature=self.config.temperature, group_size=n,
                        seed=self._prompt_seed(), generator=self.generator)
        metrics = {f"sample_{k}": v for k, v in batch.metrics().items()}  # all n samples: the reference
        proxy = batch.rewards.reshape(-1, n)  # (prompts, n): the kept sample is the proxy's favourite
        kept = {"score": batch.scores, "reward": batch.rewards, "response_length": batch.lengths.cpu().numpy(),
                "gold_score": batch.gold_scores}
        for name, values in kept.items():
            if values is not None:
                metrics[name] = best_of_n_mean(proxy, values.reshape(-1, n), n)
        metrics["kl"] = best_of_n_kl(n)
        return metrics, int(batch.response_mask.sum())

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """Next token of the planned best response per row; ``state`` carries the plans."""
        ids, mask = np.asarray(observation["input_ids"]), np.asarray(observation["attention_mask"])
        single = ids.ndim == 1
        ids, mask = np.atleast_2d(ids), np.atleast_2d(mask)
        plans: list[list[int]] = [list(p) for p in state] if state is not None else [[] for _ in ids]
        actions = np.empty(len(ids), dtype=np.int64)
        for i in range(len(ids)):
            if state is None or (episode_start is not None and episode_start[i]) or not plans[i]:
                prompt = self.task.tokenizer.decode(ids[i][mask[i] == 1], skip_special_tokens=True)
                plans[i] = self._plan(prompt)
            actions[i] = plans[i].pop(0)
        return (actions[0] if single else actions), plans

    def _plan(self, prompt: str) -> list[int]:
        batch = rollout(self.policy, self._plan_env, temperature=self.config.temperature,
                        group_size=self.config.num_generations, prompts=[prompt], generator=self.generator)
        row = int(self.best(batch)[0])
        ids, mine = batch.response_ids[row], batch.response_mask[row].bool()
        if batch.env_mask is not None and batch.env_mask[row].any():
            # A multi-turn episode: play its first response only; the next turn plans again from what it sees.
            mine = mine & (torch.arange(len(ids), device=ids.device) < int(batch.env_mask[row].nonzero()[0]))
        return ids[mine].tolist()


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.best_of_n [--flags]``: measure best-of-n on RLHFText-v0 (or ``--env``)."""
    return agent_cli(BestOfN, argv, description=__doc__.splitlines()[0], default_timesteps=20_000)


if __name__ == "__main__":
    sys.exit(cli())
