"""Build the default chess policy: a tiny GPT-2 fine-tuned (SFT) on a deliberately weak engine's moves.

RL needs a starting policy that plays plausible moves yet leaves room to improve, so the
demonstrator is a weakened Stockfish: at a low depth, it samples one of its top
``multipv`` moves with probability ``softmax(centipawns / temperature_cp)``.

1. Demonstrations: ``{"prompt": FEN, "response": move}`` for the shipped training positions
   (``demos_per_position`` samples each) and, for validation, the held-out positions.
2. Model: a GPT-2-shaped causal LM over the chess tokenizer, initialised in code (seeded).
3. SFT: :func:`agents.sft.train_sft` trains it.
4. The output folder holds the model, its tokenizer and ``policy.json``: the settings, the
   SFT result, and the Stockfish critic's mean score on held-out positions of the
   demonstrator, of random legal moves, and of the policy's samples with the env's
   legal-move masks (played through ``ChessMoveCritic-v0`` by :class:`agents.ReferenceAgent`)
   and without them (where illegal moves score -1).

Run it as ``rlhf-gym chess-policy`` (default ``--out text_env/assets/chess/policy``; needs Stockfish).
"""

from __future__ import annotations

import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chess
import numpy as np

from agents import AgentConfig, ReferenceAgent
from agents.sft import SFTConfig, train_sft
from rlhf_common.config_cli import config_command
from rlhf_common.io import portable_config, save_dir_atomic, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import progress_bar
from rlhf_gym.build.tiny_lm import init_tiny_lm
from text_env.chess import (
    CHESS_POLICY,
    EVAL_POSITIONS,
    MAX_FEN_TOKENS,
    MAX_MOVE_CHARS,
    POLICY_META_FILE,
    TRAIN_POSITIONS,
    StockfishCritic,
    chess_task,
    chess_tokenizer,
    close_engine,
    find_stockfish,
    legal_moves,
    load_positions,
    open_engine,
    play_moves,
    softmax_weights,
    top_moves,
)
from text_env.chess.critics import UNSCORED


@dataclass
class PolicyBuildConfig:
    """How ``rlhf-gym chess-policy`` (:func:`build_chess_policy`) builds the default chess policy."""

    out: str = str(CHESS_POLICY)
    """Output folder: the policy (Hugging Face format) and policy.json."""
    work: str = "runs/chess_policy"
    """Scratch folder: demonstrations, the initial model, the SFT run."""
    seed: int = 0
    """Seeds the demonstrator's choices, the model initialisation and SFT."""
    train_positions: str = str(TRAIN_POSITIONS)
    """Positions of the training demonstrations."""
    eval_positions: str = str(EVAL_POSITIONS)
    """Held-out positions: validation demonstrations and the score comparison."""
    max_positions: int | None = None
    """Use only this many positions of each set (quick builds and tests)."""
    demos_per_position: int = 2
    """Demonstrator samples per training position."""
    stockfish_path: str | None = None
    """Stockfish binary; default $STOCKFISH_PATH, PATH or /usr/games/stockfish."""
    demo_depth: int = 2
    """The demonstrator's search depth: low, so it plays like a beginner."""
    multipv: int = 6
    """The demonstrator samples among this many of its best moves..."""
    temperature_cp: float = 150.0
    """...with probability softmax(centipawns / temperature_cp): higher is weaker."""
    critic_depth: int = 8
    """Depth of the Stockfish critic scoring demonstrator, random and policy moves."""
    score_positions: int = 200
    """Held-out positions on which the scores are compared."""
    n_layer: int = 4
    """Transformer layers."""
    n_embd: int = 128
    """Model width."""
    n_head: int = 4
    """Attention heads."""
    num_train_epochs: float = 4.0
    """SFT passes over the demonstrations."""
    learning_rate: float = 1e-3
    """Peak SFT learning rate; a model trained from scratch needs more than fine-tuning's 5e-5."""
    batch_size: int = 64
    """Demonstrations per SFT step."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.demos_per_position < 1 or self.multipv < 1 or self.demo_depth < 1:
            raise ValueError(
                f"PolicyBuildConfig: demos_per_position={self.demos_per_position}, multipv={self.multipv} "
                f"and demo_depth={self.demo_depth} must be >= 1."
            )
        if self.temperature_cp <= 0:
            raise ValueError(f"PolicyBuildConfig: temperature_cp={self.temperature_cp} must be > 0.")


class WeakEngine:
    """A seeded, weakened Stockfish: a softmax-weighted pick among its best moves at a low depth."""

    def __init__(self, config: PolicyBuildConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.engine = open_engine(find_stockfish(config.stockfish_path))

    def move(self, fen: str) -> str:
        """One move for ``fen`` as UCI."""
        scored = top_moves(self.engine, chess.Board(fen), self.config.demo_depth, self.config.multipv, 10_000)
        weights = softmax_weights(scored, self.config.temperature_cp)
        return self.rng.choices([m.uci() for _, m in scored], weights=weights)[0]

    def close(self) -> None:
        """End the engine process."""
        close_engine(self.engine)


def write_policy_inputs(config: PolicyBuildConfig) -> dict[str, Path]:
    """Write the demonstrations and the initial model to ``config.work``; returns their paths."""
    work = Path(config.work)
    paths = {"data": work / "demos.jsonl", "val_data": work / "val_demos.jsonl", "model": work / "init"}
    train = load_positions(config.train_positions)[: config.max_positions]
    held_out = load_positions(config.eval_positions)[: config.max_positions]
    engine = WeakEngine(config)
    try:
        demos = [
            {"prompt": fen, "response": engine.move(fen)}
            for fen in progress_bar(len(train), "demonstrations", enabled=config.progress, iterable=train)
            for _ in range(config.demos_per_position)
        ]
        val = [{"prompt": fen, "response": engine.move(fen)} for fen in held_out]
    finally:
        engine.close()
    write_jsonl_atomic(paths["data"], demos)
    write_jsonl_atomic(paths["val_data"], val)
    shutil.rmtree(paths["model"], ignore_errors=True)
    init_policy(paths["model"], config)
    return paths


def init_policy(folder: Path, config: PolicyBuildConfig) -> None:
    """Save a freshly initialised (seeded) GPT-2-shaped causal LM and the chess tokenizer to ``folder``."""
    # n_positions: the env's window (101) plus EOS, rounded to 128.
    init_tiny_lm(folder, chess_tokenizer(), n_positions=MAX_FEN_TOKENS + MAX_MOVE_CHARS + 27, n_embd=config.n_embd,
                 n_layer=config.n_layer, n_head=config.n_head, seed=config.seed)


def baseline_scores(
    config: PolicyBuildConfig, critic: StockfishCritic, demos: Sequence[dict[str, str]]
) -> dict[str, float]:
    """The Stockfish critic's mean score of the demonstrator's and of random legal moves on ``demos``' positions."""
    rng = random.Random(config.seed)
    fens = [d["prompt"] for d in demos]
    random_moves = [rng.choice(sorted(legal_moves(f))) for f in fens]
    return {
        "demonstrator": float(np.mean(critic.score(fens, [d["response"] for d in demos]))),
        "random_legal_move": float(np.mean(critic.score(fens, random_moves))),
    }


def masked_policy_moves(model_dir: str | Path, fens: Sequence[str], config: PolicyBuildConfig) -> list[str]:
    """The policy's moves under the env's legal-move masks, sampled at temperature 1 as RL rollouts do.

    One ``ChessMoveCritic-v0`` episode per position, played by :class:`agents.ReferenceAgent`
    (the agents' own sampling, seeded by ``config.seed``).
    """
    agent_config = AgentConfig(batch_size=1, seed=config.seed, log_dir=str(Path(config.work) / "play"), save_steps=0)
    agent = ReferenceAgent(chess_task(UNSCORED, positions=fens), policy=str(model_dir), config=agent_config)
    agent.generator.manual_seed(config.seed)
    return play_moves(agent, fens, mask_illegal=True)


def build_chess_policy(config: PolicyBuildConfig) -> dict[str, Any]:
    """Demonstrations, initial model, SFT (:func:`agents.sft.train_sft`), scores; writes the policy to ``out``."""
    paths = write_policy_inputs(config)
    fens = load_positions(config.eval_positions)[: config.score_positions]  # where the scores are compared
    critic = StockfishCritic(config.stockfish_path, depth=config.critic_depth)
    try:
        weak = WeakEngine(config)
        try:
            demos = [{"prompt": fen, "response": weak.move(fen)} for fen in fens]
        finally:
            weak.close()
        scores = baseline_scores(config, critic, demos)
        result = train_sft(SFTConfig(
            model=str(paths["model"]),
            data=str(paths["data"]),
            val_data=str(paths["val_data"]),
            out=str(Path(config.work) / "sft"),
            seed=config.seed,
            num_train_epochs=config.num_train_epochs,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            sample_max_new_tokens=MAX_MOVE_CHARS,
            progress=config.progress,
        ), scorer=critic, prompts=fens)
        masked = masked_policy_moves(result.model_dir, fens, config)
        scores["policy_samples_masked"] = float(np.mean(critic.score(fens, masked)))
        scores["policy_samples_unmasked"] = result.mean_score  # illegal moves count -1
    finally:
        critic.close()
    meta = {
        "mean_stockfish_score": scores,
        "sft": {"steps": result.steps, "best_step": result.best_step, "val_loss": result.val_loss,
                "val_perplexity": result.val_perplexity},
        "config": portable_config(config),
    }

    def write(tmp: Path) -> None:
        shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)
        write_json_atomic(tmp / POLICY_META_FILE, meta)

    save_dir_atomic(config.out, write)
    return meta


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym chess-policy [flags]``: rebuild the default chess policy (needs Stockfish)."""

    def run(config: PolicyBuildConfig) -> None:
        meta = build_chess_policy(config)
        print(f"wrote {config.out}: mean Stockfish scores {meta['mean_stockfish_score']}")

    return config_command(argv, "rlhf-gym chess-policy", __doc__.splitlines()[0], PolicyBuildConfig, run)


if __name__ == "__main__":
    sys.exit(cli())
