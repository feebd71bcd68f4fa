"""The generic examples: REINFORCE through plain Gymnasium, SB3 PPO with the adapter and KL wrapper; every one on
every registered text env id (quickstart and compare_agents' own RLHFText-v0 tests are in test_examples.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm, turns_task
from sb3_helpers import quiet_sb3  # noqa: F401  (autouse fixture)

from tests.test_pipeline import default_assets_or_skip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import reinforce_gymnasium  # noqa: E402


def test_reinforce_learns_the_count_task():
    task = count_task(max_new_tokens=6)
    history = reinforce_gymnasium.run(gym.make("RLHFText-v0", task=task), tiny_lm(task), episodes=256, batch=16,
                                      learning_rate=1e-2)
    assert len(history) == 16
    assert history[0] < 1.5 and history[-1] > 4.0  # random init ~0.4 'a' per response, cap 6


def test_reinforce_log_likelihood_covers_exactly_the_response():
    task = count_task(max_new_tokens=4)
    lm = tiny_lm(task)
    env = gym.make("RLHFText-v0", task=task)
    obs, _ = env.reset(options={"prompt": "ab"})
    expected = 0.0
    for action in (4, 5, 5):
        with torch.no_grad():
            expected += torch.log_softmax(reinforce_gymnasium.lm_logits(lm, obs, 6)[0, -1], -1)[action].item()
        obs, *_ = env.step(action)
    batch = {k: v[None] for k, v in obs.items()}
    with torch.no_grad():
        got = reinforce_gymnasium.response_logprob(lm, batch, [3], 6)
    assert got.item() == pytest.approx(expected, abs=1e-5)


TRUNCATED = "ignore:Task 'text'. the conversation of:UserWarning"  # turns_task outgrows its window on purpose


@pytest.mark.filterwarnings(TRUNCATED)
@pytest.mark.parametrize("mode", ["conversation", "state"])
def test_reinforce_rows_are_the_turns_the_policy_wrote(mode):
    """Multi-turn: one row per turn, the window as the turn ended, holding exactly that turn's own tokens."""
    task = turns_task(mode)
    lm = tiny_lm(task)
    env = gym.make("RLHFText-v0", task=task)
    env.reset(seed=0)
    turns = reinforce_gymnasium.play_episode(env, lm, 6, torch.Generator().manual_seed(0))
    assert len(turns) > 1
    replay = gym.make("RLHFText-v0", task=task)  # the same episode again, step by step
    replay.reset(seed=0)
    obs, _ = replay.reset()
    expected, rewards = 0.0, []
    for window, length, _ in turns:
        reward = 0.0
        for action in window["input_ids"][-length:].tolist():
            with torch.no_grad():
                expected += torch.log_softmax(reinforce_gymnasium.lm_logits(lm, obs, 6)[0, -1], -1)[action].item()
            obs, r, terminated, *_ = replay.step(action)
            reward += r
        rewards.append(reward)
    assert terminated
    assert [g for *_, g in turns] == pytest.approx(np.cumsum(rewards[::-1])[::-1])  # rewards-to-go
    batch = {key: np.stack([window[key] for window, *_ in turns]) for key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        got = reinforce_gymnasium.response_logprob(lm, batch, np.array([n for _, n, _ in turns]), 6).sum()
    assert got.item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.filterwarnings(TRUNCATED)
def test_reinforce_trains_on_multi_turn_episodes():
    task = turns_task("conversation")
    history = reinforce_gymnasium.run(gym.make("RLHFText-v0", task=task), tiny_lm(task), episodes=32, batch=8,
                                      learning_rate=1e-2)
    assert len(history) == 4 and all(map(math.isfinite, history))


@pytest.mark.filterwarnings(TRUNCATED)
@pytest.mark.parametrize("make_task", [count_task, turns_task], ids=["one turn", "multi-turn"])
def test_sb3_example_starts_at_zero_kl_and_trains(make_task):
    pytest.importorskip("stable_baselines3")
    import sb3_ppo

    task = make_task(max_new_tokens=4)
    policy = tiny_lm(task)
    before = [p.detach().clone() for p in policy.parameters()]
    history = sb3_ppo.run(task, policy, timesteps=64, num_envs=2, n_steps=16, learning_rate=1e-3)
    assert len(history) == 2
    # Before the first update pi == pi_ref, so the adapter's log pi and the wrapper's log pi_ref agree exactly.
    assert history[0][1] == pytest.approx(0.0, abs=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


@pytest.mark.parametrize("example, argv", [
    ("reinforce_gymnasium", ["--episodes", "4", "--batch", "2"]),
    ("sb3_ppo", ["--timesteps", "64", "--num-envs", "2", "--n-steps", "32"]),
])
def test_examples_main_on_default_assets(example, argv):
    default_assets_or_skip()
    module = __import__(example)
    assert module.main(argv)


# RLHFText-v0, the default: the tests above. The multi-turn ids (GuessNumber-v0, ChessGame-v0) run in the slow set;
# the fast multi-turn cases are the turns_task tests above.
ENV_IDS = ["ChessMoveCritic-v0", *(pytest.param(env_id, marks=pytest.mark.slow)
                                  for env_id in ("Arithmetic-v0", "GuessNumber-v0", "ChessGame-v0"))]
TINY = {
    "quickstart": ["--episodes", "2"],
    "compare_agents": ["--timesteps", "32", "--batch-size", "8"],
    "reinforce_gymnasium": ["--episodes", "4", "--batch", "2"],
    "sb3_ppo": ["--timesteps", "64", "--num-envs", "2", "--n-steps", "32"],
}


def env_task_or_skip(env_id: str):
    """The Task of ``env_id``; skips when the id is not registered, needs a missing program (Stockfish), or its
    task ships no default policy (yet: issue 18 builds them)."""
    import text_env  # noqa: F401  (registers the env ids)

    if env_id not in gym.registry:
        pytest.skip(f"{env_id} is not registered")
    try:
        env = gym.make(env_id)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    task = env.unwrapped.task
    env.close()  # only the task's settings are read below
    own = task.default_policy
    if own is None or not Path(own).exists():
        pytest.skip(f"{env_id}'s default policy is not shipped (task.default_policy={own!r})")
    return task


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("example", list(TINY))
def test_generic_examples_run_on_every_registered_env_id(example, env_id, capsys):
    default_assets_or_skip()
    task = env_task_or_skip(env_id)
    module = __import__(example)
    result = module.main([*TINY[example], "--env", env_id])
    out = capsys.readouterr().out
    assert result
    if example == "quickstart":
        assert all(math.isfinite(info["return"]) for info in result)
        assert out.count("gold -") == (0 if task.gold_scorer else 2)
    if example == "compare_agents":
        assert f"{env_id}, 32 tokens per agent" in out
        for name, r in result.items():
            assert math.isfinite(r["score"]) and math.isnan(r["gold_score"]) != bool(task.gold_scorer), name
    if example in ("reinforce_gymnasium", "sb3_ppo"):
        assert np.isfinite(np.asarray(result, dtype=float)).all()
