"""Online DPO: learns on the count task, a huge beta stays at the reference, ties are skipped, resume, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm
from test_dpo import check_resume_equals_uninterrupted

from agents import OnlineDPO, OnlineDPOConfig

torch.set_num_threads(1)


def progress(log_dir: Path) -> list[dict[str, float]]:
    with open(log_dir / "progress.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def make_agent(log_dir: Path, **overrides) -> OnlineDPO:
    task = count_task()
    config = OnlineDPOConfig(**{"batch_size": 32, "learning_rate": 3e-3, "save_steps": 0, "log_dir": str(log_dir),
                                **overrides})
    return OnlineDPO(task, tiny_lm(task), config)


def test_online_dpo_learns_count_task_and_ipo_with_a_huge_beta_stays_at_the_reference(tmp_path):
    make_agent(tmp_path / "dpo").learn(4000, progress_bar=False)
    rows = progress(tmp_path / "dpo")
    late = np.mean([r["score"] for r in rows[-3:]])
    # IPO's target margin 1 / (2 beta) -> 0 holds the policy at the reference. DPO's loss on rankings without
    # noise is minimised by an unbounded margin at any beta (Azar et al. 2023, sec. 4.2), and Adam undoes beta's
    # scale of the gradient: a huge beta only slows it (offline: tests/test_dpo.py).
    make_agent(tmp_path / "huge", loss_type="ipo", beta=1e4).learn(4000, progress_bar=False)
    huge = progress(tmp_path / "huge")
    print(f"\nonline DPO: {len(rows)} iterations, score {rows[0]['score']:.2f} -> {late:.2f}, KL {rows[-1]['kl']:.2f};"
          f" IPO beta 1e4: KL {max(r['kl'] for r in huge):.3f}, ties {sum(r['tied_pairs'] for r in rows):.0f}")
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5) and rows[0]["score"] < 1.5 and late > 3.0
    for key in ("loss", "rewards_chosen", "rewards_rejected", "rewards_accuracies", "rewards_margins", "kl_k3",
                "entropy", "grad_norm", "tied_pairs", "scores_margin"):
        assert key in rows[-1], key
    assert max(r["kl"] for r in huge) < 0.2 and rows[-1]["kl"] > 1.0


def test_ties_are_skipped(tmp_path):
    task = count_task(prompts=["b"])
    task.reward_model.score = lambda prompts, responses: np.zeros(len(prompts))  # every pair ties
    agent = OnlineDPO(task, tiny_lm(task), OnlineDPOConfig(batch_size=8, log_dir=str(tmp_path), save_steps=0))
    before = [p.clone() for p in agent.policy.parameters()]
    agent.learn(1, progress_bar=False)
    (row,) = progress(tmp_path)
    assert row["tied_pairs"] == 4 and "loss" not in row
    assert all(torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    check_resume_equals_uninterrupted(OnlineDPO, lambda d: make_agent(d, save_steps=1, batch_size=8), tmp_path, 2,
                                      200, monkeypatch)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size=7 must be even"):
        OnlineDPOConfig(batch_size=7, num_mini_batches=1)
    with pytest.raises(ValueError, match="num_mini_batches=8 must be <= the 4 pairs"):
        OnlineDPOConfig(batch_size=8, num_mini_batches=8)
    with pytest.raises(ValueError, match="loss_type='dpo' is unknown"):
        OnlineDPOConfig(loss_type="dpo")
    with pytest.raises(ValueError, match="beta=0.0 must be > 0"):
        OnlineDPOConfig(beta=0.0)
