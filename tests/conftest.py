"""Shared fixtures: small tasks built in code, so the env tests need no assets."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models run faster on one thread than fighting over a shared CPU.
torch.set_num_threads(1)


class _DeprecationLogToWarning(logging.Handler):
    """transformers logs some deprecations (e.g. reading ``out.past_key_values``) instead of warning: warn them.

    The FutureWarning is attributed to the first frame outside transformers and logging, so
    pyproject's ``filterwarnings`` turn the ones our own modules cause into errors.
    """

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" not in message.lower():
            return
        frame, level = sys._getframe(1), 2
        while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("logging", "transformers"):
            frame, level = frame.f_back, level + 1
        warnings.warn(message, FutureWarning, stacklevel=level)


logging.getLogger("transformers").addHandler(_DeprecationLogToWarning(logging.WARNING))

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
