"""The embedded default task behind ``gym.make("RLHFText-v0")``, and where its assets live.

The assets (``text_env/assets/default/``) are built from scratch, seeded, by
``rlhf-gym build-defaults`` (``rlhf_gym.build.defaults``); ``MODEL_CARD.md`` there
records the data, steps and metrics. Nothing here downloads anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from reward_models import RewardModel, UpbeatGoldScorer
from reward_models.hf import load_tokenizer
from text_env.prompts import load_prompts
from text_env.task import Task

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "default"
"""Folder of the embedded default assets."""


def _asset(name: str) -> Path:
    path = ASSETS_DIR / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: this install has no embedded default assets. Rebuild them with "
            "`rlhf-gym build-defaults` (about 15 minutes on 2 CPU cores), or pass your own "
            "model=PATH and prompts=PATH (or task=Task(...)) to gym.make."
        )
    return path


def default_policy_path() -> Path:
    """The default policy's Hugging Face folder: load it with ``agents.lm.load_policy(path)``."""
    return _asset("policy")


def default_tokenizer_path() -> Path:
    """The default tokenizer's Hugging Face folder (byte-level BPE, adds BOS to every text)."""
    return _asset("tokenizer")


def default_prompts_path() -> Path:
    """Training prompts of the default task: the opening words of held-out fortunes (JSONL)."""
    return _asset("prompts.jsonl")


def default_eval_prompts_path() -> Path:
    """A second held-out prompt set, for evaluation only (JSONL)."""
    return _asset("eval_prompts.jsonl")


def default_reward_model_path() -> Path:
    """The default reward model's folder: a Bradley-Terry ``AutoModelForSequenceClassification``."""
    return _asset("reward_model")


@cache
def default_reward_model() -> RewardModel:
    """The shipped reward model, loaded once per process and shared by every default env.

    Trained by ``rlhf-gym build-defaults`` on simulated rankings of SFT samples (the
    labeler prefers upbeat, finished, non-repetitive text); its scores are normalized
    to mean 0, std 1 on SFT samples.
    """
    from reward_models import HFRewardModel

    return HFRewardModel(default_reward_model_path())


def default_task(
    *,
    model: str | os.PathLike[str] | None = None,
    prompts: str | os.PathLike[str] | Sequence[str] | None = None,
    reward_model: RewardModel | None = None,
    gold_scorer: RewardModel | None = None,
    max_new_tokens: int = 32,
    max_prompt_tokens: int = 32,
    missing_eos_penalty: float = 0.0,
    stop_strings: Sequence[str] = (),
) -> Task:
    """The default text task, optionally with your own model's tokenizer, prompts or reward.

    Args:
        model: a Hugging Face model folder (or hub name when online) whose tokenizer
            replaces the default one, so that model can act as the policy.
        prompts: a JSONL file of ``{"prompt": str}`` rows, or a list of prompts;
            default: the shipped prompts (opening words of fortunes).
        reward_model: scores responses; default: :func:`default_reward_model`.
        gold_scorer: the true objective reported as ``info["gold_score"]``; default:
            :class:`reward_models.UpbeatGoldScorer`, the simulated labelers' own scorer.
        max_new_tokens: response length cap.
        max_prompt_tokens: prompt part of the observation window.
        missing_eos_penalty: subtracted when a response hits the length cap.
        stop_strings: end a response when its text contains one of these.
    """
    tokenizer = load_tokenizer(model if model is not None else default_tokenizer_path())
    if prompts is None:
        prompt_list = load_prompts(default_prompts_path())
    elif isinstance(prompts, (str, os.PathLike)):
        prompt_list = load_prompts(prompts)
    else:
        prompt_list = list(prompts)
    return Task(
        prompts=prompt_list,
        tokenizer=tokenizer,
        reward_model=reward_model if reward_model is not None else default_reward_model(),
        gold_scorer=gold_scorer if gold_scorer is not None else UpbeatGoldScorer(),
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        missing_eos_penalty=missing_eos_penalty,
        stop_strings=tuple(stop_strings),
        name="RLHFText-v0" if model is None else f"RLHFText-v0[{model}]",
    )
