"""Quickstart: a text env through the plain Gymnasium loop, with the env's default policy or random tokens.

Run: .venv/bin/python examples/quickstart.py                            # 3 episodes of RLHFText-v0's SFT policy
     .venv/bin/python examples/quickstart.py --random                   # random (allowed) tokens instead
     .venv/bin/python examples/quickstart.py --env ChessMoveCritic-v0   # any registered text env id
     .venv/bin/python examples/quickstart.py --episodes 1               # tiny budget

Each step is one token; the reward is 0 until a response ends, then the reward model's
score (in a multi-turn env, at the end of every turn). ``info`` at the end holds the prompt,
the response, the raw score and, when the env has one, the gold score.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import gymnasium as gym

import text_env  # noqa: F401  (registers the env ids)
from agents import ReferenceAgent


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="RLHFText-v0", help="registered text env id (default RLHFText-v0)")
    parser.add_argument("--episodes", type=int, default=3, help="episodes to play (default 3)")
    parser.add_argument("--random", action="store_true", help="sample random tokens instead of the env's policy")
    args = parser.parse_args(argv)

    env = gym.make(args.env)
    agent = None if args.random else ReferenceAgent(env)  # the env's default policy (task.default_policy), unchanged
    finals = []
    for episode in range(args.episodes):
        obs, info = env.reset(seed=episode)
        env.action_space.seed(episode)  # --random: the same tokens every run
        done, total = False, 0.0
        while not done:
            mask = info.get("action_mask")  # tasks with an action-mask rule: only allowed tokens
            action = env.action_space.sample(mask) if agent is None else agent.predict(obs, action_masks=mask)[0]
            obs, reward, terminated, truncated, info = env.step(action)
            done, total = terminated or truncated, total + float(reward)
        gold = f"{info['gold_score']:+.3f}" if "gold_score" in info else "-"
        print(f"{info['prompt']!r} -> {info['response']!r}\n    return {total:+.3f}, gold {gold}")
        finals.append({**info, "return": total})
    env.close()
    return finals


if __name__ == "__main__":
    main()
