"""Ray rollout scaling: throughput of 1 against 2 rollout workers, measured in the same run.

Run: .venv/bin/python bench/ray_scaling.py   (about 4 minutes; needs `pip install ray`)

A local Ray cluster with one CPU per worker generates batches of 128 episodes, 16-token
prompts, 32 new tokens each (EOS does not end episodes, so every batch is exactly
128 x 32 tokens), through agents.ray_rollout.RolloutPool: each worker steps its own
vector env with its own policy copy (1 torch thread), the learner merges the shares.
The model is a 6-layer x 512 GPT-2 (19M parameters) built from its config (random
weights: speed does not depend on them), large enough that forward passes, not
per-token Python overhead, set the pace. Printed, medians over repeats:
  * rollout throughput with 1 and 2 workers, and their ratio (2 at best on two free cores);
  * the same including the weight sync that training does before each batch (76 MB
    of weights through the object store to every worker: with LoRA only the adapters go);
  * the machine's ceiling: the same ratio for a pure matmul loop in 1 against 2 Ray
    actors, so that a loaded machine (the load average is printed) is not mistaken
    for a scaling problem.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from agents.ray_rollout import RolloutPool
from reward_models import FunctionRewardModel
from text_env import Task
from text_env.char_tokenizer import char_tokenizer

BATCH, PROMPT_TOKENS, NEW_TOKENS, REPEATS = 128, 16, 32, 3
TEXT = "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun "


def model_and_task() -> tuple[torch.nn.Module, Task]:
    tok = char_tokenizer("abcdefghijklmnopqrstuvwxyz .,!?'")
    # Long prompts cut to their last 16 tokens; EOS does not end episodes: fixed NEW_TOKENS new tokens.
    task = Task(prompts=[TEXT * 2], tokenizer=tok, reward_model=FunctionRewardModel(lambda p, r: 0.0),
                max_new_tokens=NEW_TOKENS, max_prompt_tokens=PROMPT_TOKENS, stop_on_eos=False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=512, n_layer=6, n_head=8))
    return model.eval(), task


def throughput(pool: RolloutPool, model: torch.nn.Module) -> tuple[float, float]:
    """Tokens per second of rollouts alone, and of sync + rollout (a training iteration's generation)."""
    pool.rollout(1.0, seed=0)  # warm-up: first forward passes, lazy imports
    rollouts, syncs = [], []
    for i in range(REPEATS):
        start = time.perf_counter()
        pool.sync(model)
        synced = time.perf_counter()
        batch = pool.rollout(1.0, seed=(i + 1) * BATCH)
        rollouts.append(time.perf_counter() - synced)
        syncs.append(synced - start)
        assert int(batch.response_mask.sum()) == BATCH * NEW_TOKENS
    tokens = BATCH * NEW_TOKENS
    return tokens / statistics.median(rollouts), tokens / statistics.median(np.add(rollouts, syncs))


class MatmulActor:
    """A pure compute loop: what one Ray CPU gives on this machine right now."""

    def __init__(self) -> None:
        torch.set_num_threads(1)

    def rate(self, seconds: float) -> float:
        a, b = torch.randn(512, 512), torch.randn(512, 512)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            a @ b
            n += 1
        return n / seconds


def machine_ceiling(ray) -> float:
    """Total matmul rate of 2 concurrent single-thread actors over that of 1."""
    actor = ray.remote(MatmulActor).options(num_cpus=1)
    rates = {}
    for n in (1, 2):
        actors = [actor.remote() for _ in range(n)]
        ray.get([a.rate.remote(0.5) for a in actors])
        rates[n] = sum(ray.get([a.rate.remote(8.0) for a in actors]))
        for a in actors:
            ray.kill(a)
    return rates[2] / rates[1]


def main() -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    model, task = model_and_task()
    print(f"model: GPT-2 6 x 512 from config; batch {BATCH} x {NEW_TOKENS} new tokens; "
          f"load average {os.getloadavg()[0]:.1f}")
    speed = {}
    for workers in (1, 2):
        pool = RolloutPool(task, model, num_workers=workers, batch_size=BATCH)
        speed[workers] = throughput(pool, model)
        pool.close()
        print(f"{workers} worker{'s' if workers > 1 else ' '}: rollout {speed[workers][0]:6.0f} tokens/s; "
              f"with weight sync {speed[workers][1]:6.0f} tokens/s")
    print(f"ratio 2 workers / 1 worker: rollout {speed[2][0] / speed[1][0]:.2f}; "
          f"with weight sync {speed[2][1] / speed[1][1]:.2f}")
    print(f"machine ceiling (matmul, 2 actors / 1): {machine_ceiling(ray):.2f}; "
          f"load average {os.getloadavg()[0]:.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
