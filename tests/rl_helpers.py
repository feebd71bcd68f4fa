"""Tiny tasks and models for the agent tests: a learnable toy reward, a 2-layer GPT-2 built in code; torchrun."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from reward_models import FunctionRewardModel
from text_env import Reply, Task
from text_env.char_tokenizer import char_tokenizer


def count_a(prompt: str, response: str) -> float:
    """Toy reward: how many letters 'a' the response has."""
    return float(response.count("a"))


def slow_count_a(prompts: list[str], responses: list[str], delay: float) -> list[float]:
    """``count_a`` for a batch that takes ``delay`` seconds: gives a subprocess time to be killed mid-run."""
    time.sleep(delay)
    return [count_a(p, r) for p, r in zip(prompts, responses, strict=True)]


def count_task(max_new_tokens: int = 8, reward_delay: float = 0.0, **overrides) -> Task:
    """Reward = number of 'a' in the response, over a 6-token vocabulary (pad bos eos unk a b)."""
    reward = FunctionRewardModel(count_a)
    if reward_delay:
        reward = FunctionRewardModel(lambda p, r: slow_count_a(p, r, reward_delay), batched=True)
    options = dict(prompts=["a", "b", "ab", "ba"], tokenizer=char_tokenizer("ab"),
                   reward_model=reward, max_new_tokens=max_new_tokens, max_prompt_tokens=4)
    options.update(overrides)
    return Task(**options)


def write_pairs(path: Path, n: int = 64, seed: int = 0) -> Path:
    """Pairs on the count task's prompts: the chosen response always has an 'a', the rejected only 'b's."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        chosen = "".join(rng.choice("ab") for _ in range(rng.randint(0, 3))) + "a"
        rows.append({"prompt": rng.choice(["a", "b", "ab", "ba"]), "chosen": chosen,
                     "rejected": "b" * rng.randint(1, 4)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class LetterGame:
    """Toy turn rule: the env answers each response with 1-3 random letters; a response with two 'b's ends it."""

    def __init__(self, prompt: str, rng) -> None:
        self.rng = rng

    def reply(self, response: str) -> Reply:
        if response.count("b") >= 2:
            return Reply(None, reward=1.0)
        return Reply("".join(self.rng.choice(list("ab"), size=int(self.rng.integers(1, 4)))), reward=-0.1)


def turns_task(next_observation: str = "conversation", max_new_tokens: int = 4, **overrides) -> Task:
    """``count_task`` as a multi-turn game (:class:`LetterGame`): up to 3 turns, each scored by count_a.

    The conversation outgrows ``max_prompt_tokens=12`` by the third turn, so it is left-truncated too.
    """
    options = dict(turn_rule=LetterGame, max_turns=3, next_observation=next_observation, max_prompt_tokens=12)
    return count_task(max_new_tokens, **{**options, **overrides})


def tiny_lm(task: Task, seed: int = 0, n_embd: int = 32, n_layer: int = 2) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 sized for ``task``'s tokenizer, in eval mode."""
    torch.manual_seed(seed)
    tok = task.tokenizer
    config = GPT2Config(vocab_size=task.vocab_size, n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(config).eval()


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node nproc ARGS`` (a script, or ``-m module``) on one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
