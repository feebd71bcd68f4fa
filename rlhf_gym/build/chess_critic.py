"""Build the learned chess critic: Stockfish-labelled move rankings, a Bradley-Terry reward model, a calibration.

1. Label: for each position, the engine's best move and ``moves_per_position - 1`` random
   legal moves are scored by :class:`~text_env.chess.StockfishCritic`; moves best first,
   dropping near-ties (closer than ``min_gap``), form one ranking. Training positions
   give the training rankings, the held-out positions the validation ones.
2. Train: a small BERT-style encoder over the chess characters, initialised in code,
   trained by :func:`reward_models.train.train_reward_model` on the rankings; each move
   is the text :func:`~text_env.chess.critic_text` (the board after it, from the mover's side).
3. Calibrate: ``sigmoid(slope * score + intercept)`` fitted (least squares) to the
   Stockfish scores of the held-out moves, so the learned critic speaks the engine's scale.

The output folder is a Hugging Face reward model plus ``critic.json`` (calibration,
held-out metrics, data counts, settings), loaded by :class:`~text_env.chess.LearnedCritic`.
Run it as ``rlhf-gym chess-critic`` (default ``--out text_env/assets/chess/critic``).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reward_models.hf_model import NORMALIZATION_FILE
from rlhf_common.config_cli import config_command
from rlhf_common.io import portable_config, read_jsonl, save_dir_atomic, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import progress_bar
from text_env.chess import (
    CRITIC_META_FILE,
    EVAL_POSITIONS,
    LEARNED_CRITIC,
    TRAIN_POSITIONS,
    StockfishCritic,
    chess_tokenizer,
    critic_text,
    legal_moves,
    load_positions,
)

RM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", NORMALIZATION_FILE, "train_log.csv")
"""What the output folder keeps of the trained reward model (the rest is in ``work``)."""


@dataclass
class CriticBuildConfig:
    """How ``rlhf-gym chess-critic`` builds the learned chess critic."""

    out: str = str(LEARNED_CRITIC)
    """Output folder: the reward model and critic.json (replaced atomically at the end)."""
    work: str = "runs/chess_critic"
    """Scratch folder: labelled rankings, the initial model, the trainer's run folder."""
    seed: int = 0
    """Seeds move sampling, model initialisation and training order."""
    train_positions: str = str(TRAIN_POSITIONS)
    """Positions labelled for training (JSONL of {"fen": ...})."""
    eval_positions: str = str(EVAL_POSITIONS)
    """Held-out positions labelled for validation and calibration."""
    max_positions: int | None = None
    """Use only this many positions of each set (quick builds and tests)."""
    moves_per_position: int = 8
    """Moves labelled per position: Stockfish's best and random other legal moves."""
    min_gap: float = 0.02
    """Moves whose Stockfish scores differ by less are a tie; only the first is kept in a ranking."""
    stockfish_path: str | None = None
    """Stockfish binary; default $STOCKFISH_PATH, PATH or /usr/games/stockfish."""
    depth: int = 8
    """Stockfish search depth of the labels."""
    hidden_size: int = 128
    """Encoder width."""
    layers: int = 4
    """Encoder layers."""
    heads: int = 4
    """Attention heads per layer."""
    num_train_epochs: int = 6
    """Passes over the training rankings."""
    batch_size: int = 32
    """Rankings per optimiser step."""
    learning_rate: float = 3e-4
    """Peak learning rate (linear decay); a model trained from scratch needs more than fine-tuning's 5e-5."""
    device: str = "auto"
    """Torch device for training and calibration: ``"auto"`` is CUDA when present, else CPU."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.moves_per_position < 2:
            raise ValueError(f"CriticBuildConfig: moves_per_position={self.moves_per_position} must be >= 2.")
        if self.hidden_size % self.heads:
            raise ValueError(
                f"CriticBuildConfig: hidden_size={self.hidden_size} must be a multiple of heads={self.heads}."
            )

    def label_settings(self) -> dict[str, Any]:
        """The settings the labelled rankings depend on: when unchanged, a rebuild reuses them."""
        keys = ("seed", "train_positions", "eval_positions", "max_positions", "moves_per_position", "min_gap", "depth")
        return {k: getattr(self, k) for k in keys}


def label_positions(
    fens: Sequence[str], critic: StockfishCritic, config: CriticBuildConfig, desc: str
) -> list[dict[str, Any]]:
    """One ranking per position, best first: ``{"prompt": "", "responses": [texts], "fen", "moves", "scores"}``."""
    rng = random.Random(f"{config.seed}:{desc}")
    rows = []
    for fen in progress_bar(len(fens), f"labelling {desc}", enabled=config.progress, iterable=fens):
        best = critic.best_move(fen)
        others = sorted(legal_moves(fen) - {best})
        moves = [best, *rng.sample(others, min(len(others), config.moves_per_position - 1))]
        scores = critic.score([fen] * len(moves), moves)
        kept: list[tuple[float, str]] = []
        for score, move in sorted(zip(scores.tolist(), moves, strict=True), reverse=True):
            if not kept or kept[-1][0] - score >= config.min_gap:
                kept.append((score, move))
        if len(kept) >= 2:
            rows.append({
                "prompt": "",
                "responses": [critic_text(fen, m) for _, m in kept],
                "fen": fen,
                "moves": [m for _, m in kept],
                "scores": [round(s, 6) for s, _ in kept],
            })
    return rows


def label_sets(config: CriticBuildConfig, critic: StockfishCritic) -> dict[str, list[dict[str, Any]]]:
    """Training and held-out rankings, labelled now or reused from ``work`` when the label settings match."""
    work = Path(config.work)
    settings_file = work / "label_settings.json"
    files = {name: work / f"{name}_rankings.jsonl" for name in ("train", "eval")}
    if settings_file.is_file() and json.loads(settings_file.read_text()) == config.label_settings():
        if all(f.is_file() for f in files.values()):
            return {name: [row for _, row in read_jsonl(f)] for name, f in files.items()}
    sets = {"train": config.train_positions, "eval": config.eval_positions}
    rows = {
        name: label_positions(load_positions(path)[: config.max_positions], critic, config, name)
        for name, path in sets.items()
    }
    for name, part in rows.items():
        write_jsonl_atomic(files[name], part)
    write_json_atomic(settings_file, config.label_settings())
    return rows


def build_backbone(folder: Path, config: CriticBuildConfig) -> None:
    """Save a freshly initialised (seeded) BERT-style encoder and the chess tokenizer to ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = chess_tokenizer()
    torch.manual_seed(config.seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.hidden_size,
        max_position_embeddings=96,  # critic texts are 81-82 tokens with BOS and EOS
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    ))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


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


def held_out_metrics(rows: list[dict[str, Any]], raw: np.ndarray, calibrated: np.ndarray) -> dict[str, float]:
    """Agreement with Stockfish on held-out rankings: pairwise accuracy, top-1 rate, calibrated error."""
    correct = pairs = top1 = chance = 0.0
    start = 0
    for row in rows:
        k = len(row["moves"])
        s = raw[start : start + k]  # Stockfish order: best first
        pairs += k * (k - 1) / 2
        correct += sum(float(s[i] > s[j]) + 0.5 * float(s[i] == s[j]) for i in range(k) for j in range(i + 1, k))
        top1 += float(np.argmax(s) == 0)
        chance += 1.0 / k
        start += k
    target = np.array([x for row in rows for x in row["scores"]])
    return {
        "pairwise_accuracy": correct / pairs,
        "top1_agreement": top1 / len(rows),
        "top1_chance": chance / len(rows),
        "mean_abs_error": float(np.abs(calibrated - target).mean()),
        "rankings": len(rows),
        "pairs": int(pairs),
    }


def build_critic(config: CriticBuildConfig) -> dict[str, Any]:
    """Label, train, calibrate, and write the critic to ``config.out``; returns the contents of critic.json."""
    from reward_models.hf_model import HFRewardModel
    from reward_models.train import train_reward_model
    from reward_models.train_config import RewardTrainConfig

    critic = StockfishCritic(config.stockfish_path, depth=config.depth)
    try:
        rows = label_sets(config, critic)
        engine = critic.engine_name
    finally:
        critic.close()
    work = Path(config.work)

    shutil.rmtree(work / "backbone", ignore_errors=True)
    build_backbone(work / "backbone", config)
    result = train_reward_model(RewardTrainConfig(
        model=str(work / "backbone"),
        data=str(work / "train_rankings.jsonl"),
        val_data=str(work / "eval_rankings.jsonl"),
        out=str(work / "rm"),
        num_train_epochs=config.num_train_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        device=config.device,
        resume=False,
        eval_steps=0,
        save_steps=0,
        progress=config.progress,
    ))

    held_out = rows["eval"]
    rm = HFRewardModel(result.out, device=config.device, batch_size=256)
    raw = rm.score([""] * sum(len(r["responses"]) for r in held_out), [t for r in held_out for t in r["responses"]])
    target = np.array([x for r in held_out for x in r["scores"]])
    slope, intercept = fit_calibration(raw, target)
    calibrated = 1.0 / (1.0 + np.exp(-(slope * raw + intercept)))
    meta = {
        "calibration": {"slope": slope, "intercept": intercept},
        "held_out": held_out_metrics(held_out, raw, calibrated),
        "rankings": {name: len(part) for name, part in rows.items()},
        "labels": {"scorer": "text_env.chess.StockfishCritic", "depth": config.depth, "engine": engine},
        "train_seconds": round(result.seconds, 1),
        "config": portable_config(config),
    }

    def write(tmp: Path) -> None:
        for name in RM_FILES:
            if (Path(result.out) / name).is_file():
                shutil.copyfile(Path(result.out) / name, tmp / name)
        write_json_atomic(tmp / CRITIC_META_FILE, meta)

    save_dir_atomic(config.out, write)
    return meta


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym chess-critic [flags]``: rebuild the learned chess critic (needs Stockfish)."""

    def run(config: CriticBuildConfig) -> None:
        meta = build_critic(config)
        print(f"wrote {config.out}: held-out {meta['held_out']}")

    return config_command(argv, "rlhf-gym chess-critic", __doc__.splitlines()[0], CriticBuildConfig, run)


if __name__ == "__main__":
    sys.exit(cli())
