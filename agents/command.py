"""The command line of every agent module: ``python -m agents.ppo_kl [--flags]`` and the like.

One ``--flag`` per field of the agent's config (:func:`rlhf_common.config_cli.add_config_args`),
plus where to train (``--env``), for how long (``--total-timesteps``) and where to save.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from agents.base import Agent
from rlhf_common.config_cli import add_config_args, config_from_args, run_command
from rlhf_common.training import set_torch_threads

__all__ = ["agent_cli"]


def agent_cli(agent_class: type[Agent], argv: Sequence[str] | None, description: str, default_timesteps: int) -> int:
    """Parse ``--flags`` onto ``agent_class.config_class``, learn, save; the body of ``python -m agents.X``.

    Exits as every command does (:func:`rlhf_common.config_cli.run_command`): 2 for bad
    settings, 1 for a failure while training (a NaN, a crashed reward model).
    """
    module = sys.modules[agent_class.__module__].__spec__  # under `python -m` the class lives in __main__
    prog = f"python -m {module.name if module is not None else agent_class.__module__}"
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--env", default="RLHFText-v0", help="registered text env id (default: %(default)s)")
    parser.add_argument("--total-timesteps", type=int, default=default_timesteps,
                        help="generated tokens to train for (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from LOG_DIR/checkpoint")
    parser.add_argument("--save", default=None, help="save the agent here at the end (default: LOG_DIR/model)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 on a shared machine)")
    if agent_class.needs_policy:
        parser.add_argument("--policy", default=None, help="causal-LM folder (default: the embedded policy)")
    add_config_args(parser, agent_class.config_class)
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: _train(agent_class, args))


def _train(agent_class: type[Agent], args: argparse.Namespace) -> None:
    set_torch_threads(args.num_threads)
    config = config_from_args(agent_class.config_class, args)
    if agent_class.needs_policy:
        agent = agent_class(args.env, policy=args.policy, config=config)
    else:
        agent = agent_class(args.env, config=config)
    agent.learn(args.total_timesteps, resume=args.resume)
    save = args.save or str(Path(config.log_dir) / "model")
    agent.save(save)
    if agent.dist.is_main:
        print(f"{agent_class.__name__}: {agent.num_timesteps} timesteps in {agent.iteration} iterations; "
              f"saved to {save}; metrics in {config.log_dir}/progress.csv")
