"""Policies and RL algorithms that optimise language models on text_env environments."""

from agents.agent_config import AgentConfig
from agents.best_of_n import BestOfN, BestOfNConfig
from agents.dpo import DPO, DPOConfig
from agents.grpo import GRPO, GRPOConfig
from agents.online_dpo import OnlineDPO, OnlineDPOConfig
from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.random_agent import RandomAgent
from agents.reference_agent import ReferenceAgent
from agents.reinforce_pp import ReinforcePP, ReinforcePPConfig
from agents.rloo import RLOO, RLOOConfig
from agents.vbon import VBoN, VBoNConfig

__all__ = ["DPO", "GRPO", "PPOKL", "RLOO", "AgentConfig", "BestOfN", "BestOfNConfig", "DPOConfig", "GRPOConfig",
           "OnlineDPO", "OnlineDPOConfig", "PPOKLConfig", "RLOOConfig", "RandomAgent", "ReferenceAgent", "ReinforcePP",
           "ReinforcePPConfig", "VBoN", "VBoNConfig"]
