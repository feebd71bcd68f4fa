"""Build the learned chess critic: Stockfish-ranked moves of quiet and tactical positions, an MLP reward model.

1. Label: in each position of the quiet and tactical training sets (``positions.jsonl``,
   ``tactical_positions.jsonl``) and of their held-out twins, Stockfish's best move, up to
   ``forcing_moves`` random captures and checks, and random other legal moves, up to
   ``moves_per_position`` in all, are scored by :class:`~text_env.chess.StockfishCritic`; moves
   best first, dropping near-ties (closer than ``min_gap``), form one ranking. Labels are cached
   in ``work`` per set and reused while their settings are unchanged.
2. Features: :func:`~text_env.chess.features.move_features` of every ranked move, and of every
   legal move of the held-out positions (for top-1), cached in ``work`` too.
3. Train: the MLP of :func:`~text_env.chess.critics.move_scorer`, initialised and shuffled with
   ``seed``, by the Bradley-Terry ranking loss of :func:`reward_models.train.ranking_loss` on the
   training rankings of both sets (AdamW, linear decay), as a reward model from AI feedback.
4. Calibrate: ``sigmoid(slope * score + intercept)`` fitted (least squares) to the Stockfish
   scores of the held-out moves, so the learned critic speaks the engine's scale.
5. Measure, per held-out set: pairwise agreement with Stockfish on the rankings and top-1
   accuracy (the critic's favourite among all legal moves is Stockfish's best move).

The output folder holds ``model.safetensors``, ``critic.json`` (network shape, calibration,
held-out metrics, data counts, settings) and ``train_log.csv``, loaded by
:class:`~text_env.chess.LearnedCritic`. Run it as ``rlhf-gym chess-critic`` (default ``--out
text_env/assets/chess/critic``; needs Stockfish and the tactical sets of ``rlhf-gym chess-tactics``).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chess

from rlhf_common.config_cli import config_command
from rlhf_common.io import portable_config, save_dir_atomic, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import progress_bar
from rlhf_gym.build.chess_critic_fit import MoveData, evaluate, fit_calibration, train_scorer
from text_env.chess import (
    CRITIC_META_FILE,
    EVAL_POSITIONS,
    EVAL_TACTICAL_POSITIONS,
    LEARNED_CRITIC,
    TACTICAL_POSITIONS,
    TRAIN_POSITIONS,
    StockfishCritic,
    legal_moves,
    load_positions,
)
from text_env.chess.critics import MODEL_FILE
from text_env.chess.features import FEATURE_SIZE, SCALARS, features_of

SETS = {"train": "train_positions", "tactical": "tactical_positions", "eval": "eval_positions",
        "eval_tactical": "eval_tactical_positions"}
"""Labelled sets and the config fields naming their positions; the ``eval`` ones are held out."""
HELD_OUT = {"quiet": "eval", "tactical": "eval_tactical"}
"""The held-out sets under the names of ``critic.json``."""


@dataclass
class CriticBuildConfig:
    """How ``rlhf-gym chess-critic`` builds the learned chess critic."""

    out: str = str(LEARNED_CRITIC)
    """Output folder: the network, critic.json and train_log.csv (replaced atomically at the end)."""
    work: str = "runs/chess_critic"
    """Scratch folder: labelled rankings and features per set (reused while their settings are unchanged)."""
    seed: int = 0
    """Seeds move sampling, network initialisation and training order."""
    train_positions: str = str(TRAIN_POSITIONS)
    """Quiet positions labelled for training (JSONL of {"fen": ...})."""
    tactical_positions: str = str(TACTICAL_POSITIONS)
    """Tactical positions labelled for training (``rlhf-gym chess-tactics``)."""
    eval_positions: str = str(EVAL_POSITIONS)
    """Quiet held-out positions: calibration and the quiet metrics."""
    eval_tactical_positions: str = str(EVAL_TACTICAL_POSITIONS)
    """Tactical held-out positions: calibration and the tactical metrics."""
    max_positions: int | None = None
    """Use only this many positions of each set (quick builds and tests)."""
    moves_per_position: int = 6
    """Moves labelled per position: Stockfish's best, captures and checks, random other legal moves."""
    forcing_moves: int = 2
    """At most this many of them are captures or checks (drawn at random among those)."""
    min_gap: float = 0.02
    """Moves whose Stockfish scores differ by less are a tie; only the first is kept in a ranking."""
    stockfish_path: str | None = None
    """Stockfish binary; default $STOCKFISH_PATH, PATH or /usr/games/stockfish."""
    depth: int = 8
    """Stockfish search depth of the labels."""
    hidden_size: int = 512
    """Units per hidden layer of the network."""
    layers: int = 2
    """Hidden layers of the network."""
    num_train_epochs: int = 20
    """Passes over the training rankings."""
    batch_size: int = 64
    """Rankings per optimiser step."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (linear decay to 0)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    device: str = "auto"
    """Torch device for training: ``"auto"`` is CUDA when present, else CPU."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.moves_per_position < 2:
            raise ValueError(f"CriticBuildConfig: moves_per_position={self.moves_per_position} must be >= 2.")
        if self.forcing_moves < 0 or self.forcing_moves >= self.moves_per_position:
            raise ValueError(f"CriticBuildConfig: forcing_moves={self.forcing_moves} must be in "
                             f"[0, moves_per_position={self.moves_per_position}).")
        if min(self.hidden_size, self.layers, self.num_train_epochs, self.batch_size) < 1:
            raise ValueError("CriticBuildConfig: hidden_size, layers, num_train_epochs and batch_size must be >= 1.")

    def label_settings(self, name: str) -> dict[str, Any]:
        """The settings set ``name``'s labels and features depend on: when unchanged, a rebuild reuses them."""
        keys = ("seed", "max_positions", "moves_per_position", "forcing_moves", "min_gap", "depth")
        return {"positions": getattr(self, SETS[name]), "features": [FEATURE_SIZE, *SCALARS],
                **{k: getattr(self, k) for k in keys}}


def ranked_moves(fen: str, best: str, config: CriticBuildConfig, rng: random.Random) -> list[str]:
    """The moves labelled in ``fen``: ``best``, up to ``forcing_moves`` captures and checks, random others."""
    board = chess.Board(fen)
    others = sorted(legal_moves(fen) - {best})
    forcing = [m for m in others
               if board.is_capture(chess.Move.from_uci(m)) or board.gives_check(chess.Move.from_uci(m))]
    picked = rng.sample(forcing, min(len(forcing), config.forcing_moves))
    rest = sorted(set(others) - set(picked))
    return [best, *picked, *rng.sample(rest, min(len(rest), config.moves_per_position - 1 - len(picked)))]


def label_positions(
    fens: Sequence[str], critic: StockfishCritic, config: CriticBuildConfig, desc: str
) -> list[dict[str, Any]]:
    """One ranking per position, best first: ``{"fen", "best", "moves", "scores"}``."""
    rng = random.Random(f"{config.seed}:{desc}")
    rows = []
    for fen in progress_bar(len(fens), f"labelling {desc}", enabled=config.progress, iterable=fens):
        best = critic.best_move(fen)
        moves = ranked_moves(fen, best, config, rng)
        scores = critic.score([fen] * len(moves), moves)
        kept: list[tuple[float, str]] = []
        for score, move in sorted(zip(scores.tolist(), moves, strict=True), reverse=True):
            if not kept or kept[-1][0] - score >= config.min_gap:
                kept.append((score, move))
        if len(kept) >= 2:
            rows.append({"fen": fen, "best": best, "moves": [m for _, m in kept],
                         "scores": [round(s, 6) for s, _ in kept]})
    return rows


def labelled_set(name: str, config: CriticBuildConfig, critic: StockfishCritic) -> MoveData:
    """Set ``name``'s rankings and features (and, when held out, every legal move's), cached in ``work``."""
    folder = Path(config.work) / name
    settings_file = folder / "settings.json"
    held_out = name in HELD_OUT.values()
    files = [folder / "rankings.jsonl", folder / "features.npy"] + ([folder / "all_moves.npz"] if held_out else [])
    if settings_file.is_file() and json.loads(settings_file.read_text()) == config.label_settings(name):
        if all(f.is_file() for f in files):
            return MoveData.load(folder, held_out)
    fens = load_positions(getattr(config, SETS[name]))[: config.max_positions]
    rows = label_positions(fens, critic, config, name)
    features = features_of([r["fen"] for r in rows for _ in r["moves"]], [m for r in rows for m in r["moves"]])
    data = MoveData(rows, features)
    if held_out:
        data.add_all_moves(fens, [critic.best_move(fen) for fen in fens], config.progress, name)
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(folder / "rankings.jsonl", rows)
    data.save(folder)
    write_json_atomic(settings_file, config.label_settings(name))
    return data


def build_critic(config: CriticBuildConfig) -> dict[str, Any]:
    """Label, train, calibrate, measure, and write the critic to ``config.out``; returns critic.json's contents."""
    from safetensors.torch import save_file

    critic = StockfishCritic(config.stockfish_path, depth=config.depth)
    try:
        data = {name: labelled_set(name, config, critic) for name in SETS}
        engine = critic.engine_name
    finally:
        critic.close()
    model, log, seconds = train_scorer(MoveData.concat([data["train"], data["tactical"]]), config,
                                       {k: data[v] for k, v in HELD_OUT.items()})
    held_out = MoveData.concat([data[v] for v in HELD_OUT.values()])
    slope, intercept = fit_calibration(held_out.raw_scores(model), held_out.targets())
    metrics = {k: evaluate(model, data[v], slope, intercept) for k, v in HELD_OUT.items()}
    pairs = sum(m["pairs"] for m in metrics.values())
    meta = {
        "network": {"features": FEATURE_SIZE, "hidden_size": config.hidden_size, "layers": config.layers,
                    "parameters": sum(p.numel() for p in model.parameters())},
        "calibration": {"slope": slope, "intercept": intercept},
        "held_out": {"pairwise_accuracy": sum(m["pairwise_accuracy"] * m["pairs"] for m in metrics.values()) / pairs,
                     "pairs": pairs, **metrics},
        "rankings": {name: len(part.rows) for name, part in data.items()},
        "labels": {"scorer": "text_env.chess.StockfishCritic", "depth": config.depth, "engine": engine},
        "train_seconds": round(seconds, 1),
        "config": portable_config(config),
    }

    def write(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / MODEL_FILE)
        write_json_atomic(tmp / CRITIC_META_FILE, meta)
        (tmp / "train_log.csv").write_text(log)
        (tmp / "MODEL_CARD.md").write_text(model_card_markdown(meta))

    save_dir_atomic(config.out, write)
    return meta


def model_card_markdown(meta: dict[str, Any]) -> str:
    """The critic's model card: what it reads, how it was trained, how well it agrees with Stockfish."""
    net, c, held = meta["network"], meta["config"], meta["held_out"]
    rows = "\n".join(
        f"| {name} | {m['positions']} | {m['pairs']} | {m['pairwise_accuracy']:.1%} | {m['top1']:.1%} | "
        f"{m['top1_random']:.1%} | {m['mean_abs_error']:.3f} |" for name, m in held.items() if isinstance(m, dict))
    return f"""# Learned chess critic (ChessMoveCritic-v0's default reward model)

A reward model trained from AI feedback: Stockfish's ({meta['labels']['engine']}, depth {c['depth']}) rankings of
{c['moves_per_position']} moves per position, {meta['rankings']['train']:,} in quiet and
{meta['rankings']['tactical']:,} in tactical training positions (a position whose labelled moves all tie gives none).
It reads each legal move as {net['features']} features from the mover's side (`text_env/chess/features.py`:
the board after the move, attack maps, the move, exchange, threat and mate features) and scores them with
an MLP ({net['layers']} hidden layers of {net['hidden_size']}, {net['parameters']:,} parameters), trained with
the Bradley-Terry ranking loss for {c['num_train_epochs']} epochs (seed {c['seed']}, {meta['train_seconds']} s)
and calibrated to Stockfish's move-accuracy scale. Load it with `text_env.chess.LearnedCritic`;
rebuild it with `rlhf-gym chess-critic` (needs Stockfish).

Held-out agreement with Stockfish (pairwise: move pairs of the labelled rankings ordered as Stockfish
orders them; top-1: the favourite among all legal moves is Stockfish's best move):

| set | positions | pairs | pairwise | top-1 | top-1 of a random legal move | calibrated MAE |
|---|---|---|---|---|---|---|
{rows}

Overall pairwise agreement: {held['pairwise_accuracy']:.1%} of {held['pairs']} pairs. It sees one move ahead
(exchanges, hanging pieces, mate in one, the opponent's mate in one) and learns the rest from the
rankings; mates in two or three that start with a quiet move it mostly misses.
"""


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym chess-critic [flags]``: rebuild the learned chess critic (needs Stockfish)."""

    def run(config: CriticBuildConfig) -> None:
        meta = build_critic(config)
        print(f"wrote {config.out}: held-out {json.dumps(meta['held_out'], indent=1)}")

    return config_command(argv, "rlhf-gym chess-critic", __doc__.splitlines()[0], CriticBuildConfig, run)


if __name__ == "__main__":
    sys.exit(cli())
