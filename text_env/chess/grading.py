"""Grade chess policies with Stockfish: centipawn loss, illegal moves, and a critic's agreement with the engine.

:func:`play_moves` gets one move per position from any agent with SB3's ``predict``
surface (``agents.PPOKL``, ``agents.BestOfN``, sb3-contrib's ``MaskablePPO``), through
``ChessMoveCritic-v0`` itself; :func:`grade_moves` grades the moves with
:meth:`~text_env.chess.StockfishCritic.centipawn_loss`; :func:`critic_agreement` measures
how often a critic (the shipped learned one) orders move pairs as Stockfish does.
``examples/ppo_kl_chess.py`` puts them together on the held-out positions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reward_models import FunctionRewardModel, RewardModel
from text_env.chess.critics import StockfishCritic
from text_env.chess.env import make_chess_env
from text_env.chess.moves import is_legal_move, legal_moves

UNSCORED = FunctionRewardModel(lambda fen, move: 0.0, name="unscored")
"""The critic of the env :func:`play_moves` plays in: moves are graded afterwards, not there."""


@dataclass(frozen=True)
class MoveGrades:
    """Stockfish's verdict on one move per position."""

    mean_cp_loss: float
    """Mean centipawn loss against the engine's best move; an illegal move counts as a forfeit
    (see :meth:`~text_env.chess.StockfishCritic.centipawn_loss`)."""
    cp_loss_sem: float
    """Standard error of ``mean_cp_loss`` over the positions."""
    illegal_rate: float
    """Share of the moves that are not legal in their position."""
    mean_score: float
    """Mean Stockfish-critic score, the env's reward: move accuracy in [0, 1], ``illegal_score`` if illegal."""
    moves: int
    """Moves graded."""


def play_moves(agent: Any, fens: Sequence[str], mask_illegal: bool = True, deterministic: bool = False) -> list[str]:
    """The move ``agent`` writes in each position: one ``ChessMoveCritic-v0`` episode per FEN.

    Each step calls ``agent.predict(obs, state, episode_start, deterministic, action_masks=...)``
    (the signature of ``agents`` and sb3-contrib's ``MaskablePPO``), with the env's legal-move
    masks when ``mask_illegal`` and ``None`` otherwise, when the agent may write illegal moves.
    """
    env = make_chess_env(critic=UNSCORED, mask_illegal=mask_illegal, positions=fens)
    moves = []
    for fen in fens:
        obs, _ = env.reset(options={"prompt": fen})
        state: Any = None
        start, terminated, info = True, False, {}
        while not terminated:
            masks = env.action_masks() if mask_illegal else None
            action, state = agent.predict(obs, state, np.array([start]), deterministic, action_masks=masks)
            obs, _, terminated, _, info = env.step(int(action))
            start = False
        moves.append(info["response"])
    return moves


def illegal_rate(fens: Sequence[str], moves: Sequence[str]) -> float:
    """Share of ``moves`` that are not legal UCI moves in their position."""
    if len(fens) != len(moves) or not moves:
        raise ValueError(f"got {len(fens)} positions and {len(moves)} moves; pass one move per position, at least one.")
    return float(np.mean([not is_legal_move(fen, move) for fen, move in zip(fens, moves, strict=True)]))


def grade_moves(grader: StockfishCritic, fens: Sequence[str], moves: Sequence[str]) -> MoveGrades:
    """Centipawn loss, illegal rate and Stockfish score of one move per position."""
    rate = illegal_rate(fens, moves)
    losses = np.array([grader.centipawn_loss(f, m) for f, m in zip(fens, moves, strict=True)])
    return MoveGrades(
        mean_cp_loss=float(losses.mean()),
        cp_loss_sem=float(losses.std(ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else float("nan"),
        illegal_rate=rate,
        mean_score=float(grader.score(fens, moves).mean()),
        moves=len(moves),
    )


@dataclass(frozen=True)
class Agreement:
    """How often a critic orders move pairs as Stockfish does."""

    rate: float
    """Share of the compared pairs that the critic orders as Stockfish does (ties count as wrong)."""
    pairs: int
    """Pairs compared: those whose Stockfish scores differ by at least ``min_gap``."""


def critic_agreement(
    critic: RewardModel,
    grader: StockfishCritic,
    fens: Sequence[str],
    moves_per_position: int = 4,
    min_gap: float = 0.05,
    seed: int = 0,
) -> Agreement:
    """Pairwise agreement of ``critic`` with Stockfish on random legal moves of ``fens``.

    In each position, ``moves_per_position`` distinct legal moves (seeded) are scored by
    both; every pair within a position that Stockfish clearly prefers one of (scores
    ``min_gap`` apart) counts once.
    """
    if moves_per_position < 2:
        raise ValueError(f"moves_per_position={moves_per_position} must be >= 2 to form pairs.")
    rng = random.Random(seed)
    agree = pairs = 0
    for fen in fens:
        moves = rng.sample(sorted(legal_moves(fen)), min(moves_per_position, len(legal_moves(fen))))
        truth, scores = grader.score([fen] * len(moves), moves), critic.score([fen] * len(moves), moves)
        for i in range(len(moves)):
            for j in range(i + 1, len(moves)):
                if abs(truth[i] - truth[j]) >= min_gap:
                    agree += (truth[i] - truth[j]) * (scores[i] - scores[j]) > 0
                    pairs += 1
    return Agreement(rate=agree / pairs if pairs else float("nan"), pairs=pairs)
