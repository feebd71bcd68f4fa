"""Step 2 of the pipeline: human feedback simulated, a reward model trained on it, and measured held out.

:func:`simulated_feedback` samples ``num_generations`` responses per prompt from a policy,
ranks them with a :class:`SimulatedLabeler` (a gold scorer plus Bradley-Terry noise) and
trains a Bradley-Terry reward model on the rankings, initialised from the policy's own
backbone. Held-out rankings measure it against the only honest ceiling: how often a second,
independent simulated labeler agrees with the first on the same pairs. Every stage writes its
output atomically into ``work`` and is skipped when that output is already there, so a
killed run resumes. :func:`reward_model_metrics` is the pipeline's step 2: train (with
``--train-reward-model``) or load the reward model, then measure it on the held-out SFT samples of step 1.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reward_models import (
    HFRewardModel,
    PromptResponses,
    RewardModel,
    SimulatedLabeler,
    UpbeatGoldScorer,
    agreement,
    evaluate_preferences,
    load_collection,
    load_preferences,
    save_preferences,
)
from rlhf_common.io import DataError, portable_path, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import quiet_transformers
from rlhf_gym.collect import response_groups, sample_groups, unscored
from rlhf_gym.pipeline.context import RunContext
from text_env.prompts import load_prompts

__all__ = ["FeedbackConfig", "load_reward_model", "preference_labels", "reward_model_metrics", "simulated_feedback",
           "simulated_labels", "spearman"]


@dataclass
class FeedbackConfig:
    """How simulated feedback is collected and the reward model trained."""

    num_generations: int = 4
    """Responses sampled per prompt and ranked together (InstructGPT ranks 4 to 9)."""
    labeler_temperature: float = 0.2
    """Bradley-Terry noise of the simulated labeler: P(a > b) = sigmoid((gold_a - gold_b) / T)."""
    bias_per_char: float = 0.0
    """Systematic length bias of the labeler, added to the gold score per character."""
    flip_prob: float = 0.0
    """Probability that the labeler reverses a whole ranking."""
    val_fraction: float = 0.1
    """Share of prompts whose rankings are held out for validation."""
    max_new_tokens: int = 32
    """Response length cap while sampling (the default task's)."""
    max_prompt_tokens: int = 32
    """Prompt part of the window while sampling (the default task's); prompt + response must fit the model."""
    batch_size: int = 64
    """Episodes sampled together."""
    num_train_epochs: int = 1
    """Passes over the rankings (one, as InstructGPT: more overfits)."""
    learning_rate: float = 3e-4
    """Peak learning rate of the reward model."""
    rm_batch_size: int = 8
    """Rankings per optimiser step."""
    seed: int = 0
    """Seeds sampling, labelers, the split and training."""
    progress: bool = True
    """Show progress bars."""


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation, ties given their average rank."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x), dtype=np.float64)
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):  # average the ranks of tied values
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(np.asarray(a, dtype=np.float64)), ranks(np.asarray(b, dtype=np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


def simulated_feedback(
    policy_dir: str | Path, prompts: list[str], work: str | Path, config: FeedbackConfig | None = None
) -> dict[str, Any]:
    """Run step 2 for ``policy_dir`` on ``prompts`` in ``work``; return the reward model's record.

    The trained reward model is ``work/reward_model`` (a Hugging Face folder). The record
    holds its held-out accuracy, the labeler-agreement ceiling, the Spearman correlation
    of its scores with the gold scorer on held-out samples, and the data sizes.
    """
    from reward_models.train import RewardTrainConfig, train_reward_model  # only when a reward model is trained

    config = config or FeedbackConfig()
    work = Path(work)
    start = time.time()

    # 1-2. Sample responses per prompt from the policy, rank them with a simulated labeler.
    items, val_items = simulated_labels(policy_dir, prompts, work, config)
    collection = work / "collection.jsonl"
    val_labels, ceiling, gold_vs_labels = _label_quality(val_items, work, config)

    # 3. Bradley-Terry reward model from the policy's backbone, normalized on SFT samples.
    result = train_reward_model(RewardTrainConfig(
        model=str(policy_dir), data=str(work / "preferences_train.jsonl"), val_data=str(work / "preferences_val.jsonl"),
        out=str(work / "reward_model"), reference_data=str(collection), num_train_epochs=config.num_train_epochs,
        learning_rate=config.learning_rate, batch_size=config.rm_batch_size, seed=config.seed,
        progress=config.progress,
    ))

    # 4. Held-out agreement with the gold scorer on SFT samples the model never saw.
    rm = HFRewardModel(result.out)
    flat = [(it.prompt, r) for it in val_items for r in dict.fromkeys(it.responses)]
    prompts_v, responses_v = [p for p, _ in flat], [r for _, r in flat]
    proxy, gold = rm.score(prompts_v, responses_v), UpbeatGoldScorer().score(prompts_v, responses_v)
    record = {
        "config": asdict(config),
        "policy": portable_path(policy_dir),
        "prompts": len(items),
        "train_rankings": len(items) - len(val_items),
        "val_rankings": len(val_labels),
        "val_accuracy": round(result.val.accuracy, 4),
        "val_pairs": result.val.pairs,
        "ceiling_labeler_agreement": round(ceiling, 4),
        "gold_vs_labels_agreement": round(gold_vs_labels, 4),
        "spearman_vs_gold": round(spearman(proxy, gold), 4),
        "heldout_samples": len(flat),
        "normalization": asdict(result.normalization),
        "train_steps": result.steps,
        "seconds": round(time.time() - start, 1),
    }
    write_json_atomic(work / "feedback.json", record)
    return record


def _sample_collection(policy_dir: str | Path, prompts: list[str], collection: Path, config: FeedbackConfig) -> Path:
    """``config.num_generations`` samples of the policy per prompt in ``collection`` (kept when already there)."""
    if collection.is_file():
        return collection
    from agents.lm import load_causal_lm
    from text_env.defaults import default_task

    with quiet_transformers():
        model = load_causal_lm(policy_dir)
    task = default_task(model=policy_dir, prompts=prompts, reward_model=unscored(),
                        max_new_tokens=config.max_new_tokens, max_prompt_tokens=config.max_prompt_tokens)
    rows = []
    for batch in sample_groups(model, task, prompts, config.num_generations, batch_size=config.batch_size,
                               seed=config.seed, progress=config.progress, desc="sample for labeling"):
        rows += response_groups(batch.infos, config.num_generations)
    write_jsonl_atomic(collection, rows)
    return collection


def _split(items: list[PromptResponses], config: FeedbackConfig) -> tuple[list[PromptResponses], list[PromptResponses]]:
    """``(train, validation)`` items: a seeded shuffle holds ``val_fraction`` of the prompts out (at least one)."""
    split = list(range(len(items)))
    random.Random(config.seed).shuffle(split)
    n_val = max(1, int(len(items) * config.val_fraction))
    return [items[i] for i in sorted(split[n_val:])], [items[i] for i in sorted(split[:n_val])]


def _labeler(config: FeedbackConfig, seed: int) -> SimulatedLabeler:
    return SimulatedLabeler(temperature=config.labeler_temperature, bias_per_char=config.bias_per_char,
                            flip_prob=config.flip_prob, seed=seed)


def simulated_labels(policy_dir: str | Path, prompts: list[str], work: str | Path,
                     config: FeedbackConfig) -> tuple[list[PromptResponses], list[PromptResponses]]:
    """Sample and rank ``work/preferences_{train,val}.jsonl`` (once); ``(all items, validation items)``.

    The training labels are what a reward model (or DPO, which needs none) learns from; the
    validation prompts are held out by a seeded split.
    """
    work = Path(work)
    items = load_collection(_sample_collection(policy_dir, prompts, work / "collection.jsonl", config))
    train_items, val_items = _split(items, config)
    if not (work / "preferences_val.jsonl").is_file():  # written last: both exist
        save_preferences(work / "preferences_train.jsonl", _labeler(config, config.seed).label(train_items))
        save_preferences(work / "preferences_val.jsonl", _labeler(config, config.seed + 1).label(val_items))
    return items, val_items


def _label_quality(val_items: list[PromptResponses], work: Path,
                   config: FeedbackConfig) -> tuple[list[PromptResponses], float, float]:
    """``(validation labels, ceiling, labels' agreement with gold)`` of the labels in ``work``."""
    val_labels = load_preferences(work / "preferences_val.jsonl")
    ceiling = agreement(val_labels, _labeler(config, config.seed + 2).label(val_items))
    gold_vs_labels = agreement(val_labels, SimulatedLabeler(temperature=0.0).label(val_items))
    return val_labels, ceiling, gold_vs_labels


# ---- the pipeline's step 2 -------------------------------------------------------------------
def _feedback_config(ctx: RunContext) -> FeedbackConfig:
    cfg = ctx.config
    return FeedbackConfig(num_generations=cfg.num_generations, labeler_temperature=cfg.labeler_temperature,
                          max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, progress=cfg.progress)


def preference_labels(ctx: RunContext) -> dict[str, Any]:
    """Step 2 for agents that learn from the labels themselves (DPO, IPO): the simulated rankings.

    The same labels a reward model is trained on with ``--train-reward-model`` (already there
    then); without it they are sampled and ranked here, and no reward model is trained on them.
    """
    cfg = ctx.config
    prompts = load_prompts(ctx.setup["prompts"])[: cfg.rm_prompts]
    items, val_items = simulated_labels(ctx.setup["policy"], prompts, ctx.layout.feedback, _feedback_config(ctx))
    train = load_preferences(ctx.layout.preferences)
    return {"preferences": portable_path(ctx.layout.preferences), "rankings": len(train),
            "pairs": sum(len(item.pairs()) for item in train), "heldout_prompts": len(val_items),
            "num_generations": cfg.num_generations, "labeler_temperature": cfg.labeler_temperature}


def load_reward_model(ctx: RunContext) -> RewardModel:
    """The run's reward model: trained in step 2, a given folder, or the default task's."""
    from text_env.defaults import default_task

    with quiet_transformers():
        if ctx.config.train_reward_model:
            return HFRewardModel(ctx.layout.feedback / "reward_model")
        if ctx.setup["reward_model_path"]:
            return HFRewardModel(ctx.setup["reward_model_path"])
        return default_task().reward_model


def reward_model_metrics(ctx: RunContext) -> dict[str, Any]:
    """Step 2: train (or load) the reward model; its held-out accuracy against the labelers' ceiling."""
    cfg, layout = ctx.config, ctx.layout
    training = None
    if cfg.train_reward_model:
        prompts = load_prompts(ctx.setup["prompts"])[: cfg.rm_prompts]
        training = simulated_feedback(ctx.setup["policy"], prompts, layout.feedback, _feedback_config(ctx))
    rm = load_reward_model(ctx)
    gold = ctx.task(unscored()).gold_scorer
    items = [PromptResponses(i.prompt, i.responses) for i in load_collection(layout.reference_samples)]

    def labeler(seed: int, temperature: float) -> SimulatedLabeler:
        return SimulatedLabeler(gold=gold, temperature=temperature, seed=seed)

    # Held-out SFT samples of the evaluation prompts, ranked by two independent labelers and by gold.
    labels = labeler(cfg.seed + 11, cfg.labeler_temperature).label(items)
    second = labeler(cfg.seed + 12, cfg.labeler_temperature).label(items)
    gold_order = labeler(cfg.seed, 0.0).label(items)
    if not labels:
        raise DataError(f"{layout.reference_samples}: no prompt has two distinct SFT samples to rank.")
    save_preferences(layout.root / "step2_heldout_labels.jsonl", labels)
    metrics = evaluate_preferences(rm, labels)
    flat = [(it.prompt, r) for it in labels for r in it.responses]
    scores = rm.score([p for p, _ in flat], [r for _, r in flat])
    source = (f"Trained in step 2 on {training['train_rankings']} simulated rankings of {cfg.num_generations} "
              "SFT samples" if training else f"Loaded: {ctx.setup['reward_model']}")
    return {"source": source, "accuracy": metrics.accuracy, "margin": metrics.margin, "pairs": metrics.pairs,
            "prompts": len(labels), "ceiling": agreement(labels, second),
            "gold_accuracy": evaluate_preferences(rm, gold_order).accuracy,
            "labeler_gold_agreement": agreement(labels, gold_order),
            "labeler_temperature": cfg.labeler_temperature,
            "proxy_mean": float(scores.mean()), "proxy_std": float(scores.std()), "training": training}
