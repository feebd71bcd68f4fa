"""stable-baselines3 PPO on a text env: the LM policy adapter plus the KL reward wrapper.

The objective is RLHF's ``E[score] - beta * KL(pi || pi_ref)``. ``KLRewardWrapper`` adds
``beta * log pi_ref(a|s)`` to every step's reward and ``KLPenaltyCallback`` subtracts
``beta * log pi(a|s)`` of the rollout policy from what SB3 stores, so each token's
reward carries the exact per-token KL penalty, as in ``agents.PPOKL``. The generic
route, an entropy bonus ``ent_coef=beta`` instead of the callback, has the same value in
expectation but leaves the later tokens' ``-beta * log pi`` out of the returns; responses
then shrink to a few tokens (``--entropy-bonus`` shows it). The env is ``--env``, any
registered text env id (default RLHFText-v0); the policy starts from the env's default
policy (or ``--model PATH``), and a frozen copy is the reference.

Run (2 CPU cores shared with other jobs; one torch thread avoids oversubscription):
    OMP_NUM_THREADS=1 .venv/bin/python examples/sb3_ppo.py                   # 4096 tokens, about 8 minutes
    OMP_NUM_THREADS=1 .venv/bin/python examples/sb3_ppo.py --timesteps 256   # smoke run, about 30 seconds
    OMP_NUM_THREADS=1 .venv/bin/python examples/sb3_ppo.py --env Arithmetic-v0

Each PPO rollout prints how many responses finished in it, their mean raw score and
their KL to the reference (sum over tokens of log pi - log pi_ref, in nats). SB3
re-runs the whole window per token (no KV cache), so this is many times slower per
token than ``agents.PPOKL``; ``bench/sb3_vs_ppokl.py`` measures by how much.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from agents.sb3 import KLPenaltyCallback, LMActorCriticPolicy, lm_policy_kwargs
from text_env import Task
from text_env.wrappers import KLRewardWrapper


class ScoreAndKL(BaseCallback):
    """Per rollout: mean raw score and mean KL(pi || pi_ref) of the responses that finished in it."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[float, float]] = []
        self._scores: list[float] = []
        self._kls: list[float] = []
        self._logp = np.zeros(0)  # running sum of log pi(a|s) per sub-env

    def _on_training_start(self) -> None:
        self._logp = np.zeros(self.training_env.num_envs)

    def _on_step(self) -> bool:
        self._logp += self.locals["log_probs"].cpu().numpy()  # (n_envs,) log pi of the actions just taken
        for i, (done, info) in enumerate(zip(self.locals["dones"], self.locals["infos"], strict=True)):
            if done:
                self._scores.append(info["score"])
                self._kls.append(self._logp[i] - info["episode_ref_logprob"])
                self._logp[i] = 0.0
        return True

    def _on_rollout_end(self) -> None:
        if self._scores:
            self.history.append((float(np.mean(self._scores)), float(np.mean(self._kls))))
            print(f"tokens {self.num_timesteps:6d}  responses {len(self._scores):4d}  "
                  f"score {self.history[-1][0]:+.3f}  KL {self.history[-1][1]:.3f} nats")
        self._scores, self._kls = [], []


def run(task: Task, policy: torch.nn.Module, timesteps: int, beta: float = 0.05, entropy_bonus: bool = False,
        num_envs: int = 4, n_steps: int = 64, learning_rate: float = 3e-5, seed: int = 0) -> list[tuple[float, float]]:
    """PPO-train ``policy`` (in place) on ``task`` against a frozen copy; returns (score, KL) per rollout.

    A task with an action mask (chess) trains with sb3-contrib's MaskablePPO: the reference's log-probs are
    normalized over the allowed tokens, so the policy must sample only those too.
    """
    reference = copy.deepcopy(policy)  # shared by the sub-envs' wrappers: read-only, each keeps its own cache
    venv = make_vec_env(lambda: KLRewardWrapper(gym.make("RLHFText-v0", task=task), reference, beta),
                        n_envs=num_envs, seed=seed)
    algorithm, policy_class = PPO, LMActorCriticPolicy
    if task.action_mask is not None:
        from sb3_contrib import MaskablePPO

        from agents.sb3 import MaskableLMActorCriticPolicy

        algorithm, policy_class = MaskablePPO, MaskableLMActorCriticPolicy
    model = algorithm(
        policy_class, venv, policy_kwargs=lm_policy_kwargs(policy),
        learning_rate=learning_rate, n_steps=n_steps, batch_size=n_steps * num_envs // 4, n_epochs=4,
        gamma=1.0, gae_lambda=0.95, clip_range=0.2, vf_coef=0.1, max_grad_norm=1.0,
        ent_coef=beta if entropy_bonus else 0.0,
        seed=seed,
    )
    log = ScoreAndKL()
    model.learn(timesteps, callback=[log] if entropy_bonus else [KLPenaltyCallback(beta), log])
    return log.history


def main(argv: Sequence[str] | None = None) -> list[tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="RLHFText-v0", help="registered text env id (default RLHFText-v0)")
    parser.add_argument("--timesteps", type=int, default=4096, help="generated tokens to train on (default 4096)")
    parser.add_argument("--beta", type=float, default=0.05, help="KL coefficient (default 0.05)")
    parser.add_argument("--entropy-bonus", action="store_true",
                        help="ent_coef=beta instead of KLPenaltyCallback: the generic route (responses collapse)")
    parser.add_argument("--num-envs", type=int, default=4, help="parallel episodes (default 4)")
    parser.add_argument("--n-steps", type=int, default=64, help="tokens per sub-env per PPO rollout (default 64)")
    parser.add_argument("--learning-rate", type=float, default=3e-5, help="Adam learning rate (default 3e-5)")
    parser.add_argument("--model", default=None, help="a Hugging Face causal LM folder to start from (default: the "
                        "env's default policy); on RLHFText-v0 the env then uses its tokenizer, other envs keep theirs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from agents.models import load_model
    from rlhf_gym.compare import make_task

    torch.manual_seed(args.seed)
    task = make_task(args.env, {"model": args.model} if args.model and args.env == "RLHFText-v0" else {})
    policy = load_model(args.model, torch.device("cpu"), task)  # None: the task's default policy
    history = run(task, policy, args.timesteps, beta=args.beta, entropy_bonus=args.entropy_bonus,
                  num_envs=args.num_envs, n_steps=args.n_steps, learning_rate=args.learning_rate, seed=args.seed)
    if history:
        (s0, k0), (s1, k1) = history[0], history[-1]
        print(f"first rollout: score {s0:+.3f}, KL {k0:.3f}; last rollout: score {s1:+.3f}, KL {k1:.3f}")
    return history


if __name__ == "__main__":
    main()
