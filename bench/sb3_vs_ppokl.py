"""Training speed: SB3 PPO with the LM adapter and the KL wrapper against agents.PPOKL, same model and batch.

Run: .venv/bin/python bench/sb3_vs_ppokl.py   (about 2 minutes on 2 CPU cores)

Both train the same initial model (the embedded default policy when it is built, else a
4-layer x 256 GPT-2 from its config: speed does not depend on the weights) on a batch
of 16 episodes x 32 new tokens (EOS does not end episodes, so every iteration is exactly
512 tokens), 4 PPO epochs of 4 minibatches, the same per-token KL penalty against a
frozen copy (SB3: KLRewardWrapper + KLPenaltyCallback; PPOKL: its own, beta fixed).
After one warm-up iteration each, the time of the next 2 iterations is divided by the
tokens generated: seconds per 1,000 tokens, rollout and update included. The gap: SB3
re-runs the whole window per token and the reference per sub-env, and its update
re-encodes the whole window for every token (each token is its own sample); PPOKL
generates the batch with one KV-cached forward per token and updates on whole
sequences. The SB3 figure is split into rollout and update.

The second table is the KL wrapper's own cost per env step (single env, random tokens,
medians of 4 episodes): the reference pass with its KV cache and with full recomputation
of the window, added to the bare env step, for a short and a full-context window.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import tempfile
import time
import warnings

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from transformers import GPT2Config, GPT2LMHeadModel

from agents import PPOKL, PPOKLConfig
from agents.sb3 import KLPenaltyCallback, LMActorCriticPolicy, lm_policy_kwargs
from reward_models import FunctionRewardModel
from text_env import Task, TextGenerationEnv
from text_env.char_tokenizer import char_tokenizer
from text_env.wrappers import KLRewardWrapper

BATCH, PROMPT_TOKENS, NEW_TOKENS, EPOCHS, MINIBATCHES = 16, 16, 32, 4, 4
ITERATION = BATCH * NEW_TOKENS  # tokens per rollout, both sides
TIMED_ITERATIONS, BETA, LR = 2, 0.05, 3e-5
WRAPPER_WINDOWS = ((PROMPT_TOKENS, NEW_TOKENS), (32, 96))  # (prompt, new) tokens; 128 = the models' context
LENGTH = FunctionRewardModel(lambda prompt, response: len(response) / 100, name="length")
TEXT = "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun "


def model_and_task() -> tuple[torch.nn.Module, Task, str]:
    try:
        from agents.lm import load_causal_lm
        from text_env.defaults import default_policy_path, default_task

        model = load_causal_lm(default_policy_path(), device="cpu")
        # The reward model scores each episode once, the same for both agents: a function keeps
        # the comparison on the agents' own cost (and off the reward-model asset).
        base = default_task(max_new_tokens=NEW_TOKENS, max_prompt_tokens=PROMPT_TOKENS, reward_model=LENGTH)
        name = f"default policy ({default_policy_path()})"
    except FileNotFoundError as e:
        print(f"default assets unavailable ({e}); using a 4x256 GPT-2 from config")
        tok = char_tokenizer("abcdefghijklmnopqrstuvwxyz .,!?'")
        base = Task(prompts=[TEXT], tokenizer=tok, reward_model=LENGTH,
                    max_new_tokens=NEW_TOKENS, max_prompt_tokens=PROMPT_TOKENS)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=256, n_layer=4,
                                           n_head=4)).eval()
        name = "GPT-2 4x256 from config (random weights)"
    # EOS does not end episodes: every response is exactly NEW_TOKENS long on both sides.
    return model, dataclasses.replace(base, stop_on_eos=False), name


class RolloutTimer(BaseCallback):
    """Wall time SB3 spends collecting rollouts (the rest of ``learn`` is the PPO update)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self._start = 0.0

    def _on_rollout_start(self) -> None:
        self._start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.seconds += time.perf_counter() - self._start

    def _on_step(self) -> bool:
        return True


def sb3_seconds_per_kilotoken(model: torch.nn.Module, task: Task) -> tuple[float, float]:
    """Seconds per 1,000 tokens: whole learn() and its rollout part."""
    reference = copy.deepcopy(model)
    venv = make_vec_env(lambda: KLRewardWrapper(gym.make("RLHFText-v0", task=task), reference, BETA),
                        n_envs=BATCH, seed=0)
    agent = PPO(LMActorCriticPolicy, venv, policy_kwargs=lm_policy_kwargs(copy.deepcopy(model)),
                n_steps=NEW_TOKENS, batch_size=ITERATION // MINIBATCHES, n_epochs=EPOCHS, learning_rate=LR,
                gamma=1.0, gae_lambda=0.95, vf_coef=0.1, ent_coef=0.0, max_grad_norm=1.0, seed=0, device="cpu")
    agent.learn(ITERATION, callback=KLPenaltyCallback(BETA))  # warm-up
    timer = RolloutTimer()
    start = time.perf_counter()
    agent.learn(TIMED_ITERATIONS * ITERATION, callback=[KLPenaltyCallback(BETA), timer])
    return (time.perf_counter() - start) / agent.num_timesteps * 1000, timer.seconds / agent.num_timesteps * 1000


def ppokl_seconds_per_kilotoken(model: torch.nn.Module, task: Task) -> float:
    with tempfile.TemporaryDirectory() as log_dir:
        config = PPOKLConfig(batch_size=BATCH, num_mini_batches=MINIBATCHES, num_ppo_epochs=EPOCHS, learning_rate=LR,
                             beta=BETA, kl_target=None, save_steps=0, log_dir=log_dir, device="cpu")
        agent = PPOKL(task, policy=copy.deepcopy(model), config=config)
        agent.learn(ITERATION, progress_bar=False)  # warm-up
        start = time.perf_counter()
        agent.learn(TIMED_ITERATIONS * ITERATION, progress_bar=False)
        return (time.perf_counter() - start) / agent.num_timesteps * 1000


def wrapper_seconds_per_step(model: torch.nn.Module, task: Task, use_cache: bool | None) -> float:
    """Median seconds per env step over 4 episodes: bare env (use_cache None) or with the KL wrapper."""
    env: gym.Env = TextGenerationEnv(task)
    if use_cache is not None:
        env = KLRewardWrapper(env, copy.deepcopy(model), BETA, use_cache=use_cache)
    rng = np.random.default_rng(0)
    per_episode = []
    for episode in range(4):
        env.reset(seed=episode)
        start = time.perf_counter()
        for _ in range(task.max_new_tokens):
            env.step(int(rng.integers(task.vocab_size)))
        per_episode.append((time.perf_counter() - start) / task.max_new_tokens)
    return statistics.median(per_episode)


def main() -> None:
    load = os.getloadavg()[0]
    torch.set_num_threads(1 if load > 1 else 2)
    warnings.filterwarnings("ignore", message=".*left-truncated.*")
    model, task, name = model_and_task()
    print(f"load average {load:.2f}; torch threads {torch.get_num_threads()}; model: {name}")
    print(f"batch {BATCH} episodes x {NEW_TOKENS} new tokens, {PROMPT_TOKENS}-token prompts, "
          f"{EPOCHS} epochs x {MINIBATCHES} minibatches, {TIMED_ITERATIONS} timed iterations each\n")

    sb3, sb3_rollout = sb3_seconds_per_kilotoken(model, task)
    ppokl = ppokl_seconds_per_kilotoken(model, task)
    print("| agent | s / 1,000 tokens |")
    print("|---|---|")
    print(f"| SB3 PPO + LMActorCriticPolicy + KLRewardWrapper + KLPenaltyCallback | {sb3:.2f} "
          f"(rollout {sb3_rollout:.2f}, update {sb3 - sb3_rollout:.2f}) |")
    print(f"| agents.PPOKL | {ppokl:.2f} |")
    print(f"| ratio SB3 / PPOKL | {sb3 / ppokl:.1f}x |\n")

    print("| window (prompt + new) | bare env ms / step | + KL wrapper, KV cache | + KL wrapper, full recomputation |")
    print("|---|---|---|---|")
    for prompt_tokens, new_tokens in WRAPPER_WINDOWS:
        sized = dataclasses.replace(task, max_prompt_tokens=prompt_tokens, max_new_tokens=new_tokens)
        bare, cached, full = (wrapper_seconds_per_step(model, sized, use_cache) for use_cache in (None, True, False))
        print(f"| {prompt_tokens} + {new_tokens} | {bare * 1e3:.3f} | {(cached - bare) * 1e3:.2f} | "
              f"{(full - bare) * 1e3:.2f} |")

if __name__ == "__main__":
    main()
