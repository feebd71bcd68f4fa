"""Step 1 of the pipeline: the SFT policy's metrics, from its model card and from its held-out samples.

The policy samples ``num_generations`` responses to each evaluation prompt; they are kept
(``step1_reference_samples.jsonl``, with gold scores) as the held-out items step 2 ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_common.io import write_jsonl_atomic
from rlhf_gym.collect import response_groups, sample_groups, unscored
from rlhf_gym.pipeline.context import RunContext

__all__ = ["sft_metrics"]


def sft_metrics(ctx: RunContext) -> dict[str, Any]:
    """Step 1: the model card's SFT metrics (when there is one) and the policy's held-out samples."""
    cfg, setup = ctx.config, ctx.setup
    task = ctx.task(unscored())  # no reward model yet: only the gold scorer is used
    rows, gold, length, eos = [], [], [], []
    for batch in sample_groups(ctx.reference, task, ctx.eval_prompts, cfg.num_generations, batch_size=cfg.batch_size,
                               seed=cfg.seed + 1, progress=cfg.progress, desc="step 1: SFT samples"):
        gold += batch.gold_scores.tolist()
        length += batch.lengths.tolist()
        eos += batch.ended_by_eos.tolist()
        rows += response_groups(batch.infos, cfg.num_generations, gold="gold_score")
    write_jsonl_atomic(ctx.layout.reference_samples, rows)
    card = None
    if setup["model_card"]:
        sft = json.loads(Path(setup["model_card"]).read_text(encoding="utf-8")).get("sft")
        if sft:
            card = {"val_loss": sft["val_loss"], "val_perplexity": sft["val_perplexity"], "steps": sft["steps"]}
    return {"model_card": card, "gold_scorer": repr(task.gold_scorer), "prompts": len(rows),
            "num_generations": cfg.num_generations, "samples": len(gold),
            "gold": float(np.mean(gold)), "gold_std": float(np.std(gold)),
            "response_length": float(np.mean(length)), "eos_fraction": float(np.mean(eos))}
