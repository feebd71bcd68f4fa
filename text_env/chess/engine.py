"""The Stockfish engine: finding, running and closing it, searches, and Lichess's evaluation formulas.

:class:`EngineProcess` is one owned engine process; :func:`analyse_position`, :func:`top_moves` and
:func:`softmax_weights` give a position's evaluation, its best moves and a weak engine's pick.
Scores are from the side to move. The win-probability logistic and the move-accuracy formula
are Lichess's (lichess.org/page/accuracy).
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import chess
import chess.engine

LICHESS_WIN_SLOPE = 0.00368208
"""Slope of Lichess's centipawn-to-win-probability logistic (lichess.org/page/accuracy)."""
CP_CLIP = 1000
"""Evaluations are clipped to +-1000 centipawns (a forced mate counts as the clip) before a centipawn loss."""
STOCKFISH_ENV_VAR = "STOCKFISH_PATH"
"""Environment variable naming the Stockfish binary."""
STOCKFISH_FALLBACK = "/usr/games/stockfish"
"""Where Debian's ``stockfish`` package puts the binary (``/usr/games`` is often not on PATH)."""
T = TypeVar("T")


def find_stockfish(
    stockfish_path: str | os.PathLike[str] | None = None,
    needed_by: str = "the stockfish critic",
    instead: str = "or use critic='learned', which needs no engine",
) -> str:
    """The Stockfish binary: ``stockfish_path``, else ``$STOCKFISH_PATH``, else on PATH, else Debian's path.

    When none is found, the error names what needs the engine (``needed_by``), how to install it,
    and the alternative (``instead``, if any).
    """
    given = stockfish_path or os.environ.get(STOCKFISH_ENV_VAR)
    if given:
        where = "stockfish_path" if stockfish_path else f"${STOCKFISH_ENV_VAR}"
        path = shutil.which(str(given))
        if path is None:
            raise FileNotFoundError(
                f"{where}={str(given)!r} is not an executable file. Install Stockfish with "
                "`apt-get install stockfish` (Debian/Ubuntu) or `brew install stockfish` (macOS), "
                "and pass its path as stockfish_path= or in $STOCKFISH_PATH."
            )
        return path
    path = shutil.which("stockfish") or shutil.which(STOCKFISH_FALLBACK)
    if path is None:
        raise FileNotFoundError(
            f"{needed_by} needs the Stockfish engine, which was not found on PATH or at "
            f"{STOCKFISH_FALLBACK}. Install it with `apt-get install stockfish` (Debian/Ubuntu) or "
            "`brew install stockfish` (macOS), or pass stockfish_path= (or set $STOCKFISH_PATH)"
            f"{'; ' + instead if instead else ''}."
        )
    return path


def open_engine(path: str, timeout: float = 60.0, hash_mb: int = 16) -> chess.engine.SimpleEngine:
    """Start a one-thread UCI engine whose background thread never blocks interpreter exit.

    ``SimpleEngine`` runs its event loop in a thread that inherits the daemon flag of the
    thread that starts it. Python joins non-daemon threads *before* ``atexit`` handlers
    (where ``weakref.finalize`` quits the engine), so an engine started from the main thread
    and never closed hangs the interpreter at exit; starting it from a daemon thread avoids that.
    ``timeout`` bounds the engine's start-up handshake: 60 s, since loading its network on a
    loaded machine took over 10 s (python-chess's default).
    """
    box: dict[str, Any] = {}

    def start() -> None:
        try:
            box["engine"] = chess.engine.SimpleEngine.popen_uci(path, timeout=timeout)
        except BaseException as e:  # re-raised in the caller's thread below
            box["error"] = e

    thread = threading.Thread(target=start, name="stockfish-start", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise RuntimeError(f"could not start the chess engine {path}: {box['error']!r}") from box["error"]
    engine = box["engine"]
    try:
        engine.configure({"Threads": 1, "Hash": hash_mb})
    except BaseException:
        close_engine(engine)
        raise
    return engine


def close_engine(engine: chess.engine.SimpleEngine) -> None:
    """Ask the engine to quit (waits for the process to exit), then stop its event loop."""
    try:
        engine.quit()
    except (chess.engine.EngineError, asyncio.TimeoutError, TimeoutError):
        pass  # already dead or stuck: close() below kills the transport either way
    finally:
        engine.close()


class EngineProcess:
    """One engine process for one owner: started at the first call, reused, one call at a time, with a timeout.

    ``close()`` ends it, and so do garbage collection of this object and interpreter exit (the
    finalizer holds the engine, not this object); a later call starts a new one. A call that
    times out or finds the engine dead ends it too and raises RuntimeError. The Stockfish critic
    and ChessGame-v0's opponent each own one.
    """

    def __init__(self, path: str, timeout: float = 10.0, hash_mb: int = 16) -> None:
        self.path = path
        self.timeout = timeout
        self.hash_mb = hash_mb
        self._engine: chess.engine.SimpleEngine | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()  # one call at a time on the one engine

    def run(self, call: Callable[[chess.engine.SimpleEngine], T], what: str) -> T:
        """``call(engine)`` on the running engine; ``what`` (e.g. "on FEN with limit L") names it in errors."""
        with self._lock:
            if self._engine is None:
                # Start-up has its own, longer bound (open_engine); ``timeout`` bounds each call.
                self._engine = open_engine(self.path, hash_mb=self.hash_mb)
                self._finalizer = weakref.finalize(self, close_engine, self._engine)
            try:
                return call(self._engine)
            except (asyncio.TimeoutError, TimeoutError, chess.engine.EngineError) as e:
                self._end()  # a stuck or dead engine is replaced at the next call
                raise RuntimeError(
                    f"Stockfish ({self.path}) failed {what} within timeout={self.timeout}s: {e!r}. "
                    "Lower depth/time_limit or raise timeout."
                ) from e

    def close(self) -> None:
        """End the engine process now (idempotent; a later call starts a new one)."""
        with self._lock:
            self._end()

    @property
    def pid(self) -> int | None:
        """Process id of the running engine, or None when none runs."""
        return None if self._engine is None else self._engine.transport.get_pid()

    def _end(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs close_engine once and detaches
        self._engine = self._finalizer = None


def analyse_position(
    process: EngineProcess,
    board: chess.Board,
    limit: chess.engine.Limit,
    root_moves: list[chess.Move] | None = None,
    options: dict[str, Any] | None = None,
) -> chess.engine.InfoDict:
    """The engine's search of ``board`` at ``limit``: its ``score`` (side to move) and ``pv``.

    Every search starts from a cleared hash (a fresh ``game`` object makes python-chess send
    ``ucinewgame``), so the same search gives the same result (tested in test_chess.py).
    ``options`` are UCI options for this search only (e.g. ``{"Skill Level": 20}``).
    """
    info = process.run(
        lambda engine: engine.analyse(
            board,
            limit,
            root_moves=root_moves,
            game=object(),
            info=chess.engine.INFO_SCORE | chess.engine.INFO_PV,
            options=options or {},
        ),
        f"on {board.fen()!r} with limit {limit}",
    )
    if "score" not in info:
        raise RuntimeError(f"Stockfish returned no score for {board.fen()!r}: {info!r}.")
    return info


def win_probability(score: chess.engine.Score) -> float:
    """Expected score in [0, 1] of an evaluation from the side to move (Lichess's logistic).

    ``W(cp) = 1 / (1 + exp(-0.00368208 * cp))``; a forced mate is W = 1 for the side that
    mates and W = 0 for the side that is mated.
    """
    if score.is_mate():
        return 1.0 if score > chess.engine.Cp(0) else 0.0
    return 1.0 / (1.0 + math.exp(-LICHESS_WIN_SLOPE * score.score()))


def clipped_cp(score: chess.engine.Score) -> int:
    """An evaluation in centipawns from the side to move, clipped to ``[-CP_CLIP, CP_CLIP]``."""
    return max(-CP_CLIP, min(CP_CLIP, score.score(mate_score=10 * CP_CLIP)))


def move_accuracy(win_probability_loss: float) -> float:
    """Lichess's move accuracy in [0, 1] for a loss of win probability (lichess.org/page/accuracy).

    ``1 - 1.031668 * (1 - exp(-4.354 * loss))`` (Lichess's formula with its constant moved by
    1e-6 so that no loss scores exactly 1), clipped to [0, 1]: ~0.8 for a 5-point slip, ~0.3
    for a lost piece in a balanced position, ~0.1 for a lost queen, 0 beyond a 0.95 loss.
    """
    loss = min(max(win_probability_loss, 0.0), 1.0)
    return max(1.0 - 1.031668 * (1.0 - math.exp(-4.354 * loss)), 0.0)


def top_moves(
    engine: chess.engine.SimpleEngine, board: chess.Board, depth: int, multipv: int, mate_score: int
) -> list[tuple[int, chess.Move]]:
    """The engine's ``multipv`` best first moves in ``board`` at ``depth``, each with its centipawns.

    A search takes at most 1 s and starts from a cleared hash (a fresh ``game`` object makes
    python-chess send ``ucinewgame``), so the same position gives the same moves; a mate
    counts as ``mate_score`` centipawns. Weakened engines pick among these moves.
    """
    infos = engine.analyse(
        board,
        chess.engine.Limit(depth=depth, time=1.0),
        multipv=multipv,
        game=object(),
        info=chess.engine.INFO_SCORE | chess.engine.INFO_PV,
    )
    return [(i["score"].relative.score(mate_score=mate_score), i["pv"][0]) for i in infos if i.get("pv")]


def softmax_weights(scored: list[tuple[int, chess.Move]], temperature_cp: float) -> list[float]:
    """How a weak engine weighs the moves of :func:`top_moves`: ``exp((cp - best) / temperature_cp)``.

    Sampling a move with these weights (probability ``softmax(cp / temperature_cp)``) is the weak
    engine the default chess policy imitates (rlhf_gym/build/chess_policy.py) and ChessGame-v0's
    default opponent; a higher temperature plays weaker.
    """
    top = max(cp for cp, _ in scored)
    return [math.exp((cp - top) / temperature_cp) for cp, _ in scored]
