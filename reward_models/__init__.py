"""Reward models: the scoring protocol, preference data, labelers and training."""

from reward_models.base import FunctionRewardModel, RewardModel, checked_scores

__all__ = ["FunctionRewardModel", "RewardModel", "checked_scores"]
