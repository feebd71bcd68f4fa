"""ChessMoveCritic-v0: write one chess move for a position, scored by a critic.

The chess task on the generic text interface: the prompt is a FEN, the response a UCI
move written one character per step, and the reward model a move critic: Stockfish, the
shipped learned critic (a reward model trained on Stockfish-labelled move rankings), or
any :class:`~reward_models.RewardModel`. Legal-move action masks come from a trie over
the position's legal moves. The shipped assets are built by :mod:`text_env.chess_positions`
(positions), :mod:`text_env.chess_critic` (the learned critic) and :mod:`text_env.chess_policy`
(the default policy's demonstrations; ``agents.sft`` trains it); :mod:`text_env.chess_eval`
grades policies with Stockfish.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import threading
import weakref
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import chess
import chess.engine
import numpy as np
from gymnasium.vector import AutoresetMode
from transformers import PreTrainedTokenizerFast

from reward_models import RewardModel
from rlhf_common.io import DataError, read_jsonl, require_str
from text_env.char_tokenizer import char_tokenizer
from text_env.env import TextGenerationEnv
from text_env.task import Task
from text_env.vector_env import TextGenerationVectorEnv

MOVE_CHARS = "abcdefgh12345678qrbn"
"""Every character a UCI move can hold: files, ranks and promotion pieces."""
CHESS_ALPHABET = MOVE_CHARS + "KQRBNPkpw09/ -"
"""Characters of FENs and UCI moves (FEN adds pieces, side to move, counters, '/', ' ' and '-')."""
MAX_MOVE_CHARS = 5
"""The longest UCI move, a promotion such as ``e7e8q``."""
MAX_FEN_TOKENS = 96
"""Prompt window: BOS plus the longest FEN (71 board characters and ~20 for the other fields)."""
ILLEGAL_SCORE = -1.0
"""Default score of an illegal or unparseable move: one below the worst legal score (0)."""
LICHESS_WIN_SLOPE = 0.00368208
"""Slope of Lichess's centipawn-to-win-probability logistic (lichess.org/page/accuracy)."""
CP_CLIP = 1000
"""Evaluations are clipped to +-1000 centipawns (a forced mate counts as the clip) before a centipawn loss."""

ASSETS = Path(__file__).parent / "assets" / "chess"
TRAIN_POSITIONS = ASSETS / "positions.jsonl"
"""Shipped training positions (the default prompt source)."""
EVAL_POSITIONS = ASSETS / "eval_positions.jsonl"
"""Shipped held-out positions, disjoint from the training ones."""
LEARNED_CRITIC = ASSETS / "critic"
"""Shipped learned critic: a Hugging Face reward model folder plus ``critic.json`` (calibration, metrics)."""
CRITIC_META_FILE = "critic.json"
CHESS_POLICY = ASSETS / "policy"
"""Shipped default chess policy (built by :mod:`text_env.chess_policy`): a Hugging Face causal-LM folder
with the chess tokenizer, e.g. ``agents.lm.load_policy(CHESS_POLICY)``, plus ``policy.json`` (data, metrics)."""
STOCKFISH_ENV_VAR = "STOCKFISH_PATH"
STOCKFISH_FALLBACK = "/usr/games/stockfish"
"""Where Debian's ``stockfish`` package puts the binary (``/usr/games`` is often not on PATH)."""


# ---- positions and moves -------------------------------------------------------------
def chess_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer of the chess task: one token per FEN/UCI character plus specials."""
    return char_tokenizer(CHESS_ALPHABET)


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


@lru_cache(maxsize=8192)
def legal_moves(fen: str) -> frozenset[str]:
    """The UCI strings of every legal move in ``fen`` (cached: episodes revisit positions)."""
    return frozenset(m.uci() for m in parse_position(fen).generate_legal_moves())


def is_legal_move(fen: str, move: str) -> bool:
    """Whether ``move`` is exactly the UCI text of a legal move in ``fen`` (no spaces, lowercase)."""
    return move in legal_moves(fen)


def move_info(fen: str, move: str) -> dict[str, bool]:
    """What the final ``info`` adds: ``{"legal": bool}``, whether the response is a legal move."""
    return {"legal": is_legal_move(fen, move)}


def critic_text(fen: str, move: str) -> str:
    """How the learned critic reads a legal move: the board after it, castling rights, the move.

    A move's quality within a position is the value of the position it leads to, so the
    reward model reads that board rather than having to play the move itself. When Black
    moved, board and move are mirrored (ranks flipped, colours swapped) so the mover is
    always uppercase. Empty squares are written ``1`` one by one, so each square has a fixed
    character offset. Only the chess alphabet is used.

    Example:
        >>> critic_text(chess.STARTING_FEN, "e2e4")
        'rnbqkbnr/pppppppp/11111111/11111111/1111P111/11111111/PPPP1PPP/RNBQKBNR KQkq e2e4'
    """
    board = chess.Board(fen)
    mv = chess.Move.from_uci(move)
    black_moved = board.turn == chess.BLACK
    board.push(mv)
    if black_moved:
        board = board.mirror()
        mv = chess.Move(chess.square_mirror(mv.from_square), chess.square_mirror(mv.to_square), mv.promotion)
    rows = "".join("1" * int(c) if c.isdigit() else c for c in board.board_fen())
    return f"{rows} {board.castling_xfen()} {mv.uci()}"


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
        hint = " Rebuild the shipped sets with `python -m text_env.chess_positions`." if shipped else ""
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


# ---- legal-move action masks ---------------------------------------------------------
class LegalMoveMask:
    """Action-mask rule: only tokens that keep the response on the way to a legal UCI move.

    For each position it builds a trie over the legal moves' UCI strings: after a prefix,
    the allowed tokens are the next characters of the moves that start with it, and EOS
    is allowed only when the prefix is itself a legal move. A prefix that no legal move
    starts with (possible only when the env did not enforce the mask) allows EOS alone.

    Example:
        >>> rule = LegalMoveMask(chess_tokenizer())
        >>> tok = rule.tokenizer
        >>> start = chess.STARTING_FEN
        >>> sorted(tok.convert_ids_to_tokens(np.flatnonzero(rule(start, tok.encode("g1", add_special_tokens=False)))))
        ['f', 'h']
    """

    def __init__(self, tokenizer: Any, cache_size: int = 4096) -> None:
        ids = {c: tokenizer.convert_tokens_to_ids(c) for c in MOVE_CHARS}
        missing = [c for c, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing or tokenizer.eos_token_id is None:
            raise ValueError(
                f"tokenizer lacks single-character tokens for {missing} or an EOS token; "
                "use text_env.chess.chess_tokenizer()."
            )
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self._char_of = {int(i): c for c, i in ids.items()}
        self._eos_only = self._frozen_mask([self.eos_token_id])
        self.cache_size = cache_size
        self._tables: dict[str, dict[str, np.ndarray]] = {}  # FEN -> prefix -> mask

    def __call__(self, prompt: str, response_ids: Sequence[int]) -> np.ndarray:
        """Allowed next tokens, bool ``(vocab_size,)``, read-only."""
        table = self._tables.get(prompt)
        if table is None:
            if len(self._tables) >= self.cache_size:
                del self._tables[next(iter(self._tables))]  # drop the oldest position
            table = self._tables[prompt] = self._table(prompt)
        prefix = "".join(self._char_of.get(int(t), "\0") for t in response_ids)
        return table.get(prefix, self._eos_only)

    def _table(self, fen: str) -> dict[str, np.ndarray]:
        allowed: dict[str, set[int]] = {}
        for move in legal_moves(fen):
            for k in range(len(move)):
                allowed.setdefault(move[:k], set()).add(self.tokenizer.convert_tokens_to_ids(move[k]))
            allowed.setdefault(move, set()).add(self.eos_token_id)
        return {prefix: self._frozen_mask(sorted(ids)) for prefix, ids in allowed.items()}

    def _frozen_mask(self, ids: list[int]) -> np.ndarray:
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[ids] = True
        mask.flags.writeable = False  # shared between episodes
        return mask


# ---- the Stockfish critic ------------------------------------------------------------
def find_stockfish(stockfish_path: str | os.PathLike[str] | None = None) -> str:
    """The Stockfish binary: ``stockfish_path``, else ``$STOCKFISH_PATH``, else on PATH, else Debian's path."""
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
            f"the stockfish critic needs the Stockfish engine, which was not found on PATH or at "
            f"{STOCKFISH_FALLBACK}. Install it with `apt-get install stockfish` (Debian/Ubuntu) or "
            "`brew install stockfish` (macOS), or pass stockfish_path= (or set $STOCKFISH_PATH); "
            "or use critic='learned', which needs no engine."
        )
    return path


def open_engine(path: str, timeout: float = 10.0, hash_mb: int = 16) -> chess.engine.SimpleEngine:
    """Start a one-thread UCI engine whose background thread never blocks interpreter exit.

    ``SimpleEngine`` runs its event loop in a thread that inherits the daemon flag of the
    thread that starts it. Python joins non-daemon threads *before* ``atexit`` handlers
    (where ``weakref.finalize`` quits the engine), so an engine started from the main thread
    and never closed hangs the interpreter at exit; starting it from a daemon thread avoids that.
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


class StockfishCritic:
    """Scores chess moves with Stockfish: Lichess's accuracy of the move, from its win-probability loss.

    For a legal move ``m`` in position ``s``, Stockfish searches ``s`` (giving its best move
    ``b``) and ``s`` restricted to ``m`` (UCI ``searchmoves``), both at the same limit and
    from the side to move::

        loss  = clip(W(b) - W(m), 0, 1)            # W: win_probability, Lichess's logistic
        score = move_accuracy(loss)                # 1 - 1.031668 * (1 - exp(-4.354 * loss)), in [0, 1]

    so the engine's best move scores 1, a small slip ~0.8, a lost piece ~0.3, a lost queen
    ~0.1 (a forced mate counts as W = 1, being mated as W = 0). Illegal or unparseable moves
    score ``illegal_score`` (default -1, below every legal move). Every search starts from a
    cleared hash (``ucinewgame``), so a score depends only on (FEN, move, limit) and is cached.
    :meth:`centipawn_loss` grades a move in centipawns from the same searches.

    One engine process, started at the first score and reused; ``close()`` (called by
    ``env.close()``, garbage collection and interpreter exit) ends it, and a later score
    starts a new one.
    Each engine call may overrun its limit by at most ``timeout`` seconds before it raises.

    Args:
        stockfish_path: engine binary; default ``$STOCKFISH_PATH``, ``stockfish`` on PATH, or
            ``/usr/games/stockfish``.
        depth: search depth in plies (None: time only). 8 takes ~5-15 ms a search.
        time_limit: seconds a search may take at most; with a depth, a cap that a depth-8 search
            never reaches, so results stay deterministic.
        timeout: extra seconds an engine call may take beyond ``time_limit`` before it fails.
        hash_mb: engine hash table size.
        illegal_score: score of an illegal or unparseable move.
        cache_size: positions and (FEN, move) evaluations kept.
    """

    def __init__(
        self,
        stockfish_path: str | os.PathLike[str] | None = None,
        depth: int | None = 8,
        time_limit: float = 1.0,
        timeout: float = 10.0,
        hash_mb: int = 16,
        illegal_score: float = ILLEGAL_SCORE,
        cache_size: int = 100_000,
    ) -> None:
        if (depth is not None and depth < 1) or time_limit <= 0 or timeout <= 0:
            raise ValueError(
                f"StockfishCritic: depth={depth}, time_limit={time_limit} and timeout={timeout} must be positive."
            )
        self.path = find_stockfish(stockfish_path)
        self.limit = chess.engine.Limit(depth=depth, time=time_limit)
        self.timeout = timeout
        self.hash_mb = hash_mb
        self.illegal_score = float(illegal_score)
        self.cache_size = cache_size
        self._best: dict[str, tuple[str | None, chess.engine.Score]] = {}  # FEN -> (best move, its evaluation)
        self._evals: dict[tuple[str, str], chess.engine.Score] = {}  # (FEN, move) -> evaluation after the move
        self._engine: chess.engine.SimpleEngine | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()  # one search at a time on the one engine

    # ---- RewardModel ----------------------------------------------------------------
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """One score per (FEN, UCI move) pair: in [0, 1] when legal, ``illegal_score`` otherwise."""
        return np.array(
            [self.move_score(fen, move) for fen, move in zip(prompts, responses, strict=True)], dtype=np.float64
        )

    def move_score(self, fen: str, move: str) -> float:
        """The score of one move (see the class docstring)."""
        if not is_legal_move(fen, move):
            return self.illegal_score
        _, best = self._best_line(fen)
        return move_accuracy(win_probability(best) - win_probability(self._move_eval(fen, move)))

    def centipawn_loss(self, fen: str, move: str) -> float:
        """Centipawns ``move`` loses against the engine's best move, both evaluations clipped to +-``CP_CLIP``.

        ``max(0, cp(best) - cp(move))`` from the side to move, at this critic's limit. An
        illegal or unparseable move forfeits: it counts as a move into a lost position
        (``-CP_CLIP``), so it loses at least as much as any legal move, just as ``illegal_score``
        ranks it below every legal move.
        """
        _, best = self._best_line(fen)
        after = clipped_cp(self._move_eval(fen, move)) if is_legal_move(fen, move) else -CP_CLIP
        return float(max(clipped_cp(best) - after, 0))

    def best_move(self, fen: str) -> str:
        """Stockfish's best move in ``fen`` at this critic's limit, as UCI."""
        best_move, _ = self._best_line(fen)
        if best_move is None:
            raise RuntimeError(f"Stockfish returned no principal variation for {fen!r}.")
        return best_move

    def close(self) -> None:
        """End the engine process now (a later score starts a new one)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()  # runs close_engine once and detaches
            self._engine = self._finalizer = None

    @property
    def engine_name(self) -> str:
        """The engine's own name and version (e.g. ``Stockfish 15.1``); starts the engine if needed."""
        with self._lock:
            return str(self._running_engine().id.get("name", self.path))

    @property
    def pid(self) -> int | None:
        """Process id of the running engine, or None when none runs."""
        return None if self._engine is None else self._engine.transport.get_pid()

    def __repr__(self) -> str:
        return f"StockfishCritic(path={self.path!r}, limit={self.limit})"

    # ---- engine calls ---------------------------------------------------------------
    def _best_line(self, fen: str) -> tuple[str | None, chess.engine.Score]:
        if fen not in self._best:
            info = self._analyse(fen)
            pv = info.get("pv")
            self._remember(self._best, fen, (pv[0].uci() if pv else None, info["score"].relative))
        return self._best[fen]

    def _move_eval(self, fen: str, move: str) -> chess.engine.Score:
        """The evaluation (side to move) after a legal ``move``: a search restricted to it, or the best line's."""
        best_move, best = self._best_line(fen)
        if move == best_move:
            return best
        key = (fen, move)
        if key not in self._evals:
            info = self._analyse(fen, root_moves=[chess.Move.from_uci(move)])
            self._remember(self._evals, key, info["score"].relative)
        return self._evals[key]

    def _analyse(self, fen: str, root_moves: list[chess.Move] | None = None) -> chess.engine.InfoDict:
        with self._lock:
            engine = self._running_engine()
            try:
                # A fresh `game` object makes python-chess send ucinewgame: a cleared hash,
                # hence the same result for the same search (tested in test_chess.py).
                info = engine.analyse(
                    chess.Board(fen),
                    self.limit,
                    root_moves=root_moves,
                    game=object(),
                    info=chess.engine.INFO_SCORE | chess.engine.INFO_PV,
                )
            except (asyncio.TimeoutError, TimeoutError, chess.engine.EngineError) as e:
                self._finalizer()  # a stuck or dead engine is replaced at the next call
                self._engine = self._finalizer = None
                raise RuntimeError(
                    f"Stockfish ({self.path}) failed on {fen!r} with limit {self.limit} "
                    f"within timeout={self.timeout}s: {e!r}. Lower depth/time_limit or raise timeout."
                ) from e
        if "score" not in info:
            raise RuntimeError(f"Stockfish returned no score for {fen!r}: {info!r}.")
        return info

    def _running_engine(self) -> chess.engine.SimpleEngine:
        if self._engine is None:
            self._engine = open_engine(self.path, timeout=self.timeout, hash_mb=self.hash_mb)
            # The finalizer holds the engine, not self, so the critic can be collected.
            self._finalizer = weakref.finalize(self, close_engine, self._engine)
        return self._engine

    def _remember(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self.cache_size:
            del cache[next(iter(cache))]  # drop the oldest entry
        cache[key] = value


# ---- the learned critic --------------------------------------------------------------
class LearnedCritic:
    """Scores chess moves with a reward model trained on Stockfish-labelled move rankings; no engine needed.

    The reward model (a small Hugging Face ``AutoModelForSequenceClassification`` built and
    trained by :mod:`text_env.chess_critic`) reads each legal move as :func:`critic_text`
    (as the response to an empty prompt) and gives a raw Bradley-Terry score ``s``;
    ``critic.json`` beside it holds a calibration ``sigmoid(slope * s + intercept)`` fitted
    to the Stockfish critic's scores on held-out positions, so scores are on the Stockfish
    critic's [0, 1] scale.
    Illegal or unparseable moves score ``illegal_score`` (default -1).

    Args:
        path: folder holding the reward model and ``critic.json`` (default: the shipped one).
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda:1"``...
        batch_size: moves per forward pass.
        illegal_score: score of an illegal or unparseable move.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = LEARNED_CRITIC,
        device: str = "auto",
        batch_size: int = 64,
        illegal_score: float = ILLEGAL_SCORE,
    ) -> None:
        meta_file = Path(path) / CRITIC_META_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{meta_file} does not exist, so {str(path)!r} holds no learned chess critic; build it with "
                "`python -m text_env.chess_critic` (needs Stockfish) or pass critic='stockfish'."
            )
        from reward_models.hf_model import HFRewardModel  # torch loads only when this critic is used

        calibration = json.loads(meta_file.read_text())["calibration"]
        self.slope, self.intercept = float(calibration["slope"]), float(calibration["intercept"])
        self.model = HFRewardModel(path, device=device, batch_size=batch_size)
        self.illegal_score = float(illegal_score)
        self.path = str(path)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """One score per (FEN, UCI move) pair: in (0, 1) when legal, ``illegal_score`` otherwise."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} positions but {len(responses)} moves; pass one move per position.")
        out = np.full(len(prompts), self.illegal_score, dtype=np.float64)
        legal = [i for i, (fen, move) in enumerate(zip(prompts, responses, strict=True)) if is_legal_move(fen, move)]
        if legal:
            raw = self.model.score([""] * len(legal), [critic_text(prompts[i], responses[i]) for i in legal])
            out[legal] = 1.0 / (1.0 + np.exp(-(self.slope * raw + self.intercept)))
        return out

    def __repr__(self) -> str:
        return f"LearnedCritic({self.path!r})"


# ---- the task and the registered entry points ----------------------------------------
def make_critic(critic: str | RewardModel = "learned", **critic_options: Any) -> RewardModel:
    """A move critic by name (``"learned"``, ``"stockfish"``) or the given :class:`~reward_models.RewardModel`."""
    if isinstance(critic, str):
        if critic == "learned":
            return LearnedCritic(**critic_options)
        if critic == "stockfish":
            return StockfishCritic(**critic_options)
        raise ValueError(
            f"critic={critic!r} is not known; use 'learned', 'stockfish' or pass a RewardModel instance."
        )
    if critic_options:
        raise TypeError(f"{sorted(critic_options)} configure the built-in critics; set them on your critic instead.")
    if not isinstance(critic, RewardModel):
        raise TypeError(
            f"critic={critic!r} has no score(prompts, responses) method; pass 'stockfish' or a RewardModel."
        )
    return critic


def chess_task(
    critic: str | RewardModel = "learned",
    mask_illegal: bool = True,
    positions: Sequence[str] | str | os.PathLike[str] | None = None,
    **critic_options: Any,
) -> Task:
    """The chess-move task: FEN prompts, UCI responses, a move critic, legal-move masks.

    ``critic_options`` go to the critic (e.g. ``depth=6``, ``stockfish_path=...``).
    """
    tokenizer = chess_tokenizer()
    return Task(
        prompts=load_positions(positions),
        tokenizer=tokenizer,
        reward_model=make_critic(critic, **critic_options),
        max_new_tokens=MAX_MOVE_CHARS,
        max_prompt_tokens=MAX_FEN_TOKENS,
        long_prompt="error",  # a cut FEN is a different position
        missing_eos_penalty=0.0,  # a promotion fills all 5 characters and needs no EOS
        action_mask=LegalMoveMask(tokenizer) if mask_illegal else None,
        enforce_action_mask=False,  # an off-mask move is just illegal: the critic prices it (check_env passes)
        info_fn=move_info,
        name="chess",
    )


def make_chess_env(
    critic: str | RewardModel = "learned",
    mask_illegal: bool = True,
    positions: Sequence[str] | str | os.PathLike[str] | None = None,
    render_mode: str | None = None,
    **critic_options: Any,
) -> TextGenerationEnv:
    """``ChessMoveCritic-v0``: write a chess move for a position, one character per step.

    ## Description
    The prompt is a chess position in FEN (side to move included); the response is
    one move in UCI notation (``e2e4``, ``e1g1`` for castling, ``e7e8q`` for a
    promotion), written one character per step. A critic scores the move when the
    response ends. This is the generic :class:`~text_env.TextGenerationEnv` with a
    chess :class:`~text_env.Task`: any agent for the text environments works here.

    ## Action Space
    `Discrete(37)` over the character tokenizer of `chess_tokenizer()`: pad, bos, eos,
    unk and the 33 FEN/UCI characters. With `mask_illegal=True` (default)
    `info["action_mask"]` and `action_masks()` allow only characters that continue
    some legal move, and EOS only after a complete legal move. Masks are advice, as in
    Gymnasium's Taxi: a masked-out character is taken, the move can then no longer be
    legal (the mask allows only EOS from there) and scores `illegal_score`.

    ## Observation Space
    `Dict(input_ids=Box(int64, (101,)), attention_mask=Box(int64, (101,)))`: BOS, the
    FEN and the move so far, right-aligned and left-padded (`max_prompt_tokens=96`,
    `max_new_tokens=5`).

    ## Rewards
    0 on every step but the last; there, the critic's score of the move (`info["score"]`):
    * `"stockfish"`: Lichess's move accuracy `max(0, 1 - 1.031668 * (1 - exp(-4.354 * loss)))`
      with `loss = W(best) - W(move)` (clipped at 0) and `W` the win probability
      `1 / (1 + exp(-0.00368208 * cp))` of Stockfish's evaluation (mate: 1 or 0). The
      engine's best move scores 1, a lost piece ~0.3, a lost queen ~0.1.
    * `"learned"` (default): the shipped reward model's estimate of that score, in (0, 1);
      it agrees with Stockfish on 72% of held-out move pairs (`critic.json`).
    * An illegal or unparseable move (only possible with `mask_illegal=False`) scores
      `illegal_score`, default -1: one below the worst legal move.

    ## Starting State
    A position drawn uniformly, with the env's RNG, from `positions` (default: the
    shipped training set `text_env/assets/chess/positions.jsonl`, ~3,000 positions
    from the gnuchess opening book, ECO opening lines and short Stockfish self-play);
    `reset(options={"prompt": fen})` starts from a given position.

    ## Episode End
    `terminated` at EOS or after 5 characters (the longest move); the final `info`
    holds `prompt` (FEN), `response` (move), `score`, `end_reason`, `response_length`
    and `legal` (whether the response is a legal move; False gets `illegal_score`).
    `env.close()` ends the Stockfish critic's engine process.

    ## Arguments
    * `critic`: `"learned"` (default, no engine needed), `"stockfish"` (needs the engine:
      `apt-get install stockfish`), or any `RewardModel` scoring (FENs, moves).
    * `mask_illegal`: legal-move action masks (default True).
    * `positions`: FEN list or JSONL path of `{"fen": ...}` rows (default: shipped train set;
      `text_env.chess.EVAL_POSITIONS` is the held-out set).
    * `render_mode`: `None` or `"ansi"` (FEN followed by the move so far).
    * `critic_options`: for Stockfish, `stockfish_path`, `depth` (8), `time_limit` (1.0 s),
      `timeout` (10 s), `hash_mb` (16), `illegal_score` (-1), `cache_size` (see
      :class:`StockfishCritic`); for the learned critic, `path`, `device`, `batch_size`,
      `illegal_score` (see :class:`LearnedCritic`).

    ```python
    env = gym.make("ChessMoveCritic-v0", critic="stockfish", depth=8)
    ```

    ## Version History
    * v0: initial version.
    """
    task = chess_task(critic, mask_illegal=mask_illegal, positions=positions, **critic_options)
    return TextGenerationEnv(task, render_mode=render_mode)


def make_chess_vector_env(
    num_envs: int,
    critic: str | RewardModel = "learned",
    mask_illegal: bool = True,
    positions: Sequence[str] | str | os.PathLike[str] | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
    **critic_options: Any,
) -> TextGenerationVectorEnv:
    """``num_envs`` chess episodes stepped together, sharing one critic (one engine process)."""
    task = chess_task(critic, mask_illegal=mask_illegal, positions=positions, **critic_options)
    return TextGenerationVectorEnv(task, num_envs, autoreset_mode=autoreset_mode, render_mode=render_mode)
