"""PPOKL on a trivially learnable task: learning, KL behaviour, checkpoints, resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm
from transformers import GPT2Config, GPT2ForSequenceClassification

from agents import PPOKL, PPOKLConfig
from agents.ppo_kl import cli
from text_env import TextGenerationEnv, TextGenerationVectorEnv

torch.set_num_threads(1)
TESTS = Path(__file__).resolve().parent
BASE = dict(batch_size=32, num_mini_batches=2, num_ppo_epochs=4, learning_rate=1e-3, beta=0.0, kl_target=None,
            save_steps=0)


def make_agent(tmp_path: Path, **overrides) -> PPOKL:
    task = count_task()
    config = PPOKLConfig(**{**BASE, "log_dir": str(tmp_path / "run"), **overrides})
    return PPOKL(task, policy=tiny_lm(task), config=config)


def progress(log_dir: Path | str) -> list[dict[str, float]]:
    with open(Path(log_dir) / "progress.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_first_iteration_kl_is_zero(tmp_path):
    agent = make_agent(tmp_path, beta=0.2)
    agent.learn(1, progress_bar=False)
    (row,) = progress(tmp_path / "run")
    # Policy == reference before any update: the rollout's log-probs and the reference pass's agree
    # up to float rounding (they come from a KV-cached and a packed forward pass).
    for key in ("kl", "kl_k1", "kl_k3"):
        assert row[key] == pytest.approx(0.0, abs=1e-5), key
    assert row["beta"] == 0.2
    assert row["approx_kl"] > 0  # the update itself did move the policy
    for key in ("score", "entropy", "clipfrac", "value_loss", "explained_variance", "response_length",
                "episodes_per_second", "seconds", "learning_rate", "grad_norm"):
        assert key in row


def test_reduced_precision_rescores_old_logprobs_with_the_update_pass(tmp_path, monkeypatch):
    # Under bf16 (CUDA) cached decoding and the packed pass round differently, so the agent re-scores
    # the batch once: old log-probs and value states then come from the update's own kind of pass.
    import agents.base

    agent = make_agent(tmp_path)
    batch = agent._generate(output_hidden=True)
    monkeypatch.setattr(agents.base, "reduced_precision", lambda device: True)
    calls = []
    real = agents.base.response_logprobs
    monkeypatch.setattr(agents.base, "response_logprobs", lambda *a, **k: calls.append(k) or real(*a, **k))
    again = agent._generate(output_hidden=True)  # no update in between: the same prompts and samples
    assert calls == [{"output_hidden": True}]
    assert torch.equal(again.response_ids, batch.response_ids)
    assert torch.allclose(again.logprobs, batch.logprobs, atol=1e-5)
    assert torch.allclose(again.hidden, batch.hidden, atol=1e-5)


def test_learns_count_task_and_kl_grows_without_penalty(tmp_path):
    agent = make_agent(tmp_path)
    start = time.perf_counter()
    agent.learn(4000, progress_bar=False)
    rows = progress(tmp_path / "run")
    first, last = rows[0], rows[-3:]
    print(f"{len(rows)} iterations in {time.perf_counter() - start:.1f}s: score {first['score']:.2f} -> "
          f"{np.mean([r['score'] for r in last]):.2f} (max 8), KL {np.mean([r['kl'] for r in last]):.2f}")
    assert first["score"] < 1.5
    assert np.mean([r["score"] for r in last]) > 5.0
    assert np.mean([r["kl"] for r in last]) > 3.0  # beta = 0: nothing holds the policy back
    assert rows[-1]["learning_rate"] < rows[0]["learning_rate"]  # linear annealing


def test_huge_beta_keeps_policy_at_reference(tmp_path):
    agent = make_agent(tmp_path, beta=100.0)
    agent.learn(2000, progress_bar=False)
    rows = progress(tmp_path / "run")
    # The first update (KL still 0) moves a little; after it the penalty pulls the policy back.
    assert max(abs(r["kl"]) for r in rows) < 0.5
    assert np.mean([r["kl_k3"] for r in rows[-5:]]) < 0.1
    assert np.mean([r["score"] for r in rows[-3:]]) < 2.0


def test_update_changes_policy_and_value_head_but_not_reference(tmp_path):
    agent = make_agent(tmp_path)
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    reference = {k: v.clone() for k, v in agent.reference.state_dict().items()}
    agent.learn(1, progress_bar=False)
    assert any(not torch.equal(before[k], v) for k, v in agent.policy.state_dict().items())
    assert all(torch.equal(reference[k], v) for k, v in agent.reference.state_dict().items())
    assert agent.value_model.weight.abs().sum() > 0  # moved off its zero init
    assert not any(p.requires_grad for p in agent.reference.parameters())


def test_adaptive_controller_moves_beta(tmp_path):
    agent = make_agent(tmp_path, beta=0.1, kl_target=0.5, kl_horizon=100)
    agent.learn(1500, progress_bar=False)
    rows = progress(tmp_path / "run")
    assert rows[0]["beta"] == 0.1 and rows[-1]["beta"] != 0.1


def test_save_load_round_trip_continues_identically(tmp_path):
    agent = make_agent(tmp_path, kl_target=1.0, beta=0.1)
    agent.learn(600, progress_bar=False)
    agent.save(tmp_path / "saved")
    loaded = PPOKL.load(tmp_path / "saved", count_task())
    assert loaded.iteration == agent.iteration and loaded.num_timesteps == agent.num_timesteps
    assert loaded.num_episodes == agent.num_episodes == 32 * agent.iteration
    assert loaded.train_seconds == agent.train_seconds > 0
    assert loaded.kl_ctl.value == agent.kl_ctl.value != 0.1
    for a, b in ((agent.policy, loaded.policy), (agent.reference, loaded.reference),
                 (agent.value_model, loaded.value_model)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    # Same state in, same update out: optimiser moments, RNG and counters all came back.
    loaded.config.log_dir = str(tmp_path / "run2")
    agent.learn(300, reset_num_timesteps=False, progress_bar=False)
    loaded.learn(300, reset_num_timesteps=False, progress_bar=False)
    for x, y in zip(agent.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert torch.equal(x, y)
    assert progress(tmp_path / "run")[-1] == {**progress(tmp_path / "run2")[-1]} | {
        k: progress(tmp_path / "run")[-1][k] for k in ("episodes_per_second", "tokens_per_second", "seconds")
    }


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    agent = make_agent(tmp_path, save_steps=1)
    agent.learn(1, progress_bar=False)
    with torch.no_grad():
        agent.value_model.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        agent.learn(1000, reset_num_timesteps=False, progress_bar=False)
    state = json.loads((agent.checkpoint_dir / "state.json").read_text())
    assert state["iteration"] == 1
    restored = PPOKL.load(agent.checkpoint_dir, count_task())
    assert torch.isfinite(restored.value_model.weight).all()


def test_critic_value_head_from_reward_model(tmp_path):
    task = count_task()
    config = GPT2Config(vocab_size=task.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2, num_labels=1,
                        pad_token_id=task.pad_token_id)
    torch.manual_seed(1)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    agent = make_agent(tmp_path, value_head="critic", critic_path=str(tmp_path / "rm"))
    agent.learn(1, progress_bar=False)
    assert progress(tmp_path / "run")[0]["value_mean"] != 0  # initialised from the RM, not zero
    agent.save(tmp_path / "saved")
    loaded = PPOKL.load(tmp_path / "saved", task)
    for x, y in zip(agent.value_model.parameters(), loaded.value_model.parameters(), strict=True):
        assert torch.equal(x, y)


def test_predict_single_and_batched(tmp_path):
    agent = make_agent(tmp_path)
    env = TextGenerationEnv(agent.task)
    obs, _ = env.reset(seed=0)
    action, state = agent.predict(obs, deterministic=True)
    assert action.shape == () and state is None and env.action_space.contains(int(action))
    vec = TextGenerationVectorEnv(agent.task, 5)
    obs, _ = vec.reset(seed=0)
    actions, _ = agent.predict(obs)
    assert actions.shape == (5,)


def test_config_and_env_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="critic_path"):
        PPOKLConfig(value_head="critic")
    with pytest.raises(ValueError, match="divide batch_size"):
        PPOKLConfig(batch_size=10, num_mini_batches=4)
    task = count_task()
    with pytest.raises(ValueError, match="num_envs=4"):
        PPOKL(TextGenerationVectorEnv(task, 4, autoreset_mode="Disabled"), tiny_lm(task), PPOKLConfig(**BASE))
    with pytest.raises(SystemExit) as exit_info:
        cli(["--help"])
    assert exit_info.value.code == 0 and "--kl-target" in capsys.readouterr().out


KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from rl_helpers import count_task, tiny_lm
from agents import PPOKL, PPOKLConfig
task = count_task(reward_delay=0.3)
config = PPOKLConfig(batch_size=8, num_mini_batches=2, learning_rate=1e-3, log_dir={log_dir!r}, save_steps=1)
PPOKL(task, tiny_lm(task), config).learn(400, progress_bar=False)
"""


def test_sigkill_then_resume_continues_from_checkpoint(tmp_path, monkeypatch):
    log_dir = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(tests=str(TESTS), log_dir=str(log_dir))))
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
    state_file = log_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    try:
        while not (state_file.exists() and json.loads(state_file.read_text())["iteration"] >= 2):
            assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = json.loads(state_file.read_text())["iteration"]
    assert killed_at >= 2 and json.loads(state_file.read_text())["target_timesteps"] == 400

    seen = []
    original = PPOKL._iteration

    def record(self):
        seen.append(self.iteration)
        return original(self)

    monkeypatch.setattr(PPOKL, "_iteration", record)
    task = count_task()
    config = PPOKLConfig(batch_size=8, num_mini_batches=2, learning_rate=1e-3, log_dir=str(log_dir),
                         save_steps=1)
    agent = PPOKL(task, tiny_lm(task), config).learn(400, resume=True, progress_bar=False)
    assert seen[0] == killed_at  # continued after the checkpoint, not from 0
    assert agent.num_timesteps >= 400 and agent.iteration == killed_at + len(seen)
    steps = [int(r["step"]) for r in progress(log_dir)]
    assert steps == list(range(1, agent.iteration + 1))  # rows the killed run logged after it were dropped


def test_a_window_longer_than_the_model_is_refused_with_a_clear_error():
    task = count_task(max_new_tokens=70)  # 4 prompt + 70 new tokens > the tiny model's 64 positions
    with pytest.raises(ValueError, match="window is 74 tokens .* 64 positions"):
        PPOKL(task, policy=tiny_lm(task), config=PPOKLConfig(batch_size=4, log_dir="unused"))


def test_resume_with_other_settings_is_refused(tmp_path):
    make_agent(tmp_path, save_steps=1).learn(1, progress_bar=False)
    changed = make_agent(tmp_path, save_steps=1, learning_rate=1e-5)
    with pytest.raises(ValueError, match=r"--learning-rate .* -> 1e-05"):
        changed.learn(1000, resume=True, progress_bar=False)
    make_agent(tmp_path, save_steps=2).learn(1000, resume=True, progress_bar=False)  # save_steps may change
