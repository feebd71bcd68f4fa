"""``rlhf-gym collect``: sample N responses per prompt from a policy, the input of labeling.

Writes one ``{"prompt": str, "responses": [N texts]}`` row per prompt (atomically), the
collection format that the labeling page (``rlhf-gym label serve --items``) and
``rlhf-gym simulate-labels`` read. Sampling goes through the env: a
``TextGenerationVectorEnv`` with autoreset disabled, N consecutive sub-envs per prompt,
one KV-cached forward pass per token (``agents.rollout.rollout``).

    rlhf-gym collect --num-generations 4 --n-prompts 64 --out collection.jsonl
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gymnasium.vector import AutoresetMode

from agents.rollout import RolloutBatch, rollout
from reward_models import FunctionRewardModel
from rlhf_common.config_cli import config_command
from rlhf_common.io import write_jsonl_atomic
from rlhf_common.training import progress_bar, quiet_transformers
from text_env import Task, TextGenerationVectorEnv

__all__ = ["CollectConfig", "collect", "response_groups", "sample_groups", "unscored"]


@dataclass
class CollectConfig:
    """What ``rlhf-gym collect`` samples; each field is also a ``--flag``."""

    out: str
    """Collection JSONL to write: one {"prompt", "responses": [...]} row per prompt."""
    policy: str | None = None
    """Causal-LM folder to sample from (its own tokenizer is used); default: the embedded default policy."""
    prompts: str | None = None
    """Prompt JSONL ({"prompt": str} per line); default: the embedded default prompts."""
    num_generations: int = 4
    """Responses per prompt (the labeling page ranks 2 or more)."""
    n_prompts: int | None = None
    """Use the first N prompts of the file; default: all of them."""
    batch_size: int = 64
    """Episodes sampled together (rounded down to a multiple of num_generations)."""
    temperature: float = 1.0
    """Sampling temperature (1: the policy's own distribution)."""
    max_new_tokens: int = 32
    """Response length cap in tokens."""
    seed: int = 0
    """Seeds the sampling."""
    device: str = "auto"
    """Torch device: auto (CUDA if present, else CPU), cpu, cuda:0..."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.num_generations < 1 or self.batch_size < self.num_generations:
            raise ValueError(f"--num-generations {self.num_generations} must be >= 1 and --batch-size "
                             f"{self.batch_size} >= num-generations.")
        if self.n_prompts is not None and self.n_prompts < 1:
            raise ValueError(f"--n-prompts {self.n_prompts} must be >= 1 (or left out for all prompts).")
        if self.temperature <= 0:
            raise ValueError(f"--temperature {self.temperature} must be > 0.")


def unscored() -> FunctionRewardModel:
    """A constant-0 reward model: sampling for labeling needs no scores, so none are computed."""
    return FunctionRewardModel(lambda prompt, response: 0.0, name="unscored (collection)")


def sample_groups(
    model: Any,
    task: Task,
    prompts: Sequence[str],
    num_generations: int,
    *,
    batch_size: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    desc: str = "sampling",
) -> Iterator[RolloutBatch]:
    """Sample ``num_generations`` responses to each prompt, ``batch_size // num_generations`` prompts per batch.

    Yields one :class:`RolloutBatch` per chunk of prompts, rows in prompt order with the
    ``num_generations`` samples of a prompt consecutive (:func:`response_groups` regroups
    them). Deterministic given ``seed``.
    """
    k = num_generations
    if k < 1 or batch_size < k:
        raise ValueError(f"num_generations={k} must be >= 1 and batch_size={batch_size} >= num_generations.")
    per_batch = batch_size // k
    envs: dict[int, TextGenerationVectorEnv] = {}
    with progress_bar(len(prompts) * k, desc, unit="ep", enabled=progress) as bar:
        for start in range(0, len(prompts), per_batch):
            chunk = list(prompts[start : start + per_batch])
            n = len(chunk) * k
            if n not in envs:  # the last chunk may be smaller
                envs[n] = TextGenerationVectorEnv(task, n, autoreset_mode=AutoresetMode.DISABLED)
            yield rollout(model, envs[n], temperature=temperature, group_size=k, prompts=chunk,
                          seed=seed + start)
            bar.update(n)
    for env in envs.values():
        env.close()


def response_groups(infos: Sequence[Mapping[str, Any]], num_generations: int, **columns: str) -> list[dict[str, Any]]:
    """One row per prompt from a :func:`sample_groups` batch's infos: ``{"prompt", "responses", **columns}``.

    ``columns`` maps an output key to the info key listed per response, e.g.
    ``gold="gold_score"`` adds each response's gold score as ``"gold"``.
    """
    rows = []
    for g in range(0, len(infos), num_generations):
        group = infos[g : g + num_generations]
        rows.append({"prompt": group[0]["prompt"], "responses": [i["response"] for i in group],
                     **{key: [i[info_key] for i in group] for key, info_key in columns.items()}})
    return rows


def collect(config: CollectConfig) -> list[dict[str, Any]]:
    """Sample as ``config`` says and write the collection JSONL; returns its rows."""
    from agents.lm import load_causal_lm
    from text_env.defaults import default_policy_path, default_prompts_path, default_task
    from text_env.prompts import load_prompts

    prompts = load_prompts(config.prompts or default_prompts_path())[: config.n_prompts]
    task = default_task(model=config.policy, prompts=prompts, reward_model=unscored(),
                        max_new_tokens=config.max_new_tokens)
    with quiet_transformers():
        model = load_causal_lm(config.policy or default_policy_path(), device=config.device)
    rows = []
    for batch in sample_groups(model, task, task.prompts, config.num_generations, batch_size=config.batch_size,
                               temperature=config.temperature, seed=config.seed, progress=config.progress,
                               desc="collect"):
        rows += response_groups(batch.infos, config.num_generations)
    write_jsonl_atomic(config.out, rows)
    return rows


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym collect``: sample N responses per prompt into a collection JSONL."""

    def run(config: CollectConfig) -> None:
        rows = collect(config)
        print(f"wrote {len(rows)} prompts x {config.num_generations} responses to {os.fspath(config.out)}")

    return config_command(argv, "rlhf-gym collect", "Sample N responses per prompt from a policy, for the "
                          "labeling page or simulate-labels.", CollectConfig, run)


if __name__ == "__main__":
    sys.exit(cli())
