"""ChessGame-v0 before and after RL: Stockfish grades the moves and the games of each policy.

Run: .venv/bin/python examples/chess_game_rl.py                  # trains, then grades (needs Stockfish)
     .venv/bin/python examples/chess_game_rl.py --timesteps 2048  # a quick look

Step 1 trains PPOKL, RLOO and GRPO on ChessGame-v0 (games of ``--max-turns`` agent moves against
the weak engine, the ``--critic``'s score per move plus the result) through
``rlhf-gym compare``, which also reports each policy's return on held-out positions. Step 2 plays
one game per held-out starting position with the starting policy and each trained one (the same
opponent choices for every policy: game ``i`` is seeded ``i``) and grades them with Stockfish:
mean centipawn loss per agent move, and wins / draws / losses against the weak engine.
A killed run resumes: the agents continue from their checkpoints in ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from agents import AgentConfig, ReferenceAgent
from rlhf_common.training import set_torch_threads
from rlhf_gym.compare import CompareConfig, compare, make_task
from text_env.chess import CHESS_POLICY, EVAL_POSITIONS, StockfishCritic, load_positions
from text_env.chess.grading import grade_games, play_games


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/chess_game_rl", help="run folder (default runs/chess_game_rl)")
    parser.add_argument("--agents", default="ppo_kl,rloo,grpo")
    parser.add_argument("--timesteps", type=int, default=8192, help="agent tokens per agent (default 8192)")
    parser.add_argument("--max-turns", type=int, default=4, help="agent moves per game (default 4)")
    parser.add_argument("--positions", type=int, default=50, help="held-out starting positions graded (default 50)")
    parser.add_argument("--depth", type=int, default=8, help="Stockfish grading depth (default 8)")
    parser.add_argument("--critic", default="learned", help="reward per move: learned (default) or stockfish")
    parser.add_argument("--result-weight", type=float, default=1.0,
                        help="weight of the game's result in the last move's reward (default 1; 0: move rewards only)")
    parser.add_argument("--beta", type=float, default=0.05, help="KL penalty to the starting policy (default 0.05)")
    parser.add_argument("--agent-settings", default="", help='per-agent fields, e.g. "rloo.learning_rate=1e-3"')
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    set_torch_threads()
    options = {"max_turns": args.max_turns, "critic": args.critic, "result_weight": args.result_weight}
    held_out = {**options, "positions": str(EVAL_POSITIONS)}
    compare(CompareConfig(out=args.out, env="ChessGame-v0", env_kwargs=json.dumps(options),
                          eval_env_kwargs=json.dumps(held_out), agents=args.agents, timesteps=args.timesteps,
                          beta=args.beta, agent_settings=args.agent_settings, eval_episodes=64, seed=args.seed,
                          progress=False))

    task = make_task("ChessGame-v0", held_out)
    fens = load_positions(EVAL_POSITIONS)[: args.positions]
    policies = {"starting policy": CHESS_POLICY}
    policies.update({name: Path(args.out) / name / "checkpoint" / "policy" for name in args.agents.split(",")})
    grader = StockfishCritic(depth=args.depth)
    rows = []
    try:
        for name, policy in policies.items():
            agent = ReferenceAgent(task, policy, AgentConfig(batch_size=1, log_dir=f"{args.out}/grade", save_steps=0))
            grades = grade_games(grader, play_games(agent, fens, max_turns=args.max_turns, seed=args.seed))
            rows.append({"policy": name, "cp_loss": grades.moves.mean_cp_loss, "sem": grades.moves.cp_loss_sem,
                         "moves": grades.moves.moves,
                         "wins": grades.wins, "draws": grades.draws, "losses": grades.losses,
                         "mean_result": grades.mean_result, "mean_final_cp": grades.mean_final_cp})
    finally:
        grader.close()
        task.close()
    lines = [f"ChessGame-v0, {len(fens)} held-out positions, {args.max_turns} agent moves, Stockfish depth "
             f"{args.depth}, seed {args.seed}, {args.timesteps} training tokens per agent, {args.critic} critic", "",
             "| policy | mean centipawn loss | moves | wins / draws / losses | mean result | mean final cp |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['policy']} | {r['cp_loss']:.0f} ± {r['sem']:.0f} | {r['moves']} | "
              f"{r['wins']} / {r['draws']} / {r['losses']} | {r['mean_result']:+.2f} | {r['mean_final_cp']:+.0f} |"
              for r in rows]
    (Path(args.out) / "chess_games.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
