"""Ray rollout workers on a local 2-CPU cluster: the same batches and learning curve as one process."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm

from agents import PPOKL, PPOKLConfig
from agents.lora import LoraSettings, add_lora
from agents.ray_rollout import RolloutPool, merge_batches
from agents.rollout import make_rollout_env, rollout

ray = pytest.importorskip("ray")
torch.set_num_threads(1)
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Workers import rl_helpers (the count task's reward function is pickled by reference).
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def progress(log_dir: Path) -> list[dict[str, float]]:
    with open(log_dir / "progress.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_two_workers_generate_the_single_process_batch():
    task, seed = count_task(max_new_tokens=10, prompts=["a", "bb", "ababab", "b"], max_prompt_tokens=8), 123
    model = tiny_lm(task)
    pool = RolloutPool(task, model, num_workers=2, batch_size=16)
    for group_size in (1, 4):
        local = rollout(model, make_rollout_env(task, 16), seed=seed, group_size=group_size)
        merged = pool.rollout(1.0, seed, group_size=group_size)
        assert local.prompt_mask.sum(1).unique().numel() > 1  # left padding is exercised
        assert torch.equal(merged.prompt_ids, local.prompt_ids) and torch.equal(merged.prompt_mask, local.prompt_mask)
        assert torch.equal(merged.response_ids, local.response_ids)
        assert torch.equal(merged.response_mask, local.response_mask)
        assert torch.allclose(merged.logprobs, local.logprobs, atol=1e-6)
        assert np.array_equal(merged.rewards, local.rewards) and merged.infos == local.infos
    # Weight sync: after the learner's weights change, the workers sample from the new ones.
    before = pool.rollout(1.0, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    pool.sync(model)
    synced = pool.rollout(1.0, seed)
    assert torch.equal(synced.response_ids, rollout(model, make_rollout_env(task, 16), seed=seed).response_ids)
    assert not torch.allclose(synced.logprobs[:, :1], before.logprobs[:, :1])
    pool.close()


def test_ppokl_with_two_workers_follows_the_single_process_learning_curve(tmp_path):
    curves = {}
    for workers in (0, 2):
        task = count_task()
        config = PPOKLConfig(batch_size=32, num_mini_batches=2, learning_rate=1e-3, beta=0.05, kl_target=None,
                             save_steps=0, rollout_workers=workers, log_dir=str(tmp_path / f"w{workers}"))
        agent = PPOKL(task, policy=tiny_lm(task), config=config).learn(2500, progress_bar=False)
        curves[workers] = progress(tmp_path / f"w{workers}")
        if workers:
            agent.rollout_pool.close()
    local, remote = curves[0], curves[2]
    print("score local ", [round(r["score"], 2) for r in local])
    print("score 2 workers", [round(r["score"], 2) for r in remote])
    assert len(local) == len(remote)
    assert remote[0]["score"] == local[0]["score"]  # the same first batch
    assert abs(remote[0]["kl"]) < 1e-5 and abs(local[0]["kl"]) < 1e-5  # policy == reference, up to rounding
    for key in ("score", "kl", "response_length", "clipfrac"):
        assert np.mean([r[key] for r in remote]) == pytest.approx(np.mean([r[key] for r in local]), rel=0.05, abs=0.02)
    assert np.mean([r["score"] for r in remote[-3:]]) > local[0]["score"] + 2  # the workers learned along


def test_lora_workers_receive_only_the_adapters():
    task = count_task()
    policy = add_lora(tiny_lm(task), LoraSettings(r=2))
    pool = RolloutPool(task, policy, num_workers=2, batch_size=8)
    sent = {}
    original = ray.put

    def spy(value, **kwargs):
        if isinstance(value, dict):
            sent.update(value)
        return original(value, **kwargs)

    ray.put = spy
    try:
        pool.sync(policy)
    finally:
        ray.put = original
    assert sent and all("lora_" in name for name in sent)
    before = pool.rollout(1.0, 7)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p))
    pool.sync(policy)
    after = pool.rollout(1.0, 7)
    expected = rollout(policy, make_rollout_env(task, 8), seed=7)
    assert torch.equal(after.response_ids, expected.response_ids) and not torch.equal(after.logprobs, before.logprobs)
    pool.close()


def test_merge_pads_like_one_rollout_and_keeps_masks():
    task = count_task()
    model = tiny_lm(task)
    env = make_rollout_env(task, 4)
    a, b = rollout(model, env, seed=0), rollout(model, env, seed=4)
    whole = rollout(model, make_rollout_env(task, 8), seed=0)
    merged = merge_batches([a, b], task.pad_token_id)
    assert torch.equal(merged.response_ids, whole.response_ids) and torch.equal(merged.prompt_ids, whole.prompt_ids)
    masks = [x.__class__(**{**x.__dict__, "action_masks": torch.zeros(4, x.response_ids.shape[1], 6, dtype=torch.bool)})
             for x in (a, b)]
    merged = merge_batches(masks, task.pad_token_id)
    width = merged.response_ids.shape[1]
    assert merged.action_masks.shape == (8, width, 6)
    for i, x in enumerate(masks):  # padded steps allow every token, as a finished episode does
        t = x.response_ids.shape[1]
        assert merged.action_masks[4 * i : 4 * i + 4, t:].all() and not merged.action_masks[4 * i : 4 * i + 4, :t].any()
