"""RLHF step 2 on simulated feedback: sample, rank with a simulated labeler, train, measure.

K responses per prompt are sampled from a policy, ranked by a :class:`SimulatedLabeler`
(a gold scorer plus Bradley-Terry noise), and a Bradley-Terry reward model is trained on
the rankings, initialised from the policy's own backbone. Held-out rankings measure it
against the only honest ceiling: how often a second, independent simulated labeler
agrees with the first on the same pairs. Every stage writes its output atomically into
``work`` and is skipped when that output is already there, so a killed run resumes.
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
    RewardTrainConfig,
    SimulatedLabeler,
    UpbeatGoldScorer,
    agreement,
    load_collection,
    load_preferences,
    save_preferences,
    train_reward_model,
)
from rlhf_common.io import portable_path, write_json_atomic, write_jsonl_atomic


@dataclass
class FeedbackConfig:
    """How simulated feedback is collected and the reward model trained."""

    k: int = 4
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
    epochs: int = 1
    """Passes over the rankings (one, as InstructGPT: more overfits)."""
    lr: float = 3e-4
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
    from rlhf_gym.collect import sample_groups, unscored
    from text_env.defaults import default_task

    config = config or FeedbackConfig()
    work = Path(work)
    start = time.time()

    # 1. Sample K responses per prompt from the policy (the SFT samples labelers see).
    collection = work / "collection.jsonl"
    if not collection.is_file():
        from agents.lm import load_causal_lm
        from rlhf_common.training import quiet_transformers

        with quiet_transformers():
            model = load_causal_lm(policy_dir)
        task = default_task(model=policy_dir, prompts=prompts, reward_model=unscored(),
                            max_new_tokens=config.max_new_tokens, max_prompt_tokens=config.max_prompt_tokens)
        rows = []
        for batch in sample_groups(model, task, prompts, config.k, batch_size=config.batch_size,
                                   seed=config.seed, progress=config.progress, desc="sample for labeling"):
            for g in range(0, len(batch.infos), config.k):
                group = batch.infos[g : g + config.k]
                rows.append({"prompt": group[0]["prompt"], "responses": [i["response"] for i in group]})
        write_jsonl_atomic(collection, rows)
    items = load_collection(collection)

    # 2. Rank with a simulated labeler; a second, independent one gives the ceiling.
    train_path, val_path = work / "preferences_train.jsonl", work / "preferences_val.jsonl"
    split = list(range(len(items)))
    random.Random(config.seed).shuffle(split)
    n_val = max(1, int(len(items) * config.val_fraction))
    val_items = [items[i] for i in sorted(split[:n_val])]
    train_items = [items[i] for i in sorted(split[n_val:])]

    def labeler(seed: int) -> SimulatedLabeler:
        return SimulatedLabeler(temperature=config.labeler_temperature, bias_per_char=config.bias_per_char,
                                flip_prob=config.flip_prob, seed=seed)

    if not val_path.is_file():
        save_preferences(train_path, labeler(config.seed).label(train_items))
        save_preferences(val_path, labeler(config.seed + 1).label(val_items))
    val_labels = load_preferences(val_path)
    ceiling = agreement(val_labels, labeler(config.seed + 2).label(val_items))
    gold_vs_labels = agreement(val_labels, SimulatedLabeler(temperature=0.0).label(val_items))

    # 3. Bradley-Terry reward model from the policy's backbone, normalised on SFT samples.
    result = train_reward_model(RewardTrainConfig(
        model=str(policy_dir), data=str(train_path), val_data=str(val_path), out=str(work / "reward_model"),
        reference_data=str(collection), epochs=config.epochs, lr=config.lr, batch_size=config.rm_batch_size,
        seed=config.seed, progress=config.progress,
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
        "train_rankings": len(train_items),
        "val_rankings": len(val_labels),
        "val_accuracy": round(result.val.accuracy, 4),
        "val_pairs": result.val.pairs,
        "ceiling_labeler_agreement": round(ceiling, 4),
        "gold_vs_labels_agreement": round(gold_vs_labels, 4),
        "spearman_vs_gold": round(spearman(proxy, gold), 4),
        "heldout_samples": len(flat),
        "normalisation": asdict(result.normalisation),
        "train_steps": result.steps,
        "seconds": round(time.time() - start, 1),
    }
    write_json_atomic(work / "feedback.json", record)
    return record

