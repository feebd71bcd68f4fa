"""Build the shipped chess position sets: opening-book walks, ECO lines and short engine self-play.

Three sources of realistic positions, all offline Debian packages:

* ``book``: weighted random walks through the gnuchess Polyglot book (real games' move
  frequencies), stopped at a random length or when the book runs out;
* ``eco``: a random prefix of one of pgn-extract's ~2,000 named ECO opening lines;
* ``selfplay``: a book or ECO position followed by a few moves of weakened Stockfish
  (a random move among its top ``multipv`` within ``margin_cp`` of the best), reaching
  early middlegames the book does not cover.

Positions are de-duplicated by EPD (board, side, castling, en passant; move counters
ignored), shuffled, and split into disjoint training and held-out sets. The same seed,
book, ECO file and Stockfish version give the same files. Run it as
``rlhf-gym chess-positions`` (default ``--out text_env/assets/chess``).
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chess
import chess.engine
import chess.pgn
import chess.polyglot

from rlhf_common.config_cli import config_command
from rlhf_common.io import portable_config, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import progress_bar
from text_env.chess import ASSETS, close_engine, find_stockfish, open_engine, top_moves

BOOK_PATH = "/usr/share/games/gnuchess/book.bin"
"""Polyglot opening book of Debian's ``gnuchess-book`` package."""
ECO_PATH = "/usr/share/pgn-extract/eco.pgn"
"""ECO opening lines of Debian's ``pgn-extract`` package."""
META_FILE = "positions_meta.json"


@dataclass
class PositionSourceConfig:
    """What every chess position-set builder shares: where the sets go, their sizes, their sources."""

    out: str = str(ASSETS)
    """Folder receiving the training and held-out JSONL files and their meta JSON."""
    seed: int = 0
    """Seeds every random choice: the same seed, book, ECO file and Stockfish version give the same files."""
    n_train: int = 3000
    """Training positions."""
    n_eval: int = 500
    """Held-out positions (disjoint from the training ones)."""
    book: str = BOOK_PATH
    """Polyglot opening book (apt-get install gnuchess-book)."""
    eco: str = ECO_PATH
    """PGN file of opening lines (apt-get install pgn-extract)."""
    stockfish_path: str | None = None
    """Stockfish binary; default $STOCKFISH_PATH, PATH or /usr/games/stockfish."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class PositionSetConfig(PositionSourceConfig):
    """How ``rlhf-gym chess-positions`` builds the quiet position sets.

    Files: positions.jsonl, eval_positions.jsonl, positions_meta.json.
    """

    book_share: float = 0.4
    """Share of positions from book walks."""
    eco_share: float = 0.2
    """Share of positions from ECO lines; the rest comes from self-play."""
    max_book_plies: int = 30
    """Book walks stop after a uniform 1..max_book_plies plies (or when the book has no move)."""
    max_selfplay_plies: int = 12
    """Self-play adds a uniform 1..max_selfplay_plies plies to a book or ECO position."""
    selfplay_depth: int = 5
    """Stockfish search depth in self-play."""
    selfplay_multipv: int = 4
    """Self-play picks among Stockfish's this many best moves..."""
    selfplay_margin_cp: int = 60
    """...those within this many centipawns of the best, uniformly."""

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError(f"PositionSetConfig: n_train={self.n_train} and n_eval={self.n_eval} must be >= 1.")
        if not (0 <= self.book_share and 0 <= self.eco_share and self.book_share + self.eco_share <= 1):
            raise ValueError(
                f"PositionSetConfig: book_share={self.book_share} and eco_share={self.eco_share} must be >= 0 "
                "and sum to at most 1 (the rest is self-play)."
            )
        for name in ("max_book_plies", "max_selfplay_plies", "selfplay_depth", "selfplay_multipv"):
            if getattr(self, name) < 1:
                raise ValueError(f"PositionSetConfig: {name}={getattr(self, name)} must be >= 1.")


class PositionSampler:
    """Draws positions from the book, the ECO lines and engine self-play, with one RNG."""

    def __init__(self, config: PositionSetConfig, engine: chess.engine.SimpleEngine) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.engine = engine
        self.eco_lines = read_eco_lines(_existing(config.eco, "eco", "pgn-extract"))
        self.book = chess.polyglot.open_reader(_existing(config.book, "book", "gnuchess-book"))

    def close(self) -> None:
        """Close the opening book."""
        self.book.close()

    def book_walk(self) -> chess.Board:
        """A weighted random walk through the book, of uniform random length or until the book ends."""
        board = chess.Board()
        for _ in range(self.rng.randint(1, self.config.max_book_plies)):
            try:
                entry = self.book.weighted_choice(board, random=self.rng)
            except IndexError:  # out of book
                break
            board.push(entry.move)
        return board

    def eco_prefix(self) -> chess.Board:
        """A random non-empty prefix of a random ECO line."""
        line = self.rng.choice(self.eco_lines)
        board = chess.Board()
        for move in line[: self.rng.randint(1, len(line))]:
            board.push(move)
        return board

    def selfplay(self) -> chess.Board:
        """A book or ECO position continued by a few moves of weakened Stockfish."""
        board = self.book_walk() if self.rng.random() < 0.5 else self.eco_prefix()
        cfg = self.config
        for _ in range(self.rng.randint(1, cfg.max_selfplay_plies)):
            if board.is_game_over():
                break
            scored = top_moves(self.engine, board, cfg.selfplay_depth, cfg.selfplay_multipv, mate_score=100_000)
            best = max(cp for cp, _ in scored)
            candidates = [move for cp, move in scored if cp >= best - cfg.selfplay_margin_cp]
            board.push(self.rng.choice(candidates))
        return board


def read_eco_lines(path: str) -> list[list[chess.Move]]:
    """The main line of every game in a PGN file (pgn-extract's eco.pgn: one named opening each)."""
    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        while (game := chess.pgn.read_game(f)) is not None:
            if game.errors:
                raise ValueError(f"{path}: cannot read the game {game.headers!r}: {game.errors[0]}")
            moves = list(game.mainline_moves())
            if moves:
                lines.append(moves)
    if not lines:
        raise ValueError(f"{path}: no opening lines found; is it a PGN file?")
    return lines


def build_positions(config: PositionSetConfig) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, Any]]:
    """Sample, de-duplicate and split positions: ``(train_rows, eval_rows, metadata)``."""
    total = config.n_train + config.n_eval
    quotas = {"book": round(total * config.book_share), "eco": round(total * config.eco_share)}
    quotas["selfplay"] = total - quotas["book"] - quotas["eco"]
    engine = open_engine(find_stockfish(config.stockfish_path))
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    try:
        sampler = PositionSampler(config, engine)
        engine_name = engine.id.get("name", "unknown engine")
        draw = {"book": sampler.book_walk, "eco": sampler.eco_prefix, "selfplay": sampler.selfplay}
        with progress_bar(total, "chess positions", enabled=config.progress) as bar:
            for source, quota in quotas.items():
                found, attempts = 0, 0
                while found < quota:
                    attempts += 1
                    if attempts > 50 * quota:
                        raise RuntimeError(
                            f"only {found} distinct {source} positions in {attempts - 1} draws (quota {quota}); "
                            f"lower {source}_share or n_train/n_eval."
                        )
                    board = draw[source]()
                    epd = board.epd()
                    if board.is_game_over() or epd in seen:
                        continue
                    seen.add(epd)
                    rows.append({"fen": board.fen(), "source": source})
                    found += 1
                    bar.update()
        sampler.close()
    finally:
        close_engine(engine)
    sampler.rng.shuffle(rows)
    eval_rows, train_rows = rows[: config.n_eval], rows[config.n_eval :]
    meta = {
        "config": portable_config(config),
        "engine": engine_name,
        "python_chess": chess.__version__,
        "book_sha256": _sha256(config.book),
        "eco_sha256": _sha256(config.eco),
        "counts": {
            name: {s: sum(r["source"] == s for r in part) for s in quotas}
            for name, part in (("train", train_rows), ("eval", eval_rows))
        },
    }
    return train_rows, eval_rows, meta


def write_position_sets(config: PositionSetConfig) -> dict[str, Any]:
    """Build the sets and write positions.jsonl, eval_positions.jsonl and positions_meta.json to ``config.out``."""
    train_rows, eval_rows, meta = build_positions(config)
    out = Path(config.out)
    write_jsonl_atomic(out / "positions.jsonl", train_rows)
    write_jsonl_atomic(out / "eval_positions.jsonl", eval_rows)
    write_json_atomic(out / META_FILE, meta)
    return meta


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym chess-positions [flags]``: rebuild the chess position sets (needs Stockfish)."""

    def run(config: PositionSetConfig) -> None:
        meta = write_position_sets(config)
        print(f"wrote {config.out}: {meta['counts']}")

    return config_command(argv, "rlhf-gym chess-positions", __doc__.splitlines()[0], PositionSetConfig, run)


def _existing(path: str, flag: str, package: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--{flag} {path} does not exist; apt-get install {package}, or pass --{flag} PATH.")
    return path


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(cli())
