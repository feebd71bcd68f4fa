"""PPOKL on ChessMoveCritic-v0 against the learned critic and against Stockfish, graded by Stockfish on held-out moves
in quiet and in tactical positions.

Run (needs `apt-get install stockfish`; 2 CPU cores shared with other jobs, one torch thread):
    OMP_NUM_THREADS=1 .venv/bin/python examples/ppo_kl_chess.py    # 2 x 60k tokens: about 30 minutes
    OMP_NUM_THREADS=1 .venv/bin/python examples/ppo_kl_chess.py --timesteps 64 --positions 4 --depth 2 --batch-size 8
                                                                   # smoke run, about 20 seconds
On a machine busy with other jobs, expect several times longer.

Every policy starts from the shipped SFT chess policy. PPOKL trains it twice on the
training positions (``--train-positions both`` adds the tactical ones), legal-move masks on:
against the learned critic (a reward model trained on Stockfish's move rankings; no engine in
the loop) and against the Stockfish critic itself. Best-of-n samples n SFT moves and keeps the critic's favourite.
Then each policy writes one move (sampled, as in training) in every held-out position, quiet
(opening book, ECO lines, self-play) and tactical (the best move beats the second by >= 200 cp),
and Stockfish at ``--depth`` grades it: mean centipawn loss against its best move
(evaluations clipped to +-1000; an illegal move forfeits, i.e. counts as a move into a lost
position, no better than any legal move, as the env's ``illegal_score`` ranks it), the
illegal-move rate and the mean Stockfish score (the env's reward). The SFT policy also
plays without masks, where most of its moves are illegal. The learned critic's agreement
with Stockfish on held-out move pairs is printed as recorded when it was built
(``critic.json``) and as measured again on the graded positions.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from agents import PPOKL, BestOfN, BestOfNConfig, PPOKLConfig, RandomAgent, ReferenceAgent
from agents.agent_config import AgentConfig
from agents.base import Agent
from rlhf_common.training import set_torch_threads
from text_env.chess import (
    CHESS_POLICY,
    CRITIC_META_FILE,
    EVAL_POSITIONS,
    EVAL_TACTICAL_POSITIONS,
    LEARNED_CRITIC,
    TACTICAL_POSITIONS,
    TRAIN_POSITIONS,
    MoveGrades,
    StockfishCritic,
    chess_task,
    critic_agreement,
    grade_moves,
    load_positions,
    play_moves,
)

CRITICS = ("learned", "stockfish")


def ppo_config(args: argparse.Namespace, critic: str, log_dir: str) -> PPOKLConfig:
    """The PPOKL settings of one run (tuned on this task: see the README's ChessMoveCritic-v0 section)."""
    return PPOKLConfig(
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,  # a 4x128 model trained from scratch takes larger steps than a pretrained one
        # Beta weighs KL against score differences. The learned critic's calibration (a least-squares
        # fit of a noisy predictor) shrinks them: within a position its scores spread ~3x less than
        # Stockfish's (s.d. 0.09 vs 0.27), so it gets a ~3x smaller beta.
        beta=args.beta_learned if critic == "learned" else args.beta_stockfish,
        num_mini_batches=4,
        seed=args.seed,
        log_dir=log_dir,
        save_steps=0,
    )


def last_logged(log_dir: str) -> dict[str, float]:
    """Training score and KL (nats per move) of an agent's last logged iteration."""
    with open(Path(log_dir) / "progress.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return {"score": float(last["score"]), "kl": float(last["kl"])}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, MoveGrades]]:
    """Train, then grade every policy; returns {policy label: {"quiet" | "tactical": grades}}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=60_000, help="generated tokens per PPOKL run (default 60000)")
    parser.add_argument("--positions", type=int, default=500,
                        help="held-out positions graded in each set, quiet and tactical (default: all 500)")
    parser.add_argument("--train-positions", choices=("quiet", "both"), default="quiet",
                        help="PPOKL's training positions: the env's quiet ones, or quiet + tactical (default quiet)")
    parser.add_argument("--depth", type=int, default=8, help="Stockfish depth of the critic and the grader (default 8)")
    parser.add_argument("--batch-size", type=int, default=64, help="episodes per PPOKL iteration (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="PPOKL learning rate (default 1e-3)")
    parser.add_argument("--beta-learned", type=float, default=0.007,
                        help="KL coefficient against the learned critic (default 0.007)")
    parser.add_argument("--beta-stockfish", type=float, default=0.02,
                        help="KL coefficient against the Stockfish critic (default 0.02)")
    parser.add_argument("--num-generations", type=int, default=4, help="samples per position for best-of-n (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    set_torch_threads()  # 1 thread on a busy machine: contended threads are far slower
    held_out = {"quiet": load_positions(EVAL_POSITIONS)[: args.positions],
                "tactical": load_positions(EVAL_TACTICAL_POSITIONS)[: args.positions]}
    train = load_positions(TRAIN_POSITIONS)
    if args.train_positions == "both":
        train += load_positions(TACTICAL_POSITIONS)
    grader = StockfishCritic(depth=args.depth)
    tasks = {name: chess_task(name, positions=train, **({"depth": args.depth} if name == "stockfish" else {}))
             for name in CRITICS}
    agents, notes = {}, {}
    with tempfile.TemporaryDirectory() as logs:
        def config(cls: type[AgentConfig], name: str, **kw: object) -> AgentConfig:
            return cls(seed=args.seed, log_dir=f"{logs}/{name}", save_steps=0, **kw)

        # Only played, not trained: batch_size is merely the size of their (unused) rollout env.
        agents["random (masked characters)"] = RandomAgent(tasks["learned"], config(AgentConfig, "rnd", batch_size=1))
        agents["SFT policy"] = ReferenceAgent(tasks["learned"], CHESS_POLICY, config(AgentConfig, "sft", batch_size=1))
        for name in CRITICS:
            n = args.num_generations
            agents[f"best-of-{n}, {name} critic"] = BestOfN(
                tasks[name], CHESS_POLICY, config(BestOfNConfig, f"bon_{name}", batch_size=n, num_generations=n))
        for name in CRITICS:
            torch.manual_seed(args.seed)
            agent = PPOKL(tasks[name], CHESS_POLICY, ppo_config(args, name, f"{logs}/ppo_{name}"))
            start = time.perf_counter()
            agent.learn(args.timesteps)
            minutes = (time.perf_counter() - start) / 60
            agents[f"PPOKL, {name} critic"] = agent
            notes[f"PPOKL, {name} critic"] = {"minutes": minutes, "tokens": agent.num_timesteps,
                                              **last_logged(agent.config.log_dir)}

        def grade(agent: Agent, mask_illegal: bool = True) -> dict[str, MoveGrades]:
            grades = {}
            for name, fens in held_out.items():
                agent.generator.manual_seed(args.seed)  # the same sampling stream for every policy
                grades[name] = grade_moves(grader, fens, play_moves(agent, fens, mask_illegal))
            return grades

        results = {"SFT policy, masks off": grade(agents["SFT policy"], mask_illegal=False)}
        results.update({label: grade(agent) for label, agent in agents.items()})
        agreement = {name: critic_agreement(tasks["learned"].reward_model, grader, fens)
                     for name, fens in held_out.items()}
    for task in tasks.values():
        task.close()
    grader.close()

    recorded = json.loads((LEARNED_CRITIC / CRITIC_META_FILE).read_text())["held_out"]
    print(f"\nlearned critic vs Stockfish, pairwise agreement on held-out moves: {recorded['pairwise_accuracy']:.1%} "
          f"of {recorded['pairs']} pairs (critic.json, at build); here (4 random legal moves in each graded position, "
          f"Stockfish depth {args.depth}, gap >= 0.05): " + ", ".join(
              f"{name} {a.rate:.1%} of {a.pairs} pairs" for name, a in agreement.items()))
    for label, note in notes.items():
        print(f"{label}: {note['tokens']} tokens in {note['minutes']:.1f} min; last batch score {note['score']:.3f}, "
              f"KL {note['kl']:.2f} nats")
    sizes = " and ".join(f"{len(fens)} {name}" for name, fens in held_out.items())
    print(f"\n{sizes} held-out positions, one sampled move each, graded by Stockfish depth {args.depth}; "
          f"PPOKL trained on {args.train_positions} training positions\n")
    print("| policy | masks | quiet: mean cp loss | quiet: illegal | quiet: Stockfish score "
          "| tactical: mean cp loss | tactical: illegal | tactical: Stockfish score |")
    print("|---|---|---|---|---|---|---|---|")
    for label, by_set in results.items():
        masks = "off" if label.endswith("masks off") else "on"
        cells = [f"{g.mean_cp_loss:.0f} ± {g.cp_loss_sem:.0f} | {g.illegal_rate:.1%} | {g.mean_score:+.3f}"
                 for g in by_set.values()]
        print(f"| {label.removesuffix(', masks off')} | {masks} | " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    main()
