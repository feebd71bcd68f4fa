"""Reward models: the scoring protocol, preference data, labelers and training.

Names backed by torch and transformers (``HFRewardModel``, the training functions) load
on first use, so ``import reward_models`` (and every environment) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from reward_models.base import FunctionRewardModel, RewardModel, checked_scores
from reward_models.gold import UpbeatGoldScorer
from reward_models.preferences import (
    Comparison,
    PairwiseMetrics,
    Preference,
    PromptResponses,
    Ranking,
    evaluate_preferences,
    load_collection,
    load_preferences,
    pairwise_metrics,
    save_preferences,
    to_pairs,
)
from reward_models.simulated import SimulatedLabeler, agreement, label_jsonl

_LAZY = {
    "JudgeResult": "reward_models.ai_labeler",
    "LMJudge": "reward_models.ai_labeler",
    "Labeler": "reward_models.ai_labeler",
    "ScorerLabeler": "reward_models.ai_labeler",
    "HFRewardModel": "reward_models.hf_model",
    "encode_for_reward": "reward_models.hf_model",
    "load_reward_backbone": "reward_models.hf_model",
    "sequence_scores": "reward_models.hf_model",
    "Normalization": "reward_models.normalize",
    "normalize_scores": "reward_models.normalize",
    "RewardTrainConfig": "reward_models.train_config",
    "RewardTrainResult": "reward_models.train_config",
    "ranking_loss": "reward_models.train",
    "train_reward_model": "reward_models.train",
}

__all__ = [
    "Comparison",
    "FunctionRewardModel",
    "PairwiseMetrics",
    "Preference",
    "PromptResponses",
    "Ranking",
    "RewardModel",
    "SimulatedLabeler",
    "UpbeatGoldScorer",
    "agreement",
    "checked_scores",
    "evaluate_preferences",
    "label_jsonl",
    "load_collection",
    "load_preferences",
    "pairwise_metrics",
    "save_preferences",
    "to_pairs",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reward_models' has no attribute {name!r}")
