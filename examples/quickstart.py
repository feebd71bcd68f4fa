"""Quickstart: RLHFText-v0 through the plain Gymnasium loop, with the default SFT policy or random tokens.

Run: .venv/bin/python examples/quickstart.py                # 3 episodes of the SFT policy, about 10 seconds
     .venv/bin/python examples/quickstart.py --random       # random tokens instead
     .venv/bin/python examples/quickstart.py --episodes 1   # tiny budget

Each step is one token; the reward is 0 until the response ends, then the reward model's
score. ``info`` at the end holds the prompt, the response, the raw score and the gold score.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import gymnasium as gym

import text_env  # noqa: F401  (registers RLHFText-v0)
from agents import ReferenceAgent


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3, help="episodes to play (default 3)")
    parser.add_argument("--random", action="store_true", help="sample random tokens instead of the SFT policy")
    args = parser.parse_args(argv)

    env = gym.make("RLHFText-v0")
    agent = None if args.random else ReferenceAgent(env)  # the embedded SFT policy, unchanged
    finals = []
    for episode in range(args.episodes):
        obs, info = env.reset(seed=episode)
        done = False
        while not done:
            action = env.action_space.sample() if agent is None else agent.predict(obs)[0]
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        print(f"{info['prompt']!r} -> {info['response']!r}\n    reward {reward:+.3f}, gold {info['gold_score']:+.3f}")
        finals.append({**info, "reward": float(reward)})
    env.close()
    return finals


if __name__ == "__main__":
    main()
