"""torchrun worker for test_distributed.py: two PPOKL (or RLOO) iterations on the count task.

    python -m torch.distributed.run --standalone --nproc_per_node N tests/distributed_worker.py OUT [ppo_kl|rloo]

Every rank writes its final parameters to ``OUT/rank<R>.pt``; rank 0 alone writes the log and checkpoint.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from rl_helpers import count_task, tiny_lm

from agents import PPOKL, RLOO, PPOKLConfig, RLOOConfig

torch.set_num_threads(1)
out, algorithm = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ppo_kl"
task = count_task()
if algorithm == "ppo_kl":
    # whiten_rewards and an adaptive beta exercise every statistic that must be global across ranks.
    config = PPOKLConfig(batch_size=8, num_mini_batches=2, num_ppo_epochs=2, learning_rate=3e-3, beta=0.1,
                         kl_target=1.0, kl_horizon=100, whiten_rewards=True, save_steps=0, log_dir=f"{out}/run")
    agent: PPOKL | RLOO = PPOKL(task, policy=tiny_lm(task), config=config)
else:
    # Two groups of num_generations per rank; normalize_advantages whitens over every rank's responses.
    config = RLOOConfig(batch_size=8, num_mini_batches=2, num_generations=2, learning_rate=3e-3, beta=0.1,
                        normalize_advantages=True, save_steps=0, log_dir=f"{out}/run")
    agent = RLOO(task, policy=tiny_lm(task), config=config)
agent.learn(1, progress_bar=False)
agent.learn(1, reset_num_timesteps=False, progress_bar=False)
agent.save(f"{out}/saved")
value_head = agent.value_model.named_parameters(prefix="value") if isinstance(agent, PPOKL) else []
params = {name: p.detach().cpu() for name, p in [*agent.policy.named_parameters(), *value_head]}
beta = agent.kl_ctl.value if isinstance(agent, PPOKL) else agent.config.beta
torch.save({"params": params, "beta": beta, "timesteps": agent.num_timesteps}, f"{out}/rank{agent.dist.rank}.pt")
if dist.is_initialized():
    dist.destroy_process_group()
