"""Policies and RL algorithms that optimise language models on text_env environments."""
