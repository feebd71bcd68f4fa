"""Held-out measurements of step 3: a policy's gold score, proxy score and KL; best-of-n from the SFT policy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from agents.best_of_n import best_of_n_kl, best_of_n_mean
from agents.ppo_utils import kl_per_response
from agents.scoring import response_logprobs
from rlhf_gym.collect import response_groups, sample_groups
from text_env import Task

__all__ = ["best_of_n_curve", "evaluate_policy"]


@torch.no_grad()
def evaluate_policy(
    model: Any,
    reference: Any,
    task: Task,
    prompts: Sequence[str],
    samples: int = 4,
    *,
    batch_size: int = 64,
    seed: int = 0,
    n_show: int = 5,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict[str, Any]:
    """Gold score, proxy score and KL to ``reference`` of ``model``'s samples on ``prompts``.

    KL is per response: the sum over its tokens of ``log pi - log pi_ref`` (k1, unbiased;
    ``kl_k3`` is the never-negative k3 estimate, docs/ppo_details.md #4), averaged over
    responses, at temperature 1. ``samples`` lists the first response to each of the first
    ``n_show`` prompts.
    """
    if task.gold_scorer is None:
        raise ValueError(f"task {task.name!r} has no gold_scorer; evaluation reports the gold score.")
    gold, proxy, kl1, kl3, length, eos, shown = [], [], [], [], [], [], []
    for batch in sample_groups(model, task, prompts, samples, batch_size=batch_size, seed=seed,
                               progress=progress, desc=desc):
        mask = batch.response_mask.float()  # (B, T)
        ref = response_logprobs(reference, batch, 1.0, task.vocab_size).logprobs  # (B, T)
        kl1 += kl_per_response(batch.logprobs, ref, mask, "k1").tolist()
        kl3 += kl_per_response(batch.logprobs, ref, mask, "k3").tolist()
        gold += batch.gold_scores.tolist()
        proxy += batch.scores.tolist()
        length += batch.lengths.tolist()
        eos += batch.ended_by_eos.tolist()
        for info in batch.infos[::samples]:
            if len(shown) < n_show:
                shown.append({"prompt": info["prompt"], "response": info["response"], "gold": info["gold_score"],
                              "proxy": info["score"]})
    return {
        "gold": float(np.mean(gold)), "gold_sem": float(np.std(gold) / math.sqrt(len(gold))),
        "proxy": float(np.mean(proxy)), "kl": float(np.mean(kl1)), "kl_k3": float(np.mean(kl3)),
        "response_length": float(np.mean(length)), "eos_fraction": float(np.mean(eos)),
        "episodes": len(gold), "samples": shown,
    }


@torch.no_grad()
def best_of_n_curve(
    reference: Any,
    task: Task,
    prompts: Sequence[str],
    max_n: int = 64,
    *,
    batch_size: int = 128,
    seed: int = 0,
    n_show: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Best-of-n from ``reference`` on ``prompts`` for n = 1 .. ``max_n``, from one set of samples.

    ``max_n`` responses are sampled per prompt once; for each n the gold and proxy scores
    of the reward model's favourite are averaged over every n-subset of them (the unbiased
    estimator :func:`agents.best_of_n.best_of_n_mean`, docs/ppo_details.md #16). ``curve``
    holds n = 1, 2, 4, ..., ``max_n`` for tables and plots, ``dense`` every n, to match an
    agent's KL (:func:`agents.best_of_n.matched_best_of_n`). KL(best-of-n || reference) is
    the analytic ln n - (n - 1) / n.
    """
    proxy, gold, length, eos, groups = [], [], [], [], []
    for batch in sample_groups(reference, task, prompts, max_n, batch_size=max(batch_size, max_n), seed=seed,
                               progress=progress, desc="best-of-n samples"):
        proxy.append(batch.scores.reshape(-1, max_n))  # (prompts in batch, max_n)
        gold.append(batch.gold_scores.reshape(-1, max_n))
        length.append(batch.lengths.cpu().numpy().reshape(-1, max_n))
        eos.append(batch.ended_by_eos.reshape(-1, max_n))
        groups += response_groups(batch.infos, max_n)  # rendered prompts (conversations too) and their samples
    proxy_a, gold_a, length_a = np.concatenate(proxy), np.concatenate(gold), np.concatenate(length)  # (P, max_n)
    dense = [{"n": n, "kl": best_of_n_kl(n), "gold": best_of_n_mean(proxy_a, gold_a, n),
              "proxy": best_of_n_mean(proxy_a, proxy_a, n)} for n in range(1, max_n + 1)]
    curve = [{**r, "response_length": best_of_n_mean(proxy_a, length_a, r["n"]), "episodes": int(proxy_a.size)}
             for r in dense if r["n"] & (r["n"] - 1) == 0]  # n = 1, 2, 4, ..., max_n
    best_all = proxy_a.argmax(1)  # (P,)
    shown = [{"prompt": groups[p]["prompt"], "response": groups[p]["responses"][0], "gold": float(gold_a[p, 0]),
              "best_response": groups[p]["responses"][best_all[p]], "best_gold": float(gold_a[p, best_all[p]])}
             for p in range(min(n_show, len(prompts)))]
    return {"max_n": max_n, "prompts": len(prompts), "curve": curve, "dense": dense, "samples": shown,
            "reference": {"gold": float(gold_a.mean()), "proxy": float(proxy_a.mean()),
                          "response_length": float(length_a.mean()), "eos_fraction": float(np.concatenate(eos).mean())}}
