r"""``rlhf-gym compare``: train agents on any registered env id, then grade each on held-out episodes.

The same env, policy, seed and token budget for every agent; the starting policy (the task's
default, or ``--policy``) is graded too, so each row reads as before -> after. Grading samples
``eval_episodes`` episodes of the held-out env (``--eval-env-kwargs``, e.g. the held-out
problems or positions) with a fixed seed and reports the mean return, gold score, KL to the
starting policy (nats per episode), turns, and the rate of every yes/no the env reports at an
episode's end (``correct``, ``solved``, ``legal``, ...).

    rlhf-gym compare --env Arithmetic-v0 --agents ppo_kl,rloo,grpo --timesteps 200000 \
        --eval-env-kwargs '{"split": "eval"}' --out runs/compare_arithmetic

Writes ``results.md`` and ``results.csv`` in ``--out``; each agent's logs and checkpoint go to
``--out/AGENT`` and a killed run resumes (every agent continues from its last checkpoint).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import text_env  # noqa: F401  (registers the env ids)
from agents.models import load_model
from agents.registry import build_config, get_agent
from agents.rollout import make_rollout_env, rollout
from agents.scoring import response_logprobs
from rlhf_common.config_cli import config_command
from rlhf_common.io import write_json_atomic
from rlhf_common.training import has_checkpoint, set_torch_threads
from text_env import Task

__all__ = ["CompareConfig", "compare", "grade", "make_task"]


@dataclass
class CompareConfig:
    """What ``rlhf-gym compare`` trains and grades; each field is also a ``--flag``."""

    out: str = "runs/compare"
    """Output folder: results.md, results.csv, results.json and one log folder per agent."""
    env: str = "RLHFText-v0"
    """Registered env id to train on (any: RLHFText-v0, Arithmetic-v0, GuessNumber-v0, ChessGame-v0, yours)."""
    env_kwargs: str = "{}"
    """JSON options of the training env, passed to gym.make(env, **options)."""
    eval_env_kwargs: str | None = None
    """JSON options of the held-out env that grades every policy; default: env_kwargs."""
    agents: str = "ppo_kl,rloo,grpo"
    """Comma-separated names of agents.registry.AGENTS."""
    policy: str | None = None
    """Starting policy folder; default: the task's own default policy."""
    timesteps: int = 65_536
    """Generated (agent) tokens per agent."""
    batch_size: int = 64
    """Episodes per iteration."""
    num_generations: int = 4
    """Samples per prompt for the agents that take groups (RLOO, GRPO)."""
    beta: float = 0.05
    """KL penalty to the starting policy, for the agents that take one."""
    agent_settings: str = ""
    """Per-agent config fields, e.g. "ppo_kl.learning_rate=3e-4,grpo.num_iterations=2"."""
    eval_episodes: int = 256
    """Held-out episodes each policy is graded on (sampled at temperature 1, fixed seed)."""
    seed: int = 0
    """Seeds training; grading uses seed + 10_000 for every policy alike."""
    num_threads: int | None = None
    """Torch CPU threads (default: 1 on a busy machine, else all)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        for name in ("env_kwargs", "eval_env_kwargs"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parsed = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--{name.replace('_', '-')} {value!r} is not JSON ({e}); give an object, "
                                     "e.g. '{\"split\": \"eval\"}'.") from None
                if not isinstance(parsed, dict):
                    raise ValueError(f"--{name.replace('_', '-')} must be a JSON object, got {value!r}.")
        for name in ("timesteps", "batch_size", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1.")
        for name in self.agent_names:
            get_agent(name)
        if self.env not in gym.registry:
            text_ids = ", ".join(k for k, spec in gym.registry.items() if str(spec.entry_point).startswith("text_env"))
            raise ValueError(f"--env {self.env!r} is not a registered env id; registered text envs: {text_ids}.")

    @property
    def agent_names(self) -> list[str]:
        """The agents to train, in order."""
        return [a.strip() for a in self.agents.split(",") if a.strip()]


def make_task(env_id: str, options: dict[str, Any]) -> Task:
    """The Task behind ``gym.make(env_id, **options)``: what agents and grading share."""
    try:
        env = gym.make(env_id, **options)
    except TypeError as e:
        raise ValueError(f"gym.make({env_id!r}, **{options!r}) failed: {e}; check --env-kwargs / "
                         "--eval-env-kwargs against the env's documented options.") from None
    task = getattr(env.unwrapped, "task", None)
    if not isinstance(task, Task):
        raise ValueError(f"--env {env_id!r} is not a text env (no Task); use an id such as 'RLHFText-v0'.")
    return task


@torch.no_grad()
def grade(policy: Any, reference: Any, task: Task, episodes: int, seed: int, batch: int = 128) -> dict[str, float]:
    """``policy`` on ``episodes`` held-out episodes of ``task``: means of return, gold, KL to ``reference``, ..."""
    rows: list[dict[str, Any]] = []
    kls: list[float] = []
    done = 0
    while done < episodes:
        n = min(batch, episodes - done)
        env = make_rollout_env(task, n)
        out = rollout(policy, env, seed=seed + done)
        ref = response_logprobs(reference, out, 1.0, task.vocab_size).logprobs
        kls += ((out.logprobs - ref) * out.response_mask).sum(1).tolist()
        rows += [{**info, "return_": float(r)} for info, r in zip(out.infos, out.rewards, strict=True)]
        done += n
    result = {"return": float(np.mean([r["return_"] for r in rows])), "kl": float(np.mean(kls)),
              "response_length": float(np.mean([r["response_length"] for r in rows]))}
    for key in ("gold_score", "turns"):
        if key in rows[0]:
            result[key] = float(np.mean([r[key] for r in rows]))
    for key, value in rows[0].items():  # every yes/no of the final info: correct, solved, legal, ...
        if isinstance(value, bool | np.bool_) and key != "restart":
            result[f"{key}_rate"] = float(np.mean([bool(r.get(key)) for r in rows]))
    return result


def compare(config: CompareConfig) -> list[dict[str, Any]]:
    """Train every agent of ``config`` from the same starting policy, grade all, write the tables."""
    from agents.registry import BUDGET, parse_agent_settings

    set_torch_threads(config.num_threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    train_task = make_task(config.env, json.loads(config.env_kwargs))
    eval_task = make_task(config.env, json.loads(config.eval_env_kwargs or config.env_kwargs))
    settings = parse_agent_settings(config.agent_settings)
    device = torch.device("cpu")
    start = load_model(config.policy, device, train_task)
    grading_seed = config.seed + 10_000
    results = [{"agent": "starting policy", "timesteps": 0, "train_seconds": 0.0,
                **grade(start, start, eval_task, config.eval_episodes, grading_seed)}]
    for name in config.agent_names:
        spec, overrides = get_agent(name), dict(settings.get(name, {}))
        budget = overrides.pop(BUDGET, config.timesteps)
        common = {"batch_size": config.batch_size, "beta": config.beta, "seed": config.seed, "save_steps": 4,
                  "num_generations": config.num_generations, "log_dir": str(out / name)}
        agent = spec.cls(train_task, config.policy, build_config(spec, common, overrides))
        began = time.perf_counter()
        agent.learn(budget, resume=has_checkpoint(agent.checkpoint_dir), progress_bar=config.progress)
        row = grade(agent.policy, start, eval_task, config.eval_episodes, grading_seed)
        results.append({"agent": spec.label, "timesteps": agent.num_timesteps,
                        "train_seconds": round(agent.train_seconds or time.perf_counter() - began, 1), **row})
    write_json_atomic(out / "results.json", {"config": vars(config), "results": results})  # vars: a flat dataclass
    _write_tables(out, config, results)
    return results


def _write_tables(out: Path, config: CompareConfig, results: list[dict[str, Any]]) -> None:
    from rlhf_gym.pipeline.report import write_csv

    keys = [k for k in results[0] if k != "agent"]
    write_csv(out / "results.csv", [{"agent": r["agent"], **{k: r.get(k) for k in keys}} for r in results])
    lines = [f"`{config.env}`, {config.eval_episodes} held-out episodes per policy, seed {config.seed}, "
             f"{config.timesteps} tokens per agent", "",
             "| agent | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in results:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for k in keys]
        lines.append(f"| {r['agent']} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym compare``: flags are :class:`CompareConfig`'s fields."""
    return config_command(argv, "rlhf-gym compare", __doc__.splitlines()[0], CompareConfig, compare)


if __name__ == "__main__":
    sys.exit(cli())
