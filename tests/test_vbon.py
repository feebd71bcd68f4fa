"""vBoN (variational best-of-n): the CDF estimator, learning, beta from n, resume with its cache, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from rl_helpers import count_task, tiny_lm

from agents import VBoN, VBoNConfig
from agents.registry import build_config, get_agent
from agents.vbon import REFERENCE_SCORES_FILE, log_cdf
from rlhf_gym.pipeline.config import PipelineConfig

torch.set_num_threads(1)
BASE = dict(batch_size=32, num_mini_batches=2, learning_rate=1e-3, reference_samples=16, save_steps=0)


def make_agent(log_dir: Path, **overrides) -> VBoN:
    task = count_task()
    return VBoN(task, tiny_lm(task), VBoNConfig(**{**BASE, "log_dir": str(log_dir), **overrides}))


def progress(log_dir: Path) -> list[dict[str, float]]:
    with open(log_dir / "progress.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_log_cdf_counts_reference_scores_strictly_below_with_one_added():
    reference = torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 5)  # M = 4, sorted
    scores = torch.tensor([-1.0, 1.0, 1.5, 3.0, 10.0])  # below all, a tie, between, a tie at the top, above all
    expected = [math.log(k / 5) for k in (1, 2, 3, 4, 5)]  # (#{ref < s} + 1) / (M + 1)
    assert log_cdf(reference, scores).tolist() == pytest.approx(expected)
    assert log_cdf(reference, scores)[-1] == 0  # above every reference sample: log 1, the reward's ceiling


def test_beta_is_derived_from_n_and_bad_settings_are_refused():
    assert VBoNConfig(n=16).beta == pytest.approx(1 / 15)
    assert VBoNConfig(n=5, beta=0.25).beta == 0.25  # an explicit beta equal to 1/(n-1) is accepted
    with pytest.raises(ValueError, match=r"beta=0.3 conflicts with n=16.*leave beta unset"):
        VBoNConfig(n=16, beta=0.3)
    with pytest.raises(ValueError, match="n=1 must be >= 2"):
        VBoNConfig(n=1)
    with pytest.raises(ValueError, match="reference_samples=0 must be >= 1"):
        VBoNConfig(reference_samples=0)
    with pytest.raises(ValueError, match="kl_target=6.0: vBoN keeps beta fixed"):
        VBoNConfig(kl_target=6.0)
    with pytest.raises(ValueError, match="num_mini_batches=3"):
        VBoNConfig(batch_size=32, num_mini_batches=3)
    # The pipeline's shared beta (0.3) gives way to the derived one; a conflicting --agent-settings beta does not.
    config = build_config(get_agent("vbon"), {"beta": 0.3, "batch_size": 128, "num_generations": 4})
    assert config.beta == pytest.approx(1 / (config.n - 1))
    with pytest.raises(ValueError, match="conflicts with n"):
        PipelineConfig(agents="vbon", agent_settings="vbon.beta=0.3")


def test_vbon_beats_more_reference_samples_as_it_learns_and_counts_only_policy_tokens(tmp_path):
    agent = make_agent(tmp_path / "run", n=64, missing_eos_penalty=100.0)
    agent.learn(3000, progress_bar=False)
    rows = progress(tmp_path / "run")
    first, late = rows[0], rows[-3:]
    print(f"vBoN: win rate {first['reference_win_rate']:.2f} -> {late[-1]['reference_win_rate']:.2f}, "
          f"score {first['score']:.2f} -> {late[-1]['score']:.2f}, KL {late[-1]['kl']:.2f}")
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)
    assert first["beta"] == pytest.approx(1 / 63)
    assert min(r["reference_win_rate"] for r in late) > first["reference_win_rate"] + 0.3
    assert min(r["score"] for r in late) > first["score"] + 1.0
    assert all(r["log_cdf"] <= 0 for r in rows)
    # Four prompts, each sampled M = 16 times once; the reference's tokens are logged, not counted as timesteps.
    assert len(agent.reference_scores) == 4 and all(len(s) == 16 for s in agent.reference_scores.values())
    assert rows[-1]["reference_prompts"] == 4 and rows[-1]["reference_tokens"] == first["reference_tokens"] > 0
    assert first["timesteps"] == pytest.approx(first["response_length"] * 32)
    # The reference's scores carry the same missing-EOS penalty as the policy's: some hit the 8-token cap.
    assert min(float(s[0]) for s in agent.reference_scores.values()) < -50


def test_smaller_n_stays_closer_to_the_reference(tmp_path):
    # beta = 1/(n-1) is at most 1, never huge: the KL anchor's test is that the KL follows n.
    kl = {}
    for n in (2, 64):
        make_agent(tmp_path / str(n), n=n).learn(2000, progress_bar=False)
        kl[n] = progress(tmp_path / str(n))[-1]["kl"]
    assert kl[2] < 0.6 < kl[64]  # best-of-2 is 0.19 nats from the reference, best-of-64 3.17


def test_resume_after_a_crash_equals_an_uninterrupted_run_reference_cache_included(tmp_path, monkeypatch):
    whole = make_agent(tmp_path / "whole").learn(1200, progress_bar=False)

    original = VBoN._iteration

    def crash_at_third(self):
        if self.iteration == 2:
            raise KeyboardInterrupt  # killed after iteration 2 was checkpointed
        return original(self)

    monkeypatch.setattr(VBoN, "_iteration", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        make_agent(tmp_path / "killed", save_steps=1).learn(1200, progress_bar=False)
    monkeypatch.setattr(VBoN, "_iteration", original)
    saved = json.loads((tmp_path / "killed" / "checkpoint" / REFERENCE_SCORES_FILE).read_text())
    assert len(saved) == 4 and all(len(s) == 16 for s in saved.values())
    resumed = make_agent(tmp_path / "killed", save_steps=1).learn(1200, resume=True, progress_bar=False)

    assert resumed.iteration == whole.iteration > 2 and resumed.num_timesteps == whole.num_timesteps
    assert resumed.reference_tokens == whole.reference_tokens
    assert resumed.reference_scores.keys() == whole.reference_scores.keys()
    assert all(torch.equal(resumed.reference_scores[p], s) for p, s in whole.reference_scores.items())
    for x, y in zip(whole.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(x, y)
    timing = ("seconds", "episodes_per_second", "tokens_per_second", "reference_seconds")
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in progress(tmp_path / run)]
            for run in ("killed", "whole")]
    assert rows[0] == rows[1]
