"""REINFORCE++ and its baseline variant: advantages as OpenRLHF computes them, learning, KL anchor, resume, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm
from test_grpo import check_resume_equals_uninterrupted
from test_ppo_kl import progress

from agents import ReinforcePP, ReinforcePPConfig
from agents.registry import build_config, get_agent
from agents.reinforce_pp import cli

torch.set_num_threads(1)
BASE = dict(batch_size=32, num_mini_batches=2, learning_rate=3e-3, save_steps=0)


def make_agent(tmp_path: Path, name: str = "run", **overrides) -> ReinforcePP:
    task = count_task()
    return ReinforcePP(task, tiny_lm(task), ReinforcePPConfig(**{**BASE, "log_dir": str(tmp_path / name), **overrides}))


@pytest.mark.parametrize("baseline", [False, True])
def test_advantages_are_openrlhf_whitened_returns(tmp_path, monkeypatch, baseline):
    # OpenRLHF (openrlhf/trainer/ppo_utils/experience_maker.py): token reward -beta * k1, the score (less its
    # group mean for reinforce_baseline) on the last token, returns summed to the end, whitened over all tokens.
    agent = make_agent(tmp_path, baseline=baseline, num_generations=4, beta=0.3, gamma=0.9)
    seen = {}

    def capture(batch, advantages, loss_mask, kl, passes, reshuffle):
        seen.update(batch=batch, advantages=advantages, kl=kl, passes=passes, reshuffle=reshuffle)
        return {}

    monkeypatch.setattr(agent, "_clipped_update", capture)
    agent.learn(1, progress_bar=False)
    batch = seen["batch"]
    ref = agent._reference_logprobs(batch).double().numpy()
    logp, mask = batch.logprobs.double().numpy(), batch.response_mask.numpy().astype(bool)
    score = batch.rewards.copy()
    if baseline:
        score -= np.repeat(score.reshape(-1, 4).mean(1), 4)
    expected = []
    for i in range(len(score)):
        n = mask[i].sum()
        rewards = -0.3 * (logp[i, :n] - ref[i, :n])
        rewards[-1] += score[i]
        returns = np.zeros(n)
        running = 0.0
        for t in reversed(range(n)):
            running = rewards[t] + 0.9 * running
            returns[t] = running
        expected.append(returns)
    flat = np.concatenate(expected)
    whitened = (flat - flat.mean()) / flat.std(ddof=1)
    assert np.allclose(seen["advantages"].double().numpy()[mask], whitened, atol=1e-4)
    assert seen["kl"] is None and seen["passes"] == 1 and seen["reshuffle"]


@pytest.mark.parametrize("baseline", [False, True])
def test_learns_count_task(tmp_path, baseline):
    make_agent(tmp_path, baseline=baseline, num_generations=4 if baseline else 1).learn(2500, progress_bar=False)
    rows = progress(tmp_path / "run")
    late = np.mean([r["score"] for r in rows[-3:]])
    print(f"REINFORCE++{'-baseline' if baseline else ''}: {len(rows)} iterations, score {rows[0]['score']:.2f} -> "
          f"{late:.2f}, KL {rows[-1]['kl']:.2f}")
    assert rows[0]["score"] < 1.5 and late > rows[0]["score"] + 1.5
    for key in ("kl", "kl_k1", "kl_k3", "beta", "entropy", "grad_norm", "policy_loss", "clip_ratio_low", "approx_kl"):
        assert key in rows[-1], key


def test_huge_beta_keeps_policy_at_reference(tmp_path):
    make_agent(tmp_path, beta=100.0, learning_rate=1e-3).learn(1500, progress_bar=False)
    rows = progress(tmp_path / "run")
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert max(abs(r["kl"]) for r in rows) < 0.5
    assert np.mean([r["score"] for r in rows[-3:]]) < 2.0


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    check_resume_equals_uninterrupted(tmp_path, monkeypatch, make_agent, num_ppo_epochs=2, baseline=True,
                                      num_generations=4)


@pytest.mark.parametrize("settings, message", [
    (dict(baseline=True, num_generations=1), "num_generations=1 must be >= 2 and divide batch_size=32"),
    (dict(num_generations=3), "num_generations=3 must be >= 1 and divide batch_size=32"),
    (dict(beta=-1.0), "beta=-1.0 must be >= 0"),
    (dict(loss_type="token"), "loss_type='token' is unknown"),
    (dict(epsilon=-0.1), "epsilon=-0.1 and epsilon_high=None must be >= 0"),
    (dict(kl_estimator="k4"), "kl_estimator='k4'"),
    (dict(gamma=1.5), r"gamma=1.5 must be in \[0, 1\]"),
    (dict(num_ppo_epochs=0), "num_ppo_epochs=0 >= 1"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        ReinforcePPConfig(**{**BASE, **settings})


def test_both_variants_are_registered_and_the_cli_has_their_flags(tmp_path, capsys):
    common = {"batch_size": 16, "beta": 0.05, "num_generations": 4, "log_dir": str(tmp_path)}
    plain = build_config(get_agent("reinforce_pp"), common)
    with_baseline = build_config(get_agent("reinforce_pp_baseline"), common)
    assert (plain.baseline, plain.num_generations, plain.beta) == (False, 1, 0.05)
    assert (with_baseline.baseline, with_baseline.num_generations) == (True, 4)
    assert get_agent("reinforce_pp").cls is get_agent("reinforce_pp_baseline").cls is ReinforcePP
    with pytest.raises(SystemExit) as exit_:
        cli(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--baseline", "--gamma", "--kl-estimator", "--epsilon-high", "--num-ppo-epochs"):
        assert flag in out
