"""TRL's RLOOTrainer and GRPOTrainer against our RLOO, GRPO and PPOKL: same policy, reward model, prompts, batch.

Run: .venv/bin/python bench/vs_trl.py              (on 2 CPU cores: RLOO, PPOKL, GRPO ~9 min; DPO ~6 more)
     .venv/bin/python bench/vs_trl.py --steps 2    (smoke run, about 2 minutes)

All five start from the embedded default policy (4.24 M-parameter GPT-2), score with the
default task's reward model and sample the default training prompts: 64 completions per
step (16 prompts x 4), at most 32 new tokens, temperature 1 without top-k/top-p, the KL
penalty beta = 0.05 against a frozen copy of the policy, the same constant learning rate,
CPU, float32 (TRL: ``bf16=False``, ``use_cpu=True``, and ``activation_checkpointing=False``:
its default ``True`` trades recomputation for memory that a model this small does not
need). TRL's RLOO and ours take one gradient step per batch; PPOKL takes 4 epochs x 4
minibatches (and trains a value head). TRL's GRPO and ours run TRL's GRPOConfig defaults
(loss_type "dapo", group-std reward scaling, epsilon 0.2, one iteration, the KL bias correction)
with the same beta in the loss: one gradient step per batch, from the rollout's log-probs, on all
64 episodes at once (TRL: ``per_device_train_batch_size=64``; ours: ``num_mini_batches=1``).

Speed: each method runs ``--warmup`` step(s), then ``--steps`` timed steps; a step is
generation, scoring, reference log-probs and the update. The table gives the median step
time as seconds per 1,000 episodes, wall-clock and this process's CPU time (on a shared,
busy machine the CPU time is the steadier figure), episodes per second, and the speed-up over TRL's trainer of
the same algorithm (RLOOTrainer for PPOKL). Result: each trained policy is
evaluated on 64 held-out prompts x 4 samples the same way (``rlhf_gym.pipeline.evaluate_policy``):
gold score, proxy score and KL to the initial policy (per response, k1). The steps differ
per method in how far they move, so compare gold at its KL (the SFT reference is KL 0).

DPO (``dpo_comparison``, also alone with ``--only-dpo``): our ``agents.DPO`` against TRL's
``DPOTrainer``, with and without its ``precompute_ref_log_probs``, on the same pairs: 2 samples of
the default policy per default training prompt, ranked by the default reward model (ties left
out), 64 pairs per step, beta 0.1, the sigmoid loss, the same constant learning rate and Adam
epsilon, ``--dpo-epochs`` epochs. Speed is pairs trained per second over building the trainer
(tokenising, the reference pass where precomputed) and training; each policy is then evaluated
like the RL ones.

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

from agents import GRPO, PPOKL, RLOO, GRPOConfig, PPOKLConfig, RLOOConfig
from agents.lm import load_causal_lm
from rlhf_common.training import set_torch_threads
from rlhf_gym.pipeline import evaluate_policy
from text_env import Task
from text_env.defaults import default_eval_prompts_path, default_policy_path, default_task
from text_env.prompts import load_prompts

EPISODES, K, BETA, MAX_NEW_TOKENS = 64, 4, 0.05, 32


Timings = list[tuple[float, float]]
"""(wall, CPU) seconds of each timed step."""


def trl_train(algorithm: str, task: Task, prompts: list[str], steps: int, warmup: int, lr: float,
              seed: int) -> tuple[Any, Timings]:
    """Train with TRL's RLOOTrainer or GRPOTrainer (``algorithm`` "rloo" / "grpo") for ``warmup + steps`` steps.

    Returns the model and the timed step times.
    """
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    config_class, trainer_class = {"rloo": (trl.RLOOConfig, trl.RLOOTrainer),
                                   "grpo": (trl.GRPOConfig, trl.GRPOTrainer)}[algorithm]

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
        args = config_class(
            output_dir=out, per_device_train_batch_size=EPISODES, num_generations=K,
            max_completion_length=MAX_NEW_TOKENS, beta=BETA, learning_rate=lr, max_steps=warmup + steps,
            lr_scheduler_type="constant", temperature=1.0, top_k=0, top_p=1.0, bf16=False, use_cpu=True,
            activation_checkpointing=False,  # TRL's default True recomputes activations: memory not needed here
            report_to="none", logging_strategy="no",
            save_strategy="no", disable_tqdm=True, disable_dropout=True, dataloader_num_workers=0, seed=seed,
        )
        trainer = trainer_class(model=str(default_policy_path()), reward_funcs=reward, args=args,
                                train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=task.tokenizer,
                                callbacks=[timer])
        trainer.train()
    times = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(timer.ends, timer.ends[1:], strict=False)]
    return trainer.model.eval(), times[warmup:]


def ours(agent: PPOKL | RLOO | GRPO, steps: int, warmup: int) -> tuple[Any, Timings]:
    """Run ``warmup + steps`` iterations of one of our agents; the policy and the timed iteration times."""
    times = []
    for _ in range(warmup + steps):
        start, cpu = time.perf_counter(), time.process_time()
        agent.learn(1, reset_num_timesteps=False, progress_bar=False)  # exactly one iteration
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return agent.policy, times[warmup:]


DPO_BATCH, DPO_BETA = 64, 0.1


def preference_file(task: Task, policy: Any, path: str, seed: int) -> int:
    """Write DPO's pairs: 2 samples of ``policy`` per default training prompt, ranked by the task's reward.

    Pairs whose two samples are the same text or tie are left out; returns how many were written.
    """
    from agents.rollout import make_rollout_env, rollout
    from rlhf_common.io import write_jsonl_atomic

    prompts, rows, chunk = list(task.prompts), [], 60
    for start in range(0, len(prompts), chunk):
        group = prompts[start : start + chunk]
        batch = rollout(policy, make_rollout_env(task, 2 * len(group)), group_size=2, prompts=group, seed=seed + start)
        for g, prompt in enumerate(group):
            (a, ra), (b, rb) = [(batch.infos[i]["response"], batch.rewards[i]) for i in (2 * g, 2 * g + 1)]
            if a != b and ra != rb:
                rows.append({"prompt": prompt, "chosen": a if ra > rb else b, "rejected": b if ra > rb else a})
    write_jsonl_atomic(path, rows)
    return len(rows)


def trl_dpo(task: Task, path: str, epochs: int, lr: float, seed: int, precompute: bool) -> tuple[Any, float, float]:
    """Train with TRL's DPOTrainer for ``epochs`` over the pairs in ``path``; the model, wall and CPU seconds.

    The time covers building the trainer (tokenising the pairs, loading the model, precomputing the
    reference log-probs with ``precompute``) and training, as :func:`our_dpo`'s covers building the agent.
    """
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from rlhf_common.io import read_jsonl

    rows = [row for _, row in read_jsonl(path)]
    with tempfile.TemporaryDirectory() as out:
        args = TRLDPOConfig(
            output_dir=out, per_device_train_batch_size=DPO_BATCH, num_train_epochs=epochs, learning_rate=lr,
            lr_scheduler_type="constant", beta=DPO_BETA, loss_type=["sigmoid"], max_length=None, adam_epsilon=1e-5,
            precompute_ref_log_probs=precompute, bf16=False, use_cpu=True,
            activation_checkpointing=False,  # TRL's default True recomputes activations: memory not needed here
            report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
            seed=seed,
        )
        start, cpu = time.perf_counter(), time.process_time()
        trainer = DPOTrainer(model=str(default_policy_path()), args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=task.tokenizer)
        trainer.train()
        return trainer.model.eval(), time.perf_counter() - start, time.process_time() - cpu


def our_dpo(task: Task, path: str, epochs: int, lr: float, seed: int, log_dir: str) -> tuple[Any, float, float]:
    """Train our DPO for ``epochs`` over the pairs in ``path`` (batches of DPO_BATCH); the policy, wall and CPU s."""
    from agents import DPO, DPOConfig

    start, cpu = time.perf_counter(), time.process_time()
    config = DPOConfig(preferences=path, batch_size=DPO_BATCH, beta=DPO_BETA, learning_rate=lr, anneal_lr=False,
                       seed=seed, save_steps=0, device="cpu", log_dir=log_dir)
    agent = DPO(task, str(default_policy_path()), config)
    assert agent.pairs is not None
    for _ in range(-(-len(agent.pairs) * epochs // DPO_BATCH)):  # as many batches as TRL's epochs hold
        agent.learn(1, reset_num_timesteps=False, progress_bar=False)  # exactly one iteration
    return agent.policy, time.perf_counter() - start, time.process_time() - cpu


def dpo_comparison(task: Task, reference: Any, eval_prompts: list[str], epochs: int, lr: float, seed: int) -> None:
    """Our DPO against TRL's DPOTrainer (with and without its precomputed reference) on the same pairs: pairs/s."""
    with tempfile.TemporaryDirectory() as work:
        path = f"{work}/pairs.jsonl"
        n = preference_file(task, reference, path, seed)
        print(f"\nDPO: {n} pairs (2 samples of the default policy per training prompt, ranked by the reward model),"
              f" batch {DPO_BATCH}, beta {DPO_BETA}, learning rate {lr}, {epochs} epochs\n", flush=True)
        runs: dict[str, Callable[[], tuple[Any, float, float]]] = {
            "TRL DPOTrainer": lambda: trl_dpo(task, path, epochs, lr, seed, precompute=False),
            "TRL DPOTrainer (precompute_ref_log_probs)": lambda: trl_dpo(task, path, epochs, lr, seed, precompute=True),
            "agents.DPO": lambda: our_dpo(task, path, epochs, lr, seed, f"{work}/dpo"),
        }
        results = {}
        for name, run in runs.items():
            print(f"training: {name} ...", flush=True)
            model, wall, cpu = run()
            results[name] = (wall, cpu, evaluate_policy(model, reference, task, eval_prompts, 4, seed=seed + 1,
                                                        progress=False))
    trl_wall, trl_cpu, _ = results["TRL DPOTrainer"]
    print("\n| trainer | pairs / s (wall) | pairs / s (CPU) | speed vs TRL (wall) | speed vs TRL (CPU) | gold | proxy "
          "| KL |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (wall, cpu, ev) in results.items():
        print(f"| {name} | {n * epochs / wall:.1f} | {n * epochs / cpu:.1f} | {trl_wall / wall:.2f}x | "
              f"{trl_cpu / cpu:.2f}x | {ev['gold']:+.3f} | {ev['proxy']:+.3f} | {ev['kl']:.2f} |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per method (default 1)")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="RL learning rate (default 3e-4)")
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts to evaluate on (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpo-epochs", type=int, default=3, help="DPO epochs over the pairs (default 3)")
    parser.add_argument("--dpo-learning-rate", type=float, default=5e-5, help="DPO learning rate (default 5e-5)")
    parser.add_argument("--only-dpo", action="store_true", help="run only the DPO comparison")
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
    if args.only_dpo:
        dpo_comparison(task, reference, eval_prompts, args.dpo_epochs, args.dpo_learning_rate, args.seed)
        return
    print(f"load average {load:.2f}; torch threads {torch.get_num_threads()}; {EPISODES} episodes "
          f"({EPISODES // K} prompts x {K}) of <= {MAX_NEW_TOKENS} tokens per step; beta {BETA}; "
          f"learning rate {args.learning_rate}; "
          f"{args.warmup} warm-up + {args.steps} timed steps each\n")

    runs: dict[str, Callable[[], tuple[Any, Timings]]] = {}
    runs["TRL RLOOTrainer"] = lambda: trl_train("rloo", task, prompts, args.steps, args.warmup, args.learning_rate,
                                                args.seed)
    runs["TRL GRPOTrainer"] = lambda: trl_train("grpo", task, prompts, args.steps, args.warmup, args.learning_rate,
                                                args.seed)
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
        runs["agents.GRPO"] = lambda: ours(
            GRPO(task, copy.deepcopy(reference),
                 GRPOConfig(num_generations=K, beta=BETA, num_mini_batches=1, log_dir=f"{logs}/grpo", **common)),
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

    print("\nMedian step; CPU time is this process's (one thread: the wall time of an idle core).\n")
    print("| trainer | s / 1,000 episodes (wall) | s / 1,000 episodes (CPU) | episodes / s (wall) | "
          "speed vs TRL (wall) | speed vs TRL (CPU) |")
    print("|---|---|---|---|---|---|")
    for name, ((wall, cpu), _) in results.items():
        (trl_wall, trl_cpu), _ = results["TRL GRPOTrainer" if "GRPO" in name else "TRL RLOOTrainer"]
        print(f"| {name} | {wall / EPISODES * 1000:.1f} | {cpu / EPISODES * 1000:.1f} | {EPISODES / wall:.1f} | "
              f"{trl_wall / wall:.2f}x | {trl_cpu / cpu:.2f}x |")
    print(f"\n| policy after {args.warmup + args.steps} steps | gold score | proxy score | KL (nats) |")
    print("|---|---|---|---|")
    print(f"| SFT reference | {sft['gold']:+.3f} | {sft['proxy']:+.3f} | 0.00 |")
    for name, (_, ev) in results.items():
        print(f"| {name} | {ev['gold']:+.3f} | {ev['proxy']:+.3f} | {ev['kl']:.2f} |")
    dpo_comparison(task, reference, eval_prompts, args.dpo_epochs, args.dpo_learning_rate, args.seed)


if __name__ == "__main__":
    main()
