"""What the feedback studies share: their common settings, the feedback prompts, gold-scored samples, PPOKL runs.

Every study draws feedback prompts as ``rlhf-gym build-defaults`` does, samples the default SFT
policy, trains reward models with the pipeline's settings and, where it measures RL, trains PPOKL
against a reward model and evaluates it as the pipeline does. Each stage writes its result to a
file in the study folder and is skipped when that file exists, so a killed study resumes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward_models import HFRewardModel
from rlhf_common.io import write_json_atomic, write_jsonl_atomic
from rlhf_common.training import has_checkpoint, quiet_transformers
from rlhf_gym.collect import response_groups, sample_groups, unscored
from rlhf_gym.pipeline.evaluate import evaluate_policy

__all__ = ["RLStudyConfig", "feedback_prompts", "gold_samples", "read_json", "train_and_evaluate"]


@dataclass
class RLStudyConfig:
    """Settings of a study that trains reward models and then PPOKL against them; each field is also a ``--flag``."""

    out: str = "runs/feedback_study"
    """Study folder; re-running resumes."""
    rm_prompts: int = 2000
    """Feedback prompts (openings of training fortunes), each sampled num_generations times (10% held out)."""
    num_generations: int = 4
    """Responses per prompt that are ranked."""
    labeler_temperature: float = 0.2
    """The simulated labeler's Bradley-Terry noise in gold units (the pipeline's)."""
    rm_learning_rate: float = 3e-4
    """Peak learning rate of every reward model (the pipeline's)."""
    audit_samples: int = 8
    """Gold-scored SFT samples per evaluation prompt (all 300)."""
    timesteps: int = 196_608
    """PPOKL's token budget against each reward model (the pipeline's)."""
    n_eval_prompts: int = 128
    """Held-out prompts each trained policy is evaluated on (the pipeline's)."""
    eval_samples: int = 16
    """Responses per evaluation prompt (the pipeline's)."""
    seed: int = 0
    """Seeds sampling, labelers, reward models, PPOKL and evaluation."""
    num_threads: int | None = None
    """Torch CPU threads; default: torch's choice on an idle machine, 1 on a busy one."""
    progress: bool = True
    """Show progress bars."""


def read_json(path: Path) -> Any:
    """The JSON a finished stage wrote to ``path``; None if it has not run yet."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def feedback_prompts(n: int, seed: int) -> list[str]:
    """Openings of the first ``n`` training fortunes, drawn as ``rlhf-gym build-defaults`` draws feedback prompts."""
    from rlhf_gym.build.corpus import opening, split_corpus
    from rlhf_gym.build.defaults import BuildConfig

    build = BuildConfig(seed=seed)
    splits, _, _ = split_corpus(build)
    opener = random.Random(seed + 1)
    return [opening(e, opener, build)[0] for e in splits["train"][:n]]


def gold_samples(config: RLStudyConfig, path: Path, reference: Any) -> Path:
    """``audit_samples`` gold-scored SFT samples per evaluation prompt, JSONL at ``path`` (kept once written)."""
    from text_env.defaults import default_eval_prompts_path, default_task
    from text_env.prompts import load_prompts

    if not path.is_file():
        prompts = load_prompts(default_eval_prompts_path())
        task = default_task(prompts=prompts, reward_model=unscored())
        rows = []
        for batch in sample_groups(reference, task, prompts, config.audit_samples, batch_size=64,
                                   seed=config.seed + 5, progress=config.progress, desc="audit samples"):
            rows += response_groups(batch.infos, config.audit_samples, gold="gold_score")
        write_jsonl_atomic(path, rows)
    return path


def train_and_evaluate(config: RLStudyConfig, work: Path, name: str, rm_path: Path, reference: Any) -> dict:
    """PPOKL against ``rm_path`` for ``timesteps`` tokens (resumable), then the held-out evaluation.

    Also evaluates the SFT policy under the same reward model (the row RL starts from).
    """
    from agents import PPOKL, PPOKLConfig
    from text_env.defaults import default_eval_prompts_path, default_policy_path, default_task
    from text_env.prompts import load_prompts

    result_path = work / f"ppo_{name}.json"
    if (result := read_json(result_path)) is not None:
        return result
    with quiet_transformers():
        task = default_task(reward_model=HFRewardModel(rm_path))
    prompts = load_prompts(default_eval_prompts_path())[: config.n_eval_prompts]
    kwargs = {"batch_size": 128, "seed": config.seed + 3, "progress": config.progress}
    sft = evaluate_policy(reference, reference, task, prompts, config.eval_samples, desc=f"SFT under {name}", **kwargs)
    log_dir = work / f"ppo_{name}"
    agent = PPOKL(task, default_policy_path(), PPOKLConfig(log_dir=str(log_dir), seed=config.seed, save_steps=4))
    agent.learn(config.timesteps, resume=has_checkpoint(agent.checkpoint_dir), progress_bar=config.progress)
    ppo = evaluate_policy(agent.policy.eval(), reference, task, prompts, config.eval_samples,
                          desc=f"PPOKL vs {name}", **kwargs)
    result = {"sft": sft, "ppo": ppo, "train_timesteps": int(agent.num_timesteps),
              "train_seconds": round(agent.train_seconds, 1)}
    write_json_atomic(result_path, result)
    return result
