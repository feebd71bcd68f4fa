"""Soak test: 10,000 episodes through the vector env and a PPOKL learner, watching memory, processes and files.

Run: .venv/bin/python bench/soak.py [--episodes 10000] [--batch-size 32] [--rss-bound-mb 64]   (a few minutes)

A tiny GPT-2 (2 layers x 32) learns the toy task "say 'a'" on a character vocabulary
through ``TextGenerationVectorEnv`` (autoreset off, one batch per iteration). Training
runs in chunks of ``learn()`` calls, so each chunk also opens and closes the run logger
(TensorBoard + CSV), and a checkpoint is written every 20 iterations: the code paths a
long run repeats.

Memory: RSS is sampled after every chunk. The first 10% of the episodes are warm-up
(allocator pools, lazy imports, the first checkpoint); the bound applies from there to
the end: RSS may grow by at most ``--rss-bound-mb`` (default 64 MB, under 20% of the
process), and its least-squares trend over the second half by at most ``--trend-bound-mb``
per 1,000 episodes (default 2 MB: a leak of 64 KB per iteration of 32 episodes). A run
on a 2-core machine grew +0.9 MB after warm-up, trend +0.1 MB per 1,000 episodes.
Also compared at the start and the end: child processes, open files and descriptors.
Exit status 1 if a bound is exceeded or processes or files leaked.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents import PPOKL, PPOKLConfig  # noqa: E402
from reward_models import FunctionRewardModel  # noqa: E402
from text_env import Task, TextGenerationVectorEnv  # noqa: E402
from text_env.char_tokenizer import char_tokenizer  # noqa: E402

MB = 1024 * 1024


def snapshot(proc: psutil.Process) -> dict[str, object]:
    """What a leak would grow: RSS, child processes, open files and descriptors, threads."""
    gc.collect()
    return {
        "rss": proc.memory_info().rss,
        "children": sorted(c.pid for c in proc.children(recursive=True)),
        "files": sorted(f.path for f in proc.open_files()),
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
    }


def build(batch_size: int, log_dir: Path) -> PPOKL:
    task = Task(
        prompts=["a", "b", "ab", "ba", "", "bb"],
        tokenizer=char_tokenizer("ab"),
        reward_model=FunctionRewardModel(lambda p, r: float(r.count("a")) - 0.5 * r.count("b")),
        max_new_tokens=8,
        max_prompt_tokens=4,
    )
    env = TextGenerationVectorEnv(task, batch_size, autoreset_mode="Disabled")
    tok = task.tokenizer
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(GPT2Config(vocab_size=task.vocab_size, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id)).eval()
    config = PPOKLConfig(batch_size=batch_size, num_mini_batches=2, num_ppo_epochs=2, learning_rate=3e-4,
                         save_steps=20, log_dir=str(log_dir), beta=0.05, kl_target=None)
    return PPOKL(env, policy, config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iterations-per-chunk", type=int, default=10, help="iterations per learn() call")
    parser.add_argument("--rss-bound-mb", type=float, default=64.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--trend-bound-mb", type=float, default=2.0,
                        help="allowed RSS trend over the second half, MB per 1000 episodes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    proc = psutil.Process()
    before = snapshot(proc)
    print(f"start: RSS {before['rss'] / MB:.1f} MB, {len(before['children'])} child processes, "
          f"{len(before['files'])} open files, {before['fds']} descriptors, {before['threads']} threads")

    with tempfile.TemporaryDirectory() as tmp:
        agent = build(args.batch_size, Path(tmp) / "run")
        tokens_per_chunk = args.iterations_per_chunk * args.batch_size  # >= 1 token per episode: >= this many its
        started, samples, warm = time.perf_counter(), [], None
        while agent.iteration * args.batch_size < args.episodes:
            agent.learn(tokens_per_chunk, reset_num_timesteps=False, progress_bar=False)
            episodes = agent.iteration * args.batch_size
            rss = snapshot(proc)["rss"]
            samples.append((episodes, rss))
            if warm is None and episodes >= args.episodes // 10:
                warm = (episodes, rss, snapshot(proc))
            if len(samples) % 10 == 0:
                print(f"  {episodes:>6} episodes  RSS {rss / MB:7.1f} MB  {time.perf_counter() - started:6.1f} s",
                      flush=True)
        seconds = time.perf_counter() - started
        episodes = agent.iteration * args.batch_size
        del agent
        after = snapshot(proc)
    assert warm is not None

    warm_episodes, warm_rss, warm_snap = warm
    growth = (after["rss"] - warm_rss) / MB
    tail = [(e, r) for e, r in samples if e >= episodes / 2]
    slope = np.polyfit([e for e, _ in tail], [r / MB for _, r in tail], 1)[0] * 1000 if len(tail) > 2 else 0.0
    new_children = sorted(set(after["children"]) - set(before["children"]))
    new_files = sorted(set(after["files"]) - set(before["files"]))
    print(f"{episodes} episodes in {seconds:.0f} s ({episodes / seconds:.0f} episodes/s)")
    print(f"RSS: start {before['rss'] / MB:.1f} MB, after warm-up ({warm_episodes} episodes) {warm_rss / MB:.1f} MB, "
          f"end {after['rss'] / MB:.1f} MB; growth after warm-up {growth:+.1f} MB (bound {args.rss_bound_mb:.0f} MB), "
          f"trend over the second half {slope:+.2f} MB per 1000 episodes (bound {args.trend_bound_mb:.0f})")
    print(f"child processes: start {len(before['children'])}, end {len(after['children'])}; leaked {new_children}")
    print(f"open files: start {len(before['files'])}, end {len(after['files'])}; leaked {new_files}")
    print(f"descriptors: start {before['fds']}, after warm-up {warm_snap['fds']}, end {after['fds']}; "
          f"threads: start {before['threads']}, end {after['threads']}")
    ok = (growth <= args.rss_bound_mb and slope <= args.trend_bound_mb and not new_children and not new_files
          and after["fds"] <= warm_snap["fds"])
    print("OK" if ok else "FAILED: memory grew past the bound or processes/files leaked")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
