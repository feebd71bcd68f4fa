"""Gymnasium environments for RLHF; importing this package registers them.

>>> import gymnasium as gym
>>> env = gym.make("RLHFText-v0")  # doctest: +SKIP
"""

import os

import gymnasium as gym

from text_env.env import TextGenerationEnv
from text_env.factory import one_torch_thread
from text_env.task import Task
from text_env.turns import Game, Reply, TurnRule
from text_env.vector_env import TextGenerationVectorEnv

__all__ = ["Game", "Reply", "Task", "TextGenerationEnv", "TextGenerationVectorEnv", "TurnRule"]

if hasattr(os, "register_at_fork"):  # POSIX; a forked env worker (async vector env, SubprocVecEnv) must not hang
    os.register_at_fork(after_in_child=one_torch_thread)

if "RLHFText-v0" not in gym.registry:
    gym.register(
        id="RLHFText-v0",
        entry_point="text_env.factory:make_env",
        vector_entry_point="text_env.factory:make_vector_env",
    )

if "ChessMoveCritic-v0" not in gym.registry:
    gym.register(
        id="ChessMoveCritic-v0",
        entry_point="text_env.chess:make_chess_env",
        vector_entry_point="text_env.chess:make_chess_vector_env",
    )

if "ChessGame-v0" not in gym.registry:
    gym.register(
        id="ChessGame-v0",
        entry_point="text_env.chess:make_chess_game_env",
        vector_entry_point="text_env.chess:make_chess_game_vector_env",
    )

if "Arithmetic-v0" not in gym.registry:
    gym.register(
        id="Arithmetic-v0",
        entry_point="text_env.arithmetic:make_arithmetic_env",
        vector_entry_point="text_env.arithmetic:make_arithmetic_vector_env",
    )

if "GuessNumber-v0" not in gym.registry:
    gym.register(
        id="GuessNumber-v0",
        entry_point="text_env.guess_number:make_guess_number_env",
        vector_entry_point="text_env.guess_number:make_guess_number_vector_env",
    )
