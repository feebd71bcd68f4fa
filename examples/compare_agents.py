"""Compare agents on one text env: the same env, prompts, seed and token budget, then one table.

Run: .venv/bin/python examples/compare_agents.py                       # RLHFText-v0, 8192 tokens each, about 2 minutes
     .venv/bin/python examples/compare_agents.py --timesteps 256        # tiny budget, under a minute
     .venv/bin/python examples/compare_agents.py --env Arithmetic-v0    # any registered text env id

Random tokens and the env's default (SFT) policy are the floor and the baseline; best-of-4
picks the reward model's favourite of 4 SFT samples (no training); RLOO and PPOKL train the
policy against the reward model with a KL penalty (beta 0.05) to the SFT reference. The table
averages each agent's last quarter of training batches: proxy (reward-model) score, gold
score ("-" for an env without one), KL to the reference per response (best-of-n:
ln n - (n-1)/n) and speed. ``rlhf-gym compare --env ID`` trains the registry's agents on any
env id and grades them before and after on held-out episodes; ``rlhf-gym pipeline`` runs the
full RLHFText-v0 comparison with plots.
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from agents import PPOKL, RLOO, BestOfN, BestOfNConfig, PPOKLConfig, RandomAgent, ReferenceAgent, RLOOConfig
from agents.agent_config import AgentConfig
from rlhf_common.training import set_torch_threads
from rlhf_gym.compare import make_task


def last_quarter(log_dir: str) -> dict[str, float]:
    """Mean of each metric over the last quarter (at least one) of an agent's logged iterations."""
    with open(Path(log_dir) / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tail = rows[-max(1, len(rows) // 4):]
    keys = ("score", "gold_score", "kl", "episodes_per_second")
    return {k: sum(float(r[k]) for r in tail) / len(tail) if tail[0].get(k) else math.nan for k in keys}


def cell(value: float, spec: str) -> str:
    """``value`` formatted by ``spec``, or "-" when the agent or env has none (NaN)."""
    return "-" if math.isnan(value) else format(value, spec)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="RLHFText-v0", help="registered text env id (default RLHFText-v0)")
    parser.add_argument("--timesteps", type=int, default=8192, help="generated tokens per agent (default 8192)")
    parser.add_argument("--batch-size", type=int, default=64, help="episodes per iteration (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    set_torch_threads()  # 1 thread on a busy machine: contended threads are far slower
    task = make_task(args.env, {})  # one env definition for all: prompts, tokenizer, reward model, default policy
    results = {}
    with tempfile.TemporaryDirectory() as logs:
        def config(cls: type[AgentConfig], name: str, **kw: object) -> AgentConfig:
            return cls(batch_size=args.batch_size, seed=args.seed, log_dir=f"{logs}/{name}", save_steps=0, **kw)

        agents = {
            "random tokens": RandomAgent(task, config(AgentConfig, "random")),
            "SFT policy": ReferenceAgent(task, config=config(AgentConfig, "sft")),
            "best-of-4": BestOfN(task, config=config(BestOfNConfig, "bon", num_generations=4)),
            "RLOO": RLOO(task, config=config(RLOOConfig, "rloo", learning_rate=1e-3, beta=0.05)),
            "PPOKL": PPOKL(task, config=config(PPOKLConfig, "ppo", learning_rate=3e-4, beta=0.05,
                                                num_mini_batches=4)),
        }
        for name, agent in agents.items():
            torch.manual_seed(args.seed)
            agent.learn(args.timesteps)
            results[name] = last_quarter(agent.config.log_dir)
        results["SFT policy"]["kl"] = 0.0  # it is the reference

    print(f"\n{args.env}, {args.timesteps} tokens per agent, seed {args.seed}; "
          "means over the last quarter of training batches\n")
    print("| agent | proxy score | gold score | KL (nats) | episodes / s |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['score']:+.3f} | {cell(r['gold_score'], '+.3f')} | {cell(r['kl'], '.2f')} "
              f"| {r['episodes_per_second']:.1f} |")
    return results


if __name__ == "__main__":
    main()
