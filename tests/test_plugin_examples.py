"""The generic-agent examples: REINFORCE through plain Gymnasium, SB3 PPO with the adapter and KL wrapper."""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from rl_helpers import count_task, tiny_lm
from sb3_helpers import quiet_sb3  # noqa: F401  (autouse fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import reinforce_gymnasium  # noqa: E402


def default_assets_or_skip() -> None:
    from text_env.defaults import default_policy_path, default_task

    try:
        default_policy_path()
        default_task()
    except FileNotFoundError as e:
        pytest.skip(f"no embedded default assets: {e}")


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


def test_sb3_example_starts_at_zero_kl_and_trains():
    pytest.importorskip("stable_baselines3")
    import sb3_ppo

    task = count_task(max_new_tokens=4)
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
