"""``rlhf-gym demo``: a short batch of episodes on RLHFText-v0, texts and rewards printed.

The default SFT policy writes one response per prompt through the native vector env
(one KV-cached forward pass per token); the shipped reward model scores them, and the
gold scorer shows what the reward model stands in for.
"""

from __future__ import annotations

import argparse
import sys

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

import text_env  # noqa: F401  (registers the environments)
from rlhf_common.config_cli import run_command


def cli(argv: list[str] | None = None) -> int:
    """Sample ``--episodes`` responses from the default policy and print them with their scores."""
    parser = argparse.ArgumentParser(prog="rlhf-gym demo", description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8, help="episodes in the batch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds prompts and sampling (default: %(default)s)")
    args = parser.parse_args(argv)
    return run_command("rlhf-gym demo", lambda: _demo(args.episodes, args.seed))


def _demo(episodes: int, seed: int) -> None:
    """Roll out one batch of ``episodes`` and print each response with its reward and gold score."""
    import torch

    from agents.lm import load_causal_lm
    from agents.rollout import rollout
    from rlhf_common.training import quiet_transformers
    from text_env.defaults import default_policy_path

    env = gym.make_vec("RLHFText-v0", num_envs=episodes, vectorization_mode="vector_entry_point",
                       autoreset_mode=AutoresetMode.DISABLED)
    with quiet_transformers():
        policy = load_causal_lm(default_policy_path())
    batch = rollout(policy, env, seed=seed, generator=torch.Generator().manual_seed(seed))
    for info, reward in zip(batch.infos, batch.rewards, strict=True):
        print(f"{info['prompt']!r} -> {info['response']!r}\n    reward {reward:+.3f}  gold {info['gold_score']:+.3f}")
    gold = np.mean([i["gold_score"] for i in batch.infos])
    print(f"mean reward {np.mean(batch.rewards):+.3f}, mean gold {gold:+.3f}")
    env.close()


if __name__ == "__main__":
    sys.exit(cli())
