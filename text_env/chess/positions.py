"""The chess task's shipped assets and its prompts: FEN positions, checked and loaded.

The assets live in ``text_env/assets/chess/`` and are rebuilt by ``rlhf-gym chess-positions``
(the quiet position sets), ``rlhf-gym chess-tactics`` (the tactical ones), ``rlhf-gym chess-critic``
(the learned critic) and ``rlhf-gym chess-policy`` (the default policy); the builders are in
:mod:`rlhf_gym.build`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import chess

from rlhf_common.io import DataError, read_jsonl, require_str

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "chess"
"""Folder of the shipped chess assets."""
TRAIN_POSITIONS = ASSETS / "positions.jsonl"
"""Shipped training positions (the default prompt source)."""
EVAL_POSITIONS = ASSETS / "eval_positions.jsonl"
"""Shipped held-out positions, disjoint from the training ones."""
TACTICAL_POSITIONS = ASSETS / "tactical_positions.jsonl"
"""Shipped tactical training positions (``rlhf-gym chess-tactics``): one move beats the rest by >= 200 cp."""
EVAL_TACTICAL_POSITIONS = ASSETS / "eval_tactical_positions.jsonl"
"""Shipped tactical held-out positions, from games never used for training, disjoint from every other set."""
LEARNED_CRITIC = ASSETS / "critic"
"""Shipped learned critic: a Hugging Face reward model folder plus ``critic.json`` (calibration, metrics)."""
CRITIC_META_FILE = "critic.json"
"""The learned critic's record beside its weights: calibration, held-out metrics, build settings."""
CHESS_POLICY = ASSETS / "policy"
"""Shipped default chess policy (built by ``rlhf-gym chess-policy``): a Hugging Face causal-LM folder
with the chess tokenizer, e.g. ``agents.lm.load_policy(CHESS_POLICY)``, plus ``policy.json`` (data, metrics)."""
POLICY_META_FILE = "policy.json"
"""The chess policy's record beside its weights: Stockfish scores, SFT metrics, build settings."""


def parse_position(fen: str) -> chess.Board:
    """The board of ``fen``; a ValueError says why it cannot start an episode."""
    if not isinstance(fen, str):
        raise TypeError(f"a chess position must be a FEN string, got {type(fen).__name__}.")
    try:
        board = chess.Board(fen)
    except ValueError as e:
        raise ValueError(f"{fen!r} is not a valid FEN: {e}.") from None
    if not board.is_valid():
        raise ValueError(f"{fen!r} is not a legal chess position ({board.status()!r}).")
    if not any(board.generate_legal_moves()):
        raise ValueError(f"{fen!r} has no legal move (checkmate or stalemate); it cannot be a prompt.")
    return board


def load_positions(source: Sequence[str] | str | os.PathLike[str] | None = None) -> list[str]:
    """FENs to draw prompts from: a list of FENs, a JSONL file of ``{"fen": ...}`` rows, or the shipped set.

    Every FEN is checked (valid, at least one legal move), so a bad one fails here
    with its file and line rather than mid-training.
    """
    if source is None:
        source = TRAIN_POSITIONS
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).resolve()
        stat = path.stat() if path.is_file() else None  # the cache key changes when the file does
        return list(_read_positions(str(path), stat and (stat.st_mtime_ns, stat.st_size)))
    fens = list(source)
    if not fens:
        raise ValueError("positions is an empty list; give at least one FEN.")
    for i, fen in enumerate(fens):
        try:
            parse_position(fen)
        except (TypeError, ValueError) as e:
            raise ValueError(f"positions[{i}]: {e}") from None
    return fens


@lru_cache(maxsize=8)
def _read_positions(path: str, version: tuple[int, int] | None) -> tuple[str, ...]:
    # `version` (mtime, size) is only part of the cache key: an edited file is read again.
    if not Path(path).is_file():
        shipped = Path(path).parent == ASSETS
        hint = " Rebuild the shipped sets with `rlhf-gym chess-positions`." if shipped else ""
        raise FileNotFoundError(f"positions file {path} does not exist.{hint}")
    fens = []
    for line_no, row in read_jsonl(path):
        where = f"{path}:{line_no}"
        fen = require_str(row, "fen", where)
        try:
            parse_position(fen)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        fens.append(fen)
    if not fens:
        raise DataError(f"{path}: no positions; each line must be a JSON object with a 'fen' key.")
    return tuple(fens)
