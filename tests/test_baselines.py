"""Baselines with the PPOKL surface: RLOO learns, best-of-n keeps the max, random and reference sample."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm

from agents import RLOO, AgentConfig, BestOfN, BestOfNConfig, RandomAgent, ReferenceAgent, RLOOConfig
from agents.best_of_n import best_of_n_kl, best_of_n_mean
from agents.rollout import rollout
from text_env import TextGenerationEnv

torch.set_num_threads(1)


def progress(log_dir: Path) -> list[dict[str, float]]:
    with open(log_dir / "progress.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def play(agent, task, seed=0):
    """One episode in a single env through predict(); returns the final reward and info."""
    env = TextGenerationEnv(task)
    obs, info = env.reset(seed=seed)
    state, done = None, False
    while not done:
        action, state = agent.predict(obs, state, action_masks=info.get("action_mask"))
        obs, reward, done, _, info = env.step(action)
    return reward, info


def test_rloo_learns_count_task(tmp_path):
    task = count_task()
    config = RLOOConfig(batch_size=32, num_mini_batches=2, num_generations=4, learning_rate=3e-3, beta=0.0,
                        log_dir=str(tmp_path / "rloo"), save_steps=0)
    agent = RLOO(task, tiny_lm(task), config).learn(6000, progress_bar=False)
    rows = progress(tmp_path / "rloo")
    late = np.mean([r["score"] for r in rows[-3:]])
    print(f"RLOO: {len(rows)} iterations, score {rows[0]['score']:.2f} -> {late:.2f}")
    assert rows[0]["score"] < 1.5 and late > 3.0
    # Policy == reference at first: rollout and reference log-probs agree up to float rounding.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5) and rows[-1]["kl"] > 0.5
    saved = tmp_path / "saved"
    agent.save(saved)
    loaded = RLOO.load(saved, task)
    assert all(torch.equal(a, b) for a, b in zip(agent.policy.parameters(), loaded.policy.parameters(), strict=True))


def test_rloo_needs_groups():
    with pytest.raises(ValueError, match="num_generations=3"):
        RLOOConfig(batch_size=32, num_generations=3)


def test_best_of_n_keeps_the_max(tmp_path):
    task = count_task()
    agent = BestOfN(task, tiny_lm(task), BestOfNConfig(batch_size=32, num_generations=8, log_dir=str(tmp_path / "bon")))
    batch = rollout(agent.policy, agent.env, group_size=8, seed=0)
    keep = agent.best(batch)
    groups = batch.rewards.reshape(4, 8)
    assert (batch.rewards[keep] == groups.max(1)).all()
    assert all(batch.infos[k]["prompt"] == batch.infos[g * 8]["prompt"] for g, k in enumerate(keep))

    agent.learn(1000, progress_bar=False)
    rows = progress(tmp_path / "bon")
    assert all(r["kl"] == pytest.approx(math.log(8) - 7 / 8, rel=1e-5) for r in rows)  # CSV keeps 6 digits
    assert np.mean([r["score"] for r in rows]) > np.mean([r["sample_score"] for r in rows]) + 0.5
    assert best_of_n_kl(4) == pytest.approx(0.636, abs=1e-3) and best_of_n_kl(1) == 0.0


def test_best_of_n_mean_is_the_kept_sample_with_n_samples_and_a_subset_average_with_more():
    proxy = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.7]])
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert best_of_n_mean(proxy, values, 3) == (2.0 + 6.0) / 2  # each row's proxy favourite
    assert best_of_n_mean(proxy, values, 1) == pytest.approx(values.mean())  # n = 1: every sample
    # n = 2 of 3: the favourite of each pair, averaged over the three pairs of each row.
    assert best_of_n_mean(proxy, values, 2) == pytest.approx(((2 + 3 + 2) / 3 + (4 + 6 + 6) / 3) / 2)


def test_best_of_n_predict_plays_a_planned_response():
    task = count_task()
    agent = BestOfN(task, tiny_lm(task), BestOfNConfig(batch_size=16, num_generations=16))
    rewards = [play(agent, task, seed)[0] for seed in range(4)]
    reference = ReferenceAgent(task, agent.policy, AgentConfig(batch_size=16))
    baseline = [play(reference, task, seed)[0] for seed in range(8)]
    assert np.mean(rewards) > np.mean(baseline)


def test_random_agent_is_uniform_over_allowed_tokens(tmp_path):
    task = count_task()
    agent = RandomAgent(task, AgentConfig(batch_size=16, log_dir=str(tmp_path / "random")))
    obs = {"input_ids": np.zeros((4000, 3), dtype=np.int64), "attention_mask": np.ones((4000, 3), dtype=np.int64)}
    allowed = np.zeros((4000, task.vocab_size), dtype=bool)
    allowed[:, [2, 4]] = True
    actions, _ = agent.predict(obs, action_masks=allowed)
    assert set(actions.tolist()) == {2, 4} and abs((actions == 4).mean() - 0.5) < 0.05
    counts = np.bincount(agent.predict(obs)[0], minlength=task.vocab_size)
    assert counts.min() > 4000 / task.vocab_size * 0.8
    agent.learn(200, progress_bar=False)
    assert progress(tmp_path / "random")[0]["response_length"] > 0


def test_reference_agent_samples_the_policy(tmp_path):
    task = count_task()
    policy = tiny_lm(task)
    agent = ReferenceAgent(task, policy, AgentConfig(batch_size=16, log_dir=str(tmp_path / "ref")))
    assert agent.reference is None and agent.policy is policy
    agent.learn(200, progress_bar=False)
    rows = progress(tmp_path / "ref")
    assert {"score", "response_length", "eos_fraction", "episodes_per_second"} <= set(rows[0])
    reward, info = play(agent, task)
    assert reward == info["response"].count("a")
    agent.save(tmp_path / "saved")
    loaded = ReferenceAgent.load(tmp_path / "saved", task)
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), loaded.policy.parameters(), strict=True))


def test_no_policy_for_a_task_without_a_default_is_refused(tmp_path):
    """The embedded RLHFText-v0 policy over another tokenizer would write nonsense: a clear error instead."""
    with pytest.raises(ValueError, match="names no default_policy"):
        ReferenceAgent(count_task(), None, AgentConfig(log_dir=str(tmp_path), save_steps=0))
