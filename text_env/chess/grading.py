"""Grade chess policies with Stockfish: centipawn loss, illegal moves, game results, a critic's agreement.

:func:`play_moves` gets one move per position from any agent with SB3's ``predict``
surface (``agents.PPOKL``, ``agents.BestOfN``, sb3-contrib's ``MaskablePPO``) or a function
``policy(obs, action_mask) -> action``, through ``ChessMoveCritic-v0`` itself; :func:`grade_moves`
grades the moves with :meth:`~text_env.chess.StockfishCritic.centipawn_loss`. :func:`play_games`
plays one ``ChessGame-v0`` game per starting position against the weak engine and
:func:`grade_games` grades every agent move the same way and counts the results.
:func:`critic_agreement` measures how often a critic (the shipped learned one) orders move
pairs as Stockfish does. ``examples/ppo_kl_chess.py`` puts them together on the held-out positions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reward_models import RewardModel
from text_env.chess.critics import UNSCORED, StockfishCritic
from text_env.chess.env import make_chess_env
from text_env.chess.game import ADJUDICATED, DRAW, LOSS, WIN, make_chess_game_env
from text_env.chess.moves import is_legal_move, legal_moves


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


def play_episode(
    env: Any, agent: Any, fen: str, mask_illegal: bool = True, deterministic: bool = False, seed: int | None = None
) -> dict:
    """One episode of a chess env from ``fen``, played by ``agent``; returns the final ``info``.

    ``seed`` seeds the env's RNG at the reset (ChessGame-v0's opponent samples its moves from it).

    Each step calls ``agent.predict(obs, state, episode_start, deterministic, action_masks=...)``
    (the signature of ``agents`` and sb3-contrib's ``MaskablePPO``), or, for an agent without
    ``predict``, ``agent(obs, action_mask)``; with the env's legal-move masks when ``mask_illegal``
    and ``None`` otherwise, when the agent may write illegal moves.
    """
    obs, _ = env.reset(seed=seed, options={"prompt": fen})
    state: Any = None
    start, terminated, info = True, False, {}
    while not terminated:
        masks = env.action_masks() if mask_illegal else None
        if hasattr(agent, "predict"):
            action, state = agent.predict(obs, state, np.array([start]), deterministic, action_masks=masks)
        else:
            action = agent(obs, masks)
        obs, _, terminated, _, info = env.step(int(action))
        start = False
    return info


def play_moves(agent: Any, fens: Sequence[str], mask_illegal: bool = True, deterministic: bool = False) -> list[str]:
    """The move ``agent`` writes in each position: one ``ChessMoveCritic-v0`` episode per FEN (:func:`play_episode`)."""
    env = make_chess_env(critic=UNSCORED, mask_illegal=mask_illegal, positions=fens)
    return [play_episode(env, agent, fen, mask_illegal, deterministic)["response"] for fen in fens]


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
class GameGrades:
    """Stockfish's verdict on ``ChessGame-v0`` games: every agent move, and the results."""

    moves: MoveGrades
    """The agent's moves of all games, graded as :func:`grade_moves` grades one move per position."""
    games: int
    """Games played."""
    wins: int
    """Games the agent won: checkmate, or adjudicated at the turn limit (Stockfish's evaluation for
    the agent at least ``adjudicate_cp``)."""
    draws: int
    """Drawn games: stalemate, insufficient material, repetition, the 50-move rule, or adjudicated."""
    losses: int
    """Games the agent lost: checkmated, forfeited by an illegal move, or adjudicated."""
    adjudicated: int
    """Games that reached the turn limit, their result judged by Stockfish's evaluation."""
    mean_result: float
    """Mean result for the agent, win +1, draw 0, loss -1."""
    mean_final_cp: float
    """Mean evaluation for the agent at the end (+-1000 for a decided game, 0 for a draw)."""


def play_games(
    agent: Any,
    fens: Sequence[str],
    mask_illegal: bool = True,
    deterministic: bool = False,
    seed: int = 0,
    **game_options: Any,
) -> list[dict]:
    """The final ``info`` of one ``ChessGame-v0`` game per starting FEN, played by ``agent`` (:func:`play_episode`).

    Game ``i`` is seeded with ``seed + i``, so every agent meets the same opponent choices in the same
    positions. ``game_options`` set the game (``max_turns``, ``opponent_depth``, ``temperature_cp``,
    ``adjudicate_cp``, ``stockfish_path``...); moves are not scored in the env (they are graded afterwards).
    """
    env = make_chess_game_env(critic=None, mask_illegal=mask_illegal, positions=fens, **game_options)
    try:
        return [play_episode(env, agent, fen, mask_illegal, deterministic, seed + i) for i, fen in enumerate(fens)]
    finally:
        env.close()


def grade_games(grader: StockfishCritic, games: Sequence[dict]) -> GameGrades:
    """Centipawn loss of every agent move of ``games`` (final infos of :func:`play_games`) and the results."""
    if not games:
        raise ValueError("grade_games got no games; play at least one with play_games.")
    positions = [fen for game in games for fen in game["positions"]]
    results = [game["result"] for game in games]
    return GameGrades(
        moves=grade_moves(grader, positions, [move for game in games for move in game["agent_moves"]]),
        games=len(games),
        wins=results.count(WIN),
        draws=results.count(DRAW),
        losses=results.count(LOSS),
        adjudicated=sum(game["result_reason"] == ADJUDICATED for game in games),
        mean_result=float(np.mean(results)),
        mean_final_cp=float(np.mean([game["final_cp"] for game in games])),
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
