"""Policies and RL algorithms that optimise language models on text_env environments."""

from agents.agent_config import AgentConfig
from agents.best_of_n import BestOfN, BestOfNConfig
from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.random_agent import RandomAgent
from agents.reference_agent import ReferenceAgent
from agents.rloo import RLOO, RLOOConfig

__all__ = ["PPOKL", "RLOO", "AgentConfig", "BestOfN", "BestOfNConfig", "PPOKLConfig", "RLOOConfig", "RandomAgent",
           "ReferenceAgent"]
