"""Shared fixtures: small tasks built in code, so the env tests need no assets."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models run faster on one thread than fighting over a shared CPU.
torch.set_num_threads(1)

from reward_models import FunctionRewardModel  # noqa: E402
from text_env import Task  # noqa: E402
from text_env.char_tokenizer import char_tokenizer  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyz .!?"
PROMPTS = ["hello there", "the cat sat", "why is the sky blue?", "a", "good morning world"]


def count_a(prompt: str, response: str) -> float:
    """Toy reward: how many letters 'a' the response has."""
    return float(response.count("a"))


def make_task(**overrides) -> Task:
    options = dict(
        prompts=PROMPTS,
        tokenizer=char_tokenizer(ALPHABET),
        reward_model=FunctionRewardModel(count_a),
        max_new_tokens=8,
        max_prompt_tokens=24,
    )
    options.update(overrides)
    return Task(**options)


@pytest.fixture
def task() -> Task:
    return make_task()
