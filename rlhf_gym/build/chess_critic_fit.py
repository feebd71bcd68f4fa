"""Train, calibrate and measure the learned chess critic on labelled move rankings (``rlhf-gym chess-critic``).

:class:`MoveData` holds one labelled set: its rankings (best first), the features of every
ranked move and, for a held-out set, of every legal move. :func:`train_scorer` trains
:func:`~text_env.chess.critics.move_scorer` with the Bradley-Terry ranking loss of
:func:`reward_models.train.ranking_loss`; :func:`fit_calibration` maps its raw scores to
Stockfish's [0, 1] scale; :func:`ranking_metrics` gives pairwise agreement and top-1 accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_common.io import read_jsonl
from rlhf_common.training import RunLogger, progress_bar
from text_env.chess import legal_moves
from text_env.chess.features import FEATURE_SIZE, features_of


@dataclass
class MoveData:
    """One labelled set: rankings ``{"fen", "best", "moves", "scores"}`` and the features of their moves."""

    rows: list[dict[str, Any]]
    """Rankings, best first (Stockfish's order)."""
    features: np.ndarray
    """``(sum of ranking sizes, FEATURE_SIZE)`` features of the ranked moves, in order."""
    all_features: np.ndarray | None = None
    """``(sum of legal-move counts, FEATURE_SIZE)`` features of every legal move of every position of a
    held-out set (ranked or not)."""
    all_fens: list[str] = field(default_factory=list)
    """The positions of ``all_features``."""
    all_counts: list[int] = field(default_factory=list)
    """Legal moves per position in ``all_features``."""
    all_best: list[int] = field(default_factory=list)
    """Index of Stockfish's best move among each position's legal moves (sorted UCI)."""

    @property
    def sizes(self) -> list[int]:
        """Moves per ranking."""
        return [len(r["moves"]) for r in self.rows]

    def targets(self) -> np.ndarray:
        """Stockfish scores of the ranked moves, in order."""
        return np.array([s for r in self.rows for s in r["scores"]])

    def add_all_moves(self, fens: Sequence[str], best: Sequence[str], progress: bool, desc: str) -> None:
        """Compute the features of every legal move in each of ``fens`` (for top-1 among all legal moves).

        ``best`` is Stockfish's best move in each; every position counts, also those without a ranking.
        """
        parts = []
        pairs = zip(fens, best, strict=True)
        for fen, move in progress_bar(len(fens), f"features {desc}", enabled=progress, iterable=pairs):
            moves = sorted(legal_moves(fen))
            parts.append(features_of([fen] * len(moves), moves))
            self.all_fens.append(fen)
            self.all_counts.append(len(moves))
            self.all_best.append(moves.index(move))
        self.all_features = np.concatenate(parts)

    def save(self, folder: Path) -> None:
        """Write the features to ``folder`` (the rankings are written by the caller)."""
        np.save(folder / "features.npy", self.features)  # float32 as computed: a cached rebuild trains on the same
        if self.all_features is not None:
            np.savez(folder / "all_moves.npz", features=self.all_features,
                     fens=np.array(self.all_fens), counts=np.array(self.all_counts), best=np.array(self.all_best))

    @classmethod
    def load(cls, folder: Path, held_out: bool) -> MoveData:
        """Read a set written by :meth:`save` and its ``rankings.jsonl``."""
        rows = [row for _, row in read_jsonl(folder / "rankings.jsonl")]
        data = cls(rows, np.load(folder / "features.npy"))
        if held_out:
            with np.load(folder / "all_moves.npz") as z:
                data.all_features = z["features"]
                data.all_fens, data.all_counts, data.all_best = (z[k].tolist() for k in ("fens", "counts", "best"))
        return data

    @classmethod
    def concat(cls, parts: Sequence[MoveData]) -> MoveData:
        """The rankings of several sets as one (without the all-legal-move features)."""
        return cls([r for p in parts for r in p.rows], np.concatenate([p.features for p in parts]))

    def raw_scores(self, model: Any, all_moves: bool = False) -> np.ndarray:
        """``model``'s raw scores of the ranked moves (or of every legal move)."""
        import torch

        x = self.all_features if all_moves else self.features
        device = next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            out = [model(torch.as_tensor(x[i : i + 4096], device=device)).squeeze(-1).double().cpu().numpy()
                   for i in range(0, len(x), 4096)]
        return np.concatenate(out)


def ranking_metrics(
    rows: Sequence[dict[str, Any]], ranked: np.ndarray, all_scores: Sequence[np.ndarray], all_best: Sequence[int]
) -> dict[str, float]:
    """Agreement with Stockfish: ``ranked`` scores the rankings' moves, ``all_scores[i]`` position i's legal moves.

    ``pairwise_accuracy``: share of the rankings' move pairs ordered as Stockfish orders them
    (a tie counts half); ``top1_agreement``: Stockfish's best is the favourite within its ranking;
    ``top1``: the favourite among all legal moves is Stockfish's best move (``all_best[i]``).
    """
    correct = pairs = top1 = chance = 0.0
    start = 0
    for row in rows:
        k = len(row["moves"])
        s = ranked[start : start + k]  # Stockfish order: best first
        pairs += k * (k - 1) / 2
        correct += sum(float(s[i] > s[j]) + 0.5 * float(s[i] == s[j]) for i in range(k) for j in range(i + 1, k))
        top1 += float(np.argmax(s) == 0)
        chance += 1.0 / k
        start += k
    return {
        "pairwise_accuracy": correct / pairs,
        "top1_agreement": top1 / len(rows),
        "top1_chance": chance / len(rows),
        "top1": float(np.mean([np.argmax(s) == b for s, b in zip(all_scores, all_best, strict=True)])),
        "top1_random": float(np.mean([1.0 / len(s) for s in all_scores])),
        "positions": len(all_scores),
        "rankings": len(rows),
        "pairs": int(pairs),
    }


def evaluate(model: Any, data: MoveData, slope: float, intercept: float) -> dict[str, float]:
    """:func:`ranking_metrics` of ``model`` on a held-out set, plus the calibrated scores' mean absolute error."""
    raw = data.raw_scores(model)
    splits = np.cumsum(data.all_counts)[:-1]
    metrics = ranking_metrics(data.rows, raw, np.split(data.raw_scores(model, all_moves=True), splits), data.all_best)
    calibrated = 1.0 / (1.0 + np.exp(-(slope * raw + intercept)))
    return {**metrics, "mean_abs_error": float(np.abs(calibrated - data.targets()).mean())}


def train_scorer(data: MoveData, config: Any, held_out: dict[str, MoveData]) -> tuple[Any, str, float]:
    """Train the critic's network on ``data``'s rankings: ``(model, train_log.csv text, seconds)``.

    ``config`` is a :class:`~rlhf_gym.build.chess_critic.CriticBuildConfig`. After every epoch the
    log records the mean training loss and each ``held_out`` set's pairwise agreement and top-1.
    """
    import torch

    from reward_models.hf import resolve_device
    from reward_models.train import ranking_loss
    from text_env.chess.critics import move_scorer

    started = time.monotonic()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = move_scorer(FEATURE_SIZE, config.hidden_size, config.layers).to(device)
    x = torch.as_tensor(data.features, device=device)
    sizes = data.sizes
    starts = np.concatenate([[0], np.cumsum(sizes)])
    steps_per_epoch = math.ceil(len(sizes) / config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total = config.num_train_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    rng = np.random.default_rng(config.seed)
    logger = RunLogger(Path(config.work) / "training_log", tensorboard=False)
    for epoch in progress_bar(config.num_train_epochs, "training", enabled=config.progress,
                              iterable=range(1, config.num_train_epochs + 1)):
        model.train()
        losses = []
        order = rng.permutation(len(sizes))
        for b in range(steps_per_epoch):
            batch = order[b * config.batch_size : (b + 1) * config.batch_size]
            index = torch.as_tensor(np.concatenate([np.arange(starts[i], starts[i + 1]) for i in batch]), device=device)
            loss = ranking_loss(model(x[index]).squeeze(-1), [sizes[i] for i in batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        row: dict[str, float | str] = {"train_loss": float(np.mean(losses))}
        for name, part in held_out.items():
            metrics = evaluate(model, part, 1.0, 0.0)
            row[f"{name}_pairwise"], row[f"{name}_top1"] = metrics["pairwise_accuracy"], metrics["top1"]
        logger.log(epoch, row)
    logger.close()
    model.eval()
    return model, logger.csv_path.read_text(), time.monotonic() - started


def fit_calibration(raw: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` minimising the squared error of ``sigmoid(slope * raw + intercept)`` to ``target``."""
    import torch

    x = torch.as_tensor(raw, dtype=torch.float64)
    y = torch.as_tensor(target, dtype=torch.float64)
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = ((torch.sigmoid(params[0] * x + params[1]) - y) ** 2).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    slope, intercept = params.detach().tolist()
    return slope, intercept
