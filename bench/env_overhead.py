"""The environment's own cost per generated token, next to one policy forward pass.

Run: .venv/bin/python bench/env_overhead.py   (about 30 s)

A batch of 64 episodes steps through the native vector env with random tokens (no
model), so the time is the env alone: observation shift, stop rule, scoring call.
The baseline, measured in the same run, is one KV-cached forward pass of a tiny
4-layer x 256 GPT-2 for the same batch: the cheapest policy step this package
ships. The ratio says what fraction of a rollout step the env costs.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from reward_models import FunctionRewardModel
from text_env import Task, TextGenerationVectorEnv
from text_env.char_tokenizer import char_tokenizer

BATCH, NEW_TOKENS, REPEATS = 64, 48, 5


def make_task(stop_strings: tuple[str, ...]) -> Task:
    try:
        from text_env.defaults import default_task

        return default_task(max_new_tokens=NEW_TOKENS, stop_strings=stop_strings)
    except (FileNotFoundError, ImportError):
        return Task(
            prompts=["the quick brown fox jumps over the lazy dog"] * 8,
            tokenizer=char_tokenizer("abcdefghijklmnopqrstuvwxyz .,!?'"),
            reward_model=FunctionRewardModel(lambda p, r: float(len(r))),
            max_new_tokens=NEW_TOKENS,
            stop_strings=stop_strings,
        )


def env_seconds_per_token(task: Task) -> float:
    env = TextGenerationVectorEnv(task, BATCH, autoreset_mode="Disabled")
    rng = np.random.default_rng(0)
    eos = task.tokenizer.eos_token_id
    actions = rng.integers(0, task.vocab_size, size=(NEW_TOKENS, BATCH))
    actions[actions == eos] = task.pad_token_id  # run every episode to the length cap
    env.reset(seed=0)
    start = time.perf_counter()
    for t in range(NEW_TOKENS):
        env.step(actions[t])
    return (time.perf_counter() - start) / (NEW_TOKENS * BATCH)


@torch.no_grad()
def model_seconds_per_token(vocab: int) -> float:
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=4, n_embd=256, n_head=4, n_positions=128,
                                       bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(0, vocab, (BATCH, 16))
    out = model(ids, use_cache=True)
    cache, token = out.cache, ids[:, -1:]
    start = time.perf_counter()
    for _ in range(NEW_TOKENS):
        out = model(token, cache=cache, use_cache=True)
        cache = out.cache
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    return (time.perf_counter() - start) / (NEW_TOKENS * BATCH)


def main() -> None:
    load = os.getloadavg()[0]
    torch.set_num_threads(1 if load > 1 else 2)
    print(f"load average {load:.2f}; torch threads {torch.get_num_threads()}; batch {BATCH}, {NEW_TOKENS} new tokens")
    rows = []
    for label, stops in (("env, EOS stop rule", ()), ("env, EOS + stop string", ("\n\n",))):
        task = make_task(stops)
        env_t = statistics.median(env_seconds_per_token(task) for _ in range(REPEATS))
        model_t = statistics.median(model_seconds_per_token(task.vocab_size) for _ in range(REPEATS))
        rows.append((label, task.vocab_size, env_t, model_t))
    print(f"{'case':<26}{'vocab':>7}{'env us/token':>14}{'model us/token':>16}{'env/model':>11}")
    for label, vocab, env_t, model_t in rows:
        print(f"{label:<26}{vocab:>7}{env_t * 1e6:>14.2f}{model_t * 1e6:>16.2f}{env_t / model_t:>11.3f}")


if __name__ == "__main__":
    main()
