"""TRL's RLOOTrainer against our RLOO and PPOKL: same policy, reward model, prompts and batch, one run.

Run: .venv/bin/python bench/vs_trl.py              (about 6 minutes on 2 idle CPU cores)
     .venv/bin/python bench/vs_trl.py --steps 2    (smoke run, about 2 minutes)

All three start from the embedded default policy (4.24 M-parameter GPT-2), score with the
default task's reward model and sample the default training prompts: 64 completions per
step (16 prompts x 4), at most 32 new tokens, temperature 1 without top-k/top-p, the KL
penalty beta = 0.05 against a frozen copy of the policy, the same constant learning rate,
CPU, float32 (TRL: ``bf16=False``, ``use_cpu=True``, and ``activation_checkpointing=False``:
its default ``True`` trades recomputation for memory that a model this small does not
need). TRL's RLOO and ours take one gradient step per batch; PPOKL takes 4 epochs x 4
minibatches (and trains a value head).

Speed: each method runs ``--warmup`` step(s), then ``--steps`` timed steps; a step is
generation, scoring, reference log-probs and the update. The table gives the median step
time as seconds per 1,000 episodes, wall-clock and this process's CPU time (on a shared,
busy machine the CPU time is the steadier figure), and the speed-up over TRL. Result: each trained policy is
evaluated on 64 held-out prompts x 4 samples the same way (``rlhf_gym.pipeline.evaluate_policy``):
gold score, proxy score and KL to the initial policy (per response, k1). The steps differ
per method in how far they move, so compare gold at its KL (the SFT reference is KL 0).

TRL 1.16 has no PPO trainer any more: PPOTrainer moved to ``trl.experimental.ppo`` in the
v1 refactor (huggingface/trl#4482) and was then removed altogether (huggingface/trl#7020).
RLOOTrainer is its closest on-policy RLHF trainer with a KL penalty.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from agents import PPOKL, RLOO, PPOKLConfig, RLOOConfig
from agents.lm import load_causal_lm
from rlhf_common.training import set_torch_threads
from rlhf_gym.pipeline import evaluate_policy
from text_env import Task
from text_env.defaults import default_eval_prompts_path, default_policy_path, default_task
from text_env.prompts import load_prompts

EPISODES, K, BETA, MAX_NEW_TOKENS = 64, 4, 0.05, 32


Timings = list[tuple[float, float]]
"""(wall, CPU) seconds of each timed step."""


def trl_rloo(task: Task, prompts: list[str], steps: int, warmup: int, lr: float, seed: int) -> tuple[Any, Timings]:
    """Train with TRL's RLOOTrainer for ``warmup + steps`` steps; the model and the timed step times."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig as TRLRLOOConfig
    from trl import RLOOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []  # (wall, CPU) at the end of each step, and at the start

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not self.ends:
                self.ends.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append((time.perf_counter(), time.process_time()))

    def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return task.reward_model.score(prompts, completions).tolist()

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = TRLRLOOConfig(
            output_dir=out, per_device_train_batch_size=EPISODES, num_generations=K,
            max_completion_length=MAX_NEW_TOKENS, beta=BETA, learning_rate=lr, max_steps=warmup + steps,
            lr_scheduler_type="constant", temperature=1.0, top_k=0, top_p=1.0, bf16=False, use_cpu=True,
            activation_checkpointing=False,  # TRL's default True recomputes activations: memory not needed here
            report_to="none", logging_strategy="no",
            save_strategy="no", disable_tqdm=True, disable_dropout=True, dataloader_num_workers=0, seed=seed,
        )
        trainer = RLOOTrainer(model=str(default_policy_path()), reward_funcs=reward, args=args,
                              train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=task.tokenizer,
                              callbacks=[timer])
        trainer.train()
    times = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(timer.ends, timer.ends[1:], strict=False)]
    return trainer.model.eval(), times[warmup:]


def ours(agent: PPOKL | RLOO, steps: int, warmup: int) -> tuple[Any, Timings]:
    """Run ``warmup + steps`` iterations of one of our agents; the policy and the timed iteration times."""
    times = []
    for _ in range(warmup + steps):
        start, cpu = time.perf_counter(), time.process_time()
        agent.learn(1, reset_num_timesteps=False, progress_bar=False)  # exactly one iteration
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return agent.policy, times[warmup:]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per method (default 1)")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="learning rate of all three (default 3e-4)")
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts to evaluate on (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps {args.steps} must be >= 1 and --warmup {args.warmup} >= 0")
    load = os.getloadavg()[0]
    set_torch_threads()
    warnings.filterwarnings("ignore", message=".*left-truncated.*")
    task = default_task(max_new_tokens=MAX_NEW_TOKENS)
    prompts = list(task.prompts)
    eval_prompts = load_prompts(default_eval_prompts_path())[: args.eval_prompts]
    reference = load_causal_lm(default_policy_path(), device="cpu")
    print(f"load average {load:.2f}; torch threads {torch.get_num_threads()}; {EPISODES} episodes "
          f"({EPISODES // K} prompts x {K}) of <= {MAX_NEW_TOKENS} tokens per step; beta {BETA}; "
          f"learning rate {args.learning_rate}; "
          f"{args.warmup} warm-up + {args.steps} timed steps each\n")

    runs: dict[str, Callable[[], tuple[Any, Timings]]] = {}
    runs["TRL RLOOTrainer"] = lambda: trl_rloo(task, prompts, args.steps, args.warmup, args.learning_rate, args.seed)
    with tempfile.TemporaryDirectory() as logs:
        common = dict(batch_size=EPISODES, learning_rate=args.learning_rate, anneal_lr=False, seed=args.seed,
                      save_steps=0, device="cpu")
        runs["agents.RLOO"] = lambda: ours(
            RLOO(task, copy.deepcopy(reference),
                 RLOOConfig(num_generations=K, beta=BETA, log_dir=f"{logs}/rloo", **common)),
            args.steps, args.warmup)
        runs["agents.PPOKL (4 epochs)"] = lambda: ours(
            PPOKL(task, copy.deepcopy(reference), PPOKLConfig(beta=BETA, num_mini_batches=4,
                                                               log_dir=f"{logs}/ppo", **common)),
            args.steps, args.warmup)
        results = {}
        for name, run in runs.items():
            print(f"training: {name} ...", flush=True)
            model, times = run()
            print(f"evaluating: {name} ...", flush=True)
            medians = (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times))
            results[name] = (medians, evaluate_policy(
                model, reference, task, eval_prompts, 4, seed=args.seed + 1, progress=False))
    sft = evaluate_policy(reference, reference, task, eval_prompts, 4, seed=args.seed + 1, progress=False)

    (trl_wall, trl_cpu), _ = results["TRL RLOOTrainer"]
    print("\nMedian step; CPU time is this process's (one thread: the wall time of an idle core).\n")
    print("| trainer | s / 1,000 episodes (wall) | s / 1,000 episodes (CPU) | speed vs TRL (wall) | "
          "speed vs TRL (CPU) |")
    print("|---|---|---|---|---|")
    for name, ((wall, cpu), _) in results.items():
        print(f"| {name} | {wall / EPISODES * 1000:.1f} | {cpu / EPISODES * 1000:.1f} | {trl_wall / wall:.2f}x | "
              f"{trl_cpu / cpu:.2f}x |")
    print(f"\n| policy after {args.warmup + args.steps} steps | gold score | proxy score | KL (nats) |")
    print("|---|---|---|---|")
    print(f"| SFT reference | {sft['gold']:+.3f} | {sft['proxy']:+.3f} | 0.00 |")
    for name, (_, ev) in results.items():
        print(f"| {name} | {ev['gold']:+.3f} | {ev['proxy']:+.3f} | {ev['kl']:.2f} |")


if __name__ == "__main__":
    main()
