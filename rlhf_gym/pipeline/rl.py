"""Step 3 of the pipeline: RL against the reward model, every agent from the registry, then held-out evaluation.

Each agent of ``--agents`` is built from its ``agents.registry`` entry with the run's shared
settings (same prompts, seed and beta), trains for its token budget, resuming its checkpoint
after a kill, and is evaluated on the held-out prompts. Best-of-n from the SFT policy is the
yardstick: the gold gain it buys at each KL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.registry import get_agent
from rlhf_common.training import has_checkpoint
from rlhf_gym.pipeline.context import RunContext
from rlhf_gym.pipeline.evaluate import best_of_n_curve, evaluate_policy
from text_env import Task

__all__ = ["best_of_n", "train_agent"]


def best_of_n(ctx: RunContext, task: Task) -> dict[str, Any]:
    """Step 3: the best-of-n curve of the SFT policy on the evaluation prompts."""
    cfg = ctx.config
    return best_of_n_curve(ctx.reference, task, ctx.eval_prompts, cfg.max_n, batch_size=2 * cfg.batch_size,
                           seed=cfg.seed + 2, progress=cfg.progress)


def train_agent(ctx: RunContext, name: str, task: Task) -> dict[str, Any]:
    """Step 3: train agent ``name`` for its budget (resuming its checkpoint), then evaluate it held out."""
    cfg, spec, log_dir = ctx.config, get_agent(name), ctx.layout.agent_dir(name)
    agent = spec.cls(task, ctx.setup["policy"], cfg.agent_config(name, str(log_dir)))
    resume = has_checkpoint(agent.checkpoint_dir)  # a killed run of this stage
    agent.learn(cfg.budget(name), resume=resume, progress_bar=cfg.progress)
    # Evaluate next to the reference (on CUDA when there is one; SB3 may have trained elsewhere).
    policy = agent.policy.eval().to(ctx.reference.device)
    result = evaluate_policy(policy, ctx.reference, task, ctx.eval_prompts, cfg.eval_samples,
                             batch_size=cfg.batch_size, seed=cfg.seed + 3, progress=cfg.progress,
                             desc=f"evaluate {spec.label}")
    return {**result, "agent": name, "train_timesteps": int(agent.num_timesteps),
            "train_episodes": int(agent.num_episodes), "train_seconds": round(agent.train_seconds, 1),
            "policy_dir": str(_policy_dir(agent))}


def _policy_dir(agent: Any) -> Path:
    """The trained policy's Hugging Face folder: ``log_dir/policy`` when the agent writes one, else the checkpoint's."""
    final = Path(agent.config.log_dir) / "policy"
    return final if final.is_dir() else agent.checkpoint_dir / "policy"
