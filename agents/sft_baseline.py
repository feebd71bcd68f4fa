"""The SFT baseline: what the fine-tuned policy scores before any RL.

:func:`agents.sft.train_sft` samples the best model on evaluation prompts the way RL
rollouts do (temperature 1, no top-k/top-p) and records the mean score in
``OUT/baseline.json``: the number later RL must beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from agents.lm import load_causal_lm
from reward_models import RewardModel, checked_scores


@torch.no_grad()
def sample_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """Sample one response per prompt (temperature 1, no top-k/top-p), without EOS or padding.

    Pure sampling is what RL rollouts use, so the baseline score is comparable with theirs.
    The global torch RNG is left as it was.
    """
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    context = getattr(model.config, "max_position_embeddings", None) or 1_000_000
    keep = max(context - max_new_tokens, 1)  # a prompt's last tokens, so prompt + response fit
    responses: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            encoded = [tokenizer(p)["input_ids"][-keep:] for p in prompts[i : i + batch_size]]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)  # (B, P) left-padded
            attention_mask = torch.zeros_like(input_ids)
            for j, ids in enumerate(encoded):
                input_ids[j, width - len(ids) :] = torch.tensor(ids)
                attention_mask[j, width - len(ids) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=min(max_new_tokens, context - width),
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )  # (B, P + new)
            for row in out[:, width:].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                responses.append(
                    tokenizer.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                )
    return responses


def score_baseline(
    model_dir: str | Path, tokenizer: Any, scorer: RewardModel, prompts: Sequence[str], max_new_tokens: int,
    seed: int, device: Any,
) -> tuple[float, list[dict[str, Any]]]:
    """Mean ``scorer`` score of one sampled response per prompt, and the first five ``{prompt, response, score}``."""
    best = load_causal_lm(model_dir, device=device)
    responses = sample_responses(best, tokenizer, prompts, max_new_tokens, seed)
    scores = checked_scores(scorer, list(prompts), responses)
    samples = [
        {"prompt": p, "response": r, "score": float(s)}
        for p, r, s in list(zip(prompts, responses, scores, strict=True))[:5]
    ]
    return float(scores.mean()), samples
