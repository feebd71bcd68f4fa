"""Rollout speed: the Gymnasium rollout against ``model.generate`` and a naive loop, same batch.

Run: .venv/bin/python bench/rollout.py   (about 2 minutes)

One batch of 64 episodes, 16-token prompts, 48 new tokens each (EOS does not stop
the episodes, so every side generates exactly 64 x 48 tokens), sampled at
temperature 1 with top_k=0, top_p=1. Three ways, measured in the same run:
  * rollout:  agents.rollout.rollout through the native vector env (KV cache, new tokens only)
  * generate: transformers' model.generate on the same prompt tensors
  * naive:    re-run the whole sequence for every new token (no cache)
Targets: rollout/generate >= 0.9, rollout/naive >= 10. Medians over repeats.
The model is the embedded default policy when it is built, else a 4-layer x 256
GPT-2 built from its config (random weights: speed does not depend on them).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
import warnings

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from agents.rollout import make_rollout_env, next_token_logprobs, rollout
from reward_models import FunctionRewardModel
from text_env import Task
from text_env.char_tokenizer import char_tokenizer

BATCH, PROMPT_TOKENS, NEW_TOKENS = 64, 16, 48
REPEATS, NAIVE_REPEATS = 5, 2
TEXT = "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun "


def model_and_task() -> tuple[torch.nn.Module, Task, str]:
    try:
        from agents.lm import load_causal_lm
        from text_env.defaults import default_policy_path, default_task

        model = load_causal_lm(default_policy_path(), device="cpu")
        base = default_task(max_new_tokens=NEW_TOKENS, max_prompt_tokens=PROMPT_TOKENS)
        name = f"default policy ({default_policy_path()})"
    except (FileNotFoundError, ImportError) as e:
        print(f"default assets unavailable ({type(e).__name__}); using a 4x256 GPT-2 from config")
        tok = char_tokenizer("abcdefghijklmnopqrstuvwxyz .,!?'")
        base = Task(prompts=[TEXT], tokenizer=tok, reward_model=FunctionRewardModel(lambda p, r: 0.0),
                    max_new_tokens=NEW_TOKENS, max_prompt_tokens=PROMPT_TOKENS)
        config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=256, n_layer=4, n_head=4)
        model = GPT2LMHeadModel(config).eval()
        name = "GPT-2 4x256 from config (random weights)"
    # Long prompts cut to their last 16 tokens; EOS does not end episodes: fixed 48 new tokens.
    # A constant reward and no gold scorer: the env's scoring at the end of an episode (reward
    # model and VADER, about a third of the rollout's time here) has no counterpart in generate
    # or the naive loop, so all three measure generation alone.
    long_prompts = [p + " " + TEXT for p in (base.prompts if isinstance(base.prompts, list) else [TEXT])]
    task = dataclasses.replace(base, prompts=long_prompts, stop_on_eos=False, long_prompt="truncate",
                               reward_model=FunctionRewardModel(lambda p, r: 0.0), gold_scorer=None)
    return model, task, name


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    load = os.getloadavg()[0]
    threads = 1 if load > 1 else torch.get_num_threads()
    torch.set_num_threads(threads)
    print(f"load average {load:.2f}: torch threads = {threads} for every side")
    warnings.filterwarnings("ignore", message=".*left-truncated.*")
    model, task, name = model_and_task()
    print(f"model: {name}; batch {BATCH}, {PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens")
    env = make_rollout_env(task, BATCH)
    generator = torch.Generator().manual_seed(0)

    batch = rollout(model, env, seed=0, generator=generator)
    ids, mask = batch.prompt_ids, batch.prompt_mask  # (B, P): the same prompts for every side
    assert batch.response_mask.sum() == BATCH * NEW_TOKENS, "every episode must run the full 48 tokens"
    tokens = BATCH * NEW_TOKENS

    def run_rollout() -> None:
        rollout(model, env, seed=0, generator=generator)

    @torch.no_grad()
    def run_generate() -> None:
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             pad_token_id=task.pad_token_id)
        assert out.shape == (BATCH, ids.shape[1] + NEW_TOKENS)

    @torch.no_grad()
    def run_naive() -> None:
        seq, att = ids, mask  # (B, L)
        for _ in range(NEW_TOKENS):
            pos = (att.cumsum(1) - 1).clamp(min=0)
            logits = model(input_ids=seq, attention_mask=att, position_ids=pos).logits[:, -1]  # (B, V)
            logp = next_token_logprobs(logits, 1.0, task.vocab_size)  # (B, V)
            token = torch.multinomial(logp.exp(), 1, generator=generator)  # (B, 1)
            seq, att = torch.cat([seq, token], 1), torch.cat([att, torch.ones_like(token)], 1)

    run_generate()  # warm-up
    # Rounds interleave the three sides, so a change in the machine's load hits them alike.
    times: dict[str, list[float]] = {"rollout": [], "generate": [], "naive": []}
    for r in range(REPEATS):
        times["rollout"].append(seconds(run_rollout))
        times["generate"].append(seconds(run_generate))
        if r < NAIVE_REPEATS:
            times["naive"].append(seconds(run_naive))
    rates = {}
    for label, ts in times.items():
        rates[label] = tokens / statistics.median(ts)
        print(f"{label:>8}: {rates[label]:9.0f} tokens/s (median of {len(ts)})")
    print(f"rollout/generate = {rates['rollout'] / rates['generate']:.2f}  (target >= 0.9)")
    print(f"rollout/naive    = {rates['rollout'] / rates['naive']:.1f}  (target >= 10)")


if __name__ == "__main__":
    main()
