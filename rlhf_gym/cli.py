"""``rlhf-gym``: one command, a subcommand per RLHF step.

Each subcommand lives next to the code it runs, as a ``cli(argv) -> int`` function that
maps its flags onto that module's config dataclass; this file only dispatches.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function, one-line help)
    "pipeline": ("rlhf_gym.pipeline.run:cli", "all four RLHF steps end to end, agents compared, a report (resumable)"),
    "leaderboard": ("rlhf_gym.pipeline.leaderboard:cli", "the pipeline over several seeds: every agent on one "
                    "frontier, mean ± s.e."),
    "compare": ("rlhf_gym.compare:cli", "train agents on any registered env id, grade each on held-out episodes"),
    "report": ("rlhf_gym.pipeline.report:cli", "re-render report.md and the plots of a pipeline run"),
    "demo": ("rlhf_gym.demo:cli", "run a short episode loop on RLHFText-v0 and print texts and rewards"),
    "build-defaults": ("rlhf_gym.build.defaults:cli", "rebuild the embedded default tokenizer, policy and prompts"),
    "sft": ("agents.sft:cli", "RLHF step 1: supervised fine-tuning on JSONL demonstrations (resumable)"),
    "collect": ("rlhf_gym.collect:cli", "sample K responses per prompt from a policy, for labeling"),
    "chess-positions": ("rlhf_gym.build.chess_positions:cli", "rebuild the chess position sets"),
    "chess-tactics": ("rlhf_gym.build.chess_tactics:cli", "rebuild the tactical chess position sets"),
    "chess-critic": ("rlhf_gym.build.chess_critic:cli", "label moves with Stockfish, train the learned chess critic"),
    "chess-policy": ("rlhf_gym.build.chess_policy:cli", "rebuild the default chess policy (SFT on weak-engine moves)"),
    "guess-number-policy": ("rlhf_gym.build.guess_number_policy:cli",
                            "rebuild the default GuessNumber-v0 policy (SFT on a sloppy bisector's games)"),
    "arithmetic-policy": ("rlhf_gym.build.arithmetic_policy:cli", "rebuild the default Arithmetic-v0 policy (SFT "
                          "on generated problems)"),
    "label": ("reward_models.labeling.cli:cli", "label responses in the browser; export; agreement; reliability"),
    "simulate-labels": ("reward_models.simulated:cli", "rank sampled responses with a simulated labeler"),
    "train-rm": ("reward_models.train:cli", "train a Bradley-Terry reward model on preference JSONL"),
    "ai-label": ("rlhf_gym.ai_label:cli", "rank a collection with an AI labeler: an LM judge (SmolLM2) or a scorer"),
    "judge-study": ("rlhf_gym.feedback_studies.judge:cli", "SmolLM2 as a judge: agreement, position bias, "
                    "reward models and PPOKL on its labels"),
    "reliability-study": ("rlhf_gym.feedback_studies.reliability:cli", "unreliable labelers: estimated reliability "
                          "and reliability-weighted reward models, measured"),
    "audit-rm": ("reward_models.audit:cli", "audit a reward model: score explained by length and other cheap features"),
    "bias-study": ("rlhf_gym.feedback_studies.bias:cli", "length-biased labels: audit, --debias length, PPOKL on both"),
    "active-study": ("rlhf_gym.feedback_studies.active:cli", "labels to a reward-model accuracy: active vs random"),
    "ppo": ("agents.ppo_kl:cli", "RLHF step 3: PPO with a per-token KL penalty against the SFT reference"),
    "rloo": ("agents.rloo:cli", "REINFORCE with a leave-one-out baseline and a KL penalty"),
    "best-of-n": ("agents.best_of_n:cli", "measure best-of-n sampling from the reference (no training)"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``rlhf-gym <command> [flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: rlhf-gym <command> [--help]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rlhf-gym: unknown command {name!r}; choose from {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
