"""Build the tactical chess position sets: Stockfish self-play with injected blunders, kept where one move wins.

Games start from a book walk or an ECO prefix (:class:`~rlhf_gym.build.chess_positions.PositionSampler`)
and go on with Stockfish's best move at ``depth``, except that with probability ``blunder_rate``
a side plays a uniformly random legal move instead (an injected blunder, the way tactics arise
in real games). Every position of a game is searched once (``multipv=2`` at ``depth``), and kept
when the best move beats the second best by at least ``min_gap_cp`` centipawns (a forced mate
counts as 100,000 minus its length in plies): a position with one clearly winning move, whose
top-1 is well defined. Each kept row records the engine's best move, the gap, and its ``kind``:

* ``mate``: the best move mates in one to three;
* ``blunder``: the previous move was an injected blunder;
* ``capture_check``: the previous move was a capture or a check;
* ``gap``: any other position with the gap.

Training and held-out games draw from disjoint seed streams (``"{seed}:train:{i}"`` and
``"{seed}:eval:{i}"``), and positions are de-duplicated by EPD across both sets and against
the quiet sets (``rlhf-gym chess-positions``), so no held-out tactical position is trained on.
No published puzzle or problem collection is used. Run it as ``rlhf-gym chess-tactics``
(default ``--out text_env/assets/chess``).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import chess
import chess.engine

from rlhf_common.config_cli import config_command
from rlhf_common.io import portable_config, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import progress_bar
from rlhf_gym.build.chess_positions import PositionSampler, PositionSetConfig, PositionSourceConfig
from text_env.chess import (
    EVAL_POSITIONS,
    EVAL_TACTICAL_POSITIONS,
    TACTICAL_POSITIONS,
    TRAIN_POSITIONS,
    close_engine,
    find_stockfish,
    load_positions,
    open_engine,
    top_moves,
)

MATE_SCORE = 100_000
"""Centipawns of a forced mate (minus its length in plies) when gaps are measured."""
MAX_MATE_MOVES = 3
"""Positions whose best move mates in at most this many moves are of kind ``mate``."""
META_FILE = "tactical_meta.json"
KINDS = ("mate", "blunder", "capture_check", "gap")


@dataclass
class TacticalSetConfig(PositionSourceConfig):
    """How ``rlhf-gym chess-tactics`` builds the tactical position sets.

    Files: tactical_positions.jsonl, eval_tactical_positions.jsonl, tactical_meta.json. Games start
    from the book and the ECO lines.
    """

    depth: int = 8
    """Stockfish search depth of the games' moves and of the gap (the critic's label depth)."""
    blunder_rate: float = 0.25
    """Chance that a move of the game is a uniformly random legal move instead of the engine's best."""
    min_gap_cp: int = 200
    """A position is kept when the best move beats the second best by at least this many centipawns."""
    max_plies: int = 80
    """Plies a game lasts at most after its opening."""
    max_per_game: int = 6
    """At most this many positions kept per game (spreads a set over many games)."""

    def __post_init__(self) -> None:
        if self.n_train < 0 or self.n_eval < 0 or self.n_train + self.n_eval < 1:
            raise ValueError(f"TacticalSetConfig: n_train={self.n_train} and n_eval={self.n_eval} must be >= 0, "
                             "one of them positive.")
        if not 0.0 <= self.blunder_rate <= 1.0:
            raise ValueError(f"TacticalSetConfig: blunder_rate={self.blunder_rate} must be in [0, 1].")
        for name in ("depth", "min_gap_cp", "max_plies", "max_per_game"):
            if getattr(self, name) < 1:
                raise ValueError(f"TacticalSetConfig: {name}={getattr(self, name)} must be >= 1.")


def position_kind(board: chess.Board, best_cp: int, blundered: bool) -> str:
    """The ``kind`` of a kept position (module docstring); ``best_cp``: the best move's centipawns (MATE_SCORE)."""
    if best_cp >= MATE_SCORE - (2 * MAX_MATE_MOVES - 1):  # mate in n moves is 2n - 1 plies
        return "mate"
    if blundered:
        return "blunder"
    if board.move_stack and (board.is_check() or _was_capture(board)):
        return "capture_check"
    return "gap"


def _was_capture(board: chess.Board) -> bool:
    """Whether the last move of ``board`` captured (a pop-and-push on a copy keeps ``board`` intact)."""
    before = board.copy(stack=True)
    last = before.pop()
    return before.is_capture(last)


def game_positions(
    sampler: PositionSampler, engine: chess.engine.SimpleEngine, config: TacticalSetConfig, rng: random.Random
) -> Iterator[dict[str, Any]]:
    """The kept positions of one self-play game with injected blunders, in game order."""
    sampler.rng = rng  # the game's own seed stream drives its opening too
    board = sampler.book_walk() if rng.random() < 0.5 else sampler.eco_prefix()
    blundered = False
    for _ in range(config.max_plies):
        if board.is_game_over(claim_draw=True):
            return
        scored = top_moves(engine, board, config.depth, 2, MATE_SCORE)
        if len(scored) == 2 and scored[0][0] - scored[1][0] >= config.min_gap_cp:
            yield {
                "fen": board.fen(),
                "best": scored[0][1].uci(),
                "gap_cp": min(scored[0][0] - scored[1][0], MATE_SCORE),
                "kind": position_kind(board, scored[0][0], blundered),
            }
        blundered = rng.random() < config.blunder_rate
        move = rng.choice(sorted(board.legal_moves, key=chess.Move.uci)) if blundered else scored[0][1]
        board.push(move)


def collect(
    name: str, count: int, config: TacticalSetConfig, engine: chess.engine.SimpleEngine, seen: set[str]
) -> list[dict[str, Any]]:
    """``count`` distinct gap positions from games seeded ``"{seed}:{name}:{i}"``; adds their EPDs to ``seen``."""
    sampler = PositionSampler(replace(PositionSetConfig(), book=config.book, eco=config.eco, seed=config.seed), engine)
    rows: list[dict[str, Any]] = []
    game = 0
    try:
        with progress_bar(count, f"tactical {name}", enabled=config.progress) as bar:
            while len(rows) < count:
                if game > 50 * max(count, 10):
                    raise RuntimeError(f"only {len(rows)} {name} positions in {game} games; lower --min-gap-cp "
                                       "or raise --blunder-rate.")
                kept = 0
                for row in game_positions(sampler, engine, config, random.Random(f"{config.seed}:{name}:{game}")):
                    epd = chess.Board(row["fen"]).epd()
                    if epd in seen or kept >= config.max_per_game or len(rows) >= count:
                        continue
                    seen.add(epd)
                    rows.append({**row, "game": game})
                    kept += 1
                    bar.update()
                game += 1
    finally:
        sampler.close()
    return rows


def quiet_epds() -> set[str]:
    """EPDs of the shipped quiet sets (kept out of the tactical sets)."""
    return {chess.Board(f).epd() for path in (TRAIN_POSITIONS, EVAL_POSITIONS) for f in load_positions(path)}


def build_tactical_sets(config: TacticalSetConfig) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Play the games and keep gap positions: ``(train_rows, eval_rows, metadata)``."""
    engine = open_engine(find_stockfish(config.stockfish_path))
    try:
        engine_name = engine.id.get("name", "unknown engine")
        seen = quiet_epds()
        eval_rows = collect("eval", config.n_eval, config, engine, seen)  # first: training never takes its EPDs
        train_rows = collect("train", config.n_train, config, engine, seen)
    finally:
        close_engine(engine)
    meta = {
        "config": portable_config(config),
        "engine": engine_name,
        "python_chess": chess.__version__,
        "counts": {name: {k: sum(r["kind"] == k for r in part) for k in KINDS}
                   for name, part in (("train", train_rows), ("eval", eval_rows))},
        "games": {name: len({r["game"] for r in part}) for name, part in (("train", train_rows), ("eval", eval_rows))},
    }
    return train_rows, eval_rows, meta


def write_tactical_sets(config: TacticalSetConfig) -> dict[str, Any]:
    """Build the sets and write them with their metadata to ``config.out``."""
    train_rows, eval_rows, meta = build_tactical_sets(config)
    out = Path(config.out)
    write_jsonl_atomic(out / TACTICAL_POSITIONS.name, train_rows)
    write_jsonl_atomic(out / EVAL_TACTICAL_POSITIONS.name, eval_rows)
    write_json_atomic(out / META_FILE, meta)
    return meta


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym chess-tactics [flags]``: rebuild the tactical chess position sets (needs Stockfish)."""

    def run(config: TacticalSetConfig) -> None:
        meta = write_tactical_sets(config)
        print(f"wrote {config.out}: {meta['counts']}")

    return config_command(argv, "rlhf-gym chess-tactics", __doc__.splitlines()[0], TacticalSetConfig, run)


if __name__ == "__main__":
    sys.exit(cli())
