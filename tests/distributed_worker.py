"""torchrun worker for test_distributed.py: two iterations of each named agent on the count task.

    python -m torch.distributed.run --standalone --nproc_per_node N tests/distributed_worker.py OUT ALGORITHM...

For each algorithm every rank writes its final parameters to ``OUT/ALGORITHM/rank<R>.pt``; rank 0
alone writes the log (``OUT/ALGORITHM/run``) and the saved agent (``OUT/ALGORITHM/saved``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from rl_helpers import count_task, tiny_lm, write_pairs

from agents import (
    DPO,
    GRPO,
    PPOKL,
    RLOO,
    DPOConfig,
    GRPOConfig,
    OnlineDPO,
    OnlineDPOConfig,
    PPOKLConfig,
    ReinforcePP,
    ReinforcePPConfig,
    RLOOConfig,
    VBoN,
    VBoNConfig,
)
from agents.base import Agent

torch.set_num_threads(1)
COMMON = dict(batch_size=8, num_mini_batches=2, learning_rate=3e-3, save_steps=0)
# Each agent's settings exercise the statistics that must be global across ranks (the comment says which).
CONFIGS: dict[str, tuple[type[Agent], type, dict]] = {
    # whiten_rewards and an adaptive beta.
    "ppo_kl": (PPOKL, PPOKLConfig, dict(num_ppo_epochs=2, beta=0.1, kl_target=1.0, kl_horizon=100,
                                        whiten_rewards=True)),
    # two groups per rank; normalize_advantages whitens over every rank's responses.
    "rloo": (RLOO, RLOOConfig, dict(num_generations=2, beta=0.1, normalize_advantages=True)),
    # the batch std of the rewards, bnpo's per-micro-batch token count, the KL in the loss, two passes.
    "grpo": (GRPO, GRPOConfig, dict(num_generations=2, loss_type="bnpo", scale_rewards="batch", beta=0.05,
                                    num_iterations=2)),
    # dapo's per-step token count with overlong filtering, clip-higher, one step per micro-batch.
    "grpo_dapo": (GRPO, GRPOConfig, dict(num_generations=2, loss_type="dapo", epsilon_high=0.28,
                                         gradient_accumulation_steps=1, mask_truncated_completions=True)),
    # the token whitening of the returns, the group baseline, reshuffled epochs.
    "reinforce_pp": (ReinforcePP, ReinforcePPConfig, dict(baseline=True, num_generations=2, num_ppo_epochs=2)),
    # each rank's slice of the pairs; the mean over all of them.
    "dpo": (DPO, DPOConfig, {}),
    # the untied-pair count shared by the ranks.
    "online_dpo": (OnlineDPO, OnlineDPOConfig, {}),
    # the reference-score cache, sampled in shares and exchanged.
    "vbon": (VBoN, VBoNConfig, dict(n=4, reference_samples=4)),
}

out, algorithms = sys.argv[1], sys.argv[2:]
Path(out).mkdir(parents=True, exist_ok=True)
task = count_task()
for algorithm in algorithms:
    cls, config_class, settings = CONFIGS[algorithm]
    if algorithm == "dpo":  # every rank writes (and reads) its own copy of the same pairs
        settings = {"preferences": str(write_pairs(Path(out) / f"prefs{os.environ['RANK']}.jsonl"))}
    config = config_class(**COMMON, **settings, log_dir=f"{out}/{algorithm}/run")
    agent = cls(task, policy=tiny_lm(task), config=config)
    agent.learn(1, progress_bar=False)
    agent.learn(1, reset_num_timesteps=False, progress_bar=False)
    agent.save(f"{out}/{algorithm}/saved")
    value_head = agent.value_model.named_parameters(prefix="value") if isinstance(agent, PPOKL) else []
    params = {name: p.detach().cpu() for name, p in [*agent.policy.named_parameters(), *value_head]}
    beta = agent.kl_ctl.value if isinstance(agent, PPOKL) else agent.config.beta
    torch.save({"params": params, "beta": beta, "timesteps": agent.num_timesteps},
               f"{out}/{algorithm}/rank{agent.dist.rank}.pt")
if dist.is_initialized():
    dist.destroy_process_group()
