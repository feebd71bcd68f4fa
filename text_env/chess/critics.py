"""Move critics, the chess task's reward models: Stockfish, the shipped learned critic, or your own.

Both score (FEN, UCI move) pairs on the same scale: Lichess's move accuracy in [0, 1] for a
legal move (the learned critic estimates it), ``illegal_score`` (default -1) for an illegal
or unparseable one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import chess
import chess.engine
import numpy as np

from reward_models import FunctionRewardModel, RewardModel
from text_env.chess.engine import (
    CP_CLIP,
    EngineProcess,
    analyse_position,
    clipped_cp,
    find_stockfish,
    move_accuracy,
    win_probability,
)
from text_env.chess.features import FEATURE_SIZE, features_of
from text_env.chess.moves import is_legal_move
from text_env.chess.positions import CRITIC_META_FILE, LEARNED_CRITIC

ILLEGAL_SCORE = -1.0
"""Default score of an illegal or unparseable move: one below the worst legal score (0)."""
MODEL_FILE = "model.safetensors"
"""The learned critic's weights beside ``critic.json``."""
UNSCORED = FunctionRewardModel(lambda fen, move: 0.0, name="unscored")
"""A critic scoring every move 0: for envs played only to grade the moves afterwards, or a result-only reward."""


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
        self.illegal_score = float(illegal_score)
        self.cache_size = cache_size
        self._best: dict[str, tuple[str | None, chess.engine.Score]] = {}  # FEN -> (best move, its evaluation)
        self._evals: dict[tuple[str, str], chess.engine.Score] = {}  # (FEN, move) -> evaluation after the move
        self._process = EngineProcess(self.path, timeout=timeout, hash_mb=hash_mb)

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
        self._process.close()

    @property
    def engine_name(self) -> str:
        """The engine's own name and version (e.g. ``Stockfish 15.1``); starts the engine if needed."""
        return str(self._process.run(lambda engine: engine.id.get("name", self.path), "to start"))

    @property
    def pid(self) -> int | None:
        """Process id of the running engine, or None when none runs."""
        return self._process.pid

    def __getstate__(self) -> dict[str, Any]:
        """Refuse to be pickled: the engine process and its lock belong to this process."""
        raise TypeError(
            "a StockfishCritic holds a running engine and cannot be sent to another process (spawn or "
            "forkserver vector envs, SB3's SubprocVecEnv); pass critic='stockfish' with its options "
            "(depth=..., stockfish_path=...) instead, so that every worker starts its own engine."
        )

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
        return analyse_position(self._process, chess.Board(fen), self.limit, root_moves=root_moves)

    def _remember(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self.cache_size:
            del cache[next(iter(cache))]  # drop the oldest entry
        cache[key] = value


def move_scorer(input_size: int, hidden_size: int, layers: int) -> Any:
    """The learned critic's network: an MLP from a move's features to one raw Bradley-Terry score.

    ``layers`` hidden layers of ``hidden_size`` units with ReLU, then a linear score; weights are
    initialised by torch's global generator (seed it first). Torch is imported here, so that only
    a used learned critic loads it.
    """
    import torch

    sizes = [input_size] + [hidden_size] * layers
    blocks: list[torch.nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        blocks += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*blocks, torch.nn.Linear(sizes[-1], 1))


class LearnedCritic:
    """Scores chess moves with a reward model trained on Stockfish-labelled move rankings; no engine needed.

    The reward model (built and trained by ``rlhf-gym chess-critic``) is a small MLP
    (:func:`move_scorer`) over each legal move's features (:func:`~text_env.chess.features.move_features`:
    the board after the move from the mover's side, attack maps, the move, and exchange, threat
    and mate features) giving a raw Bradley-Terry score ``s``; ``critic.json`` beside its
    weights holds the network's shape and a calibration ``sigmoid(slope * s + intercept)``
    fitted to the Stockfish critic's scores on held-out positions, so scores are on the
    Stockfish critic's [0, 1] scale. Illegal or unparseable moves score ``illegal_score`` (default -1).

    Args:
        path: folder holding ``model.safetensors`` and ``critic.json`` (default: the shipped one).
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda:1"``...
        batch_size: moves per forward pass.
        illegal_score: score of an illegal or unparseable move.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = LEARNED_CRITIC,
        device: str = "auto",
        batch_size: int = 256,
        illegal_score: float = ILLEGAL_SCORE,
    ) -> None:
        meta_file = Path(path) / CRITIC_META_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{meta_file} does not exist, so {str(path)!r} holds no learned chess critic; build it with "
                "`rlhf-gym chess-critic` (needs Stockfish) or pass critic='stockfish'."
            )
        from safetensors.torch import load_file  # torch loads only when this critic is used

        from reward_models.hf import resolve_device

        meta = json.loads(meta_file.read_text())
        network = meta.get("network", {})
        if network.get("features") != FEATURE_SIZE:
            raise ValueError(
                f"{meta_file}: the critic was trained on {network.get('features')} features per move, but "
                f"text_env.chess.features gives {FEATURE_SIZE}; rebuild it with `rlhf-gym chess-critic`."
            )
        self.slope, self.intercept = float(meta["calibration"]["slope"]), float(meta["calibration"]["intercept"])
        self.device = resolve_device(device)
        self.model = move_scorer(FEATURE_SIZE, network["hidden_size"], network["layers"])
        self.model.load_state_dict(load_file(Path(path) / MODEL_FILE))
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.illegal_score = float(illegal_score)
        self.path = str(path)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """One score per (FEN, UCI move) pair: in (0, 1) when legal, ``illegal_score`` otherwise."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} positions but {len(responses)} moves; pass one move per position.")
        out = np.full(len(prompts), self.illegal_score, dtype=np.float64)
        legal = [i for i, (fen, move) in enumerate(zip(prompts, responses, strict=True)) if is_legal_move(fen, move)]
        if legal:
            raw = self.raw_scores(features_of([prompts[i] for i in legal], [responses[i] for i in legal]))
            out[legal] = 1.0 / (1.0 + np.exp(-(self.slope * raw + self.intercept)))
        return out

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """The network's raw scores of a ``(moves, FEATURE_SIZE)`` feature array (before calibration)."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(features), self.batch_size):
                batch = torch.as_tensor(features[start : start + self.batch_size], device=self.device)
                out.append(self.model(batch).squeeze(-1).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def __repr__(self) -> str:
        return f"LearnedCritic({self.path!r})"


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
