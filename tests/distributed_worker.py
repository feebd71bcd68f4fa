"""torchrun worker for test_distributed.py: two PPOKL iterations on the count task.

    python -m torch.distributed.run --standalone --nproc_per_node N tests/distributed_worker.py OUT

Every rank writes its final parameters to ``OUT/rank<R>.pt``; rank 0 alone writes the log and checkpoint.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from rl_helpers import count_task, tiny_lm

from agents import PPOKL, PPOKLConfig

torch.set_num_threads(1)
out = sys.argv[1]
task = count_task()
# whiten_rewards and an adaptive beta exercise every statistic that must be global across ranks.
config = PPOKLConfig(batch_size=8, num_minibatches=2, ppo_epochs=2, learning_rate=3e-3, init_kl_coef=0.1,
                     kl_target=1.0, kl_horizon=100, whiten_rewards=True, checkpoint_every=0, log_dir=f"{out}/run")
agent = PPOKL(task, policy=tiny_lm(task), config=config)
agent.learn(1, progress_bar=False)
agent.learn(1, reset_num_timesteps=False, progress_bar=False)
agent.save(f"{out}/saved")
params = {name: p.detach().cpu() for name, p in [*agent.policy.named_parameters(),
                                                  *agent.value_model.named_parameters(prefix="value")]}
torch.save({"params": params, "beta": agent.kl_ctl.value, "timesteps": agent.num_timesteps},
           f"{out}/rank{agent.dist.rank}.pt")
if dist.is_initialized():
    dist.destroy_process_group()
