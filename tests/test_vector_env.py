"""The native vector env equals SyncVectorEnv over single envs, step for step."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import make_task
from gymnasium.vector import AutoresetMode
from rl_helpers import turns_task

from text_env import TextGenerationVectorEnv

N = 16


def assert_same(a, b, path="out"):
    if isinstance(a, tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert a.shape == b.shape, path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        np.testing.assert_array_equal(a, b, err_msg=path)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype, f"{path}: {a.dtype} != {b.dtype}"


def action_mask_rule(prompt, response_ids):
    # Forbid the letter 'e' after an 'a'-free prefix: a mask that changes along the episode.
    tok = TASK_WITH_MASK.tokenizer
    mask = np.ones(len(tok), dtype=bool)
    if not response_ids or tok.convert_tokens_to_ids("a") not in response_ids:
        mask[tok.convert_tokens_to_ids("e")] = False
    return mask


TASK_WITH_MASK = make_task(max_new_tokens=6, stop_strings=("!",), missing_eos_penalty=0.25)
TASK_WITH_MASK.action_mask = action_mask_rule


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
@pytest.mark.parametrize("kind", ["nomask", "mask", "conversation", "state"])
def test_native_vector_env_equals_sync_vector_env(mode, kind):
    """Also for multi-turn games (rl_helpers.LetterGame): the env's replies, per-turn rewards, truncation."""
    masked = kind == "mask"
    if kind in ("conversation", "state"):
        task = turns_task(kind)
    else:
        task = TASK_WITH_MASK if masked else make_task(max_new_tokens=6, stop_strings=("!",))
    native = gym.make_vec("RLHFText-v0", num_envs=N, vectorization_mode="vector_entry_point",
                          task=task, autoreset_mode=mode)
    sync = gym.make_vec("RLHFText-v0", num_envs=N, vectorization_mode="sync", task=task,
                        vector_kwargs={"autoreset_mode": mode})
    assert isinstance(native.unwrapped, TextGenerationVectorEnv)
    assert native.observation_space == sync.observation_space
    assert native.action_space == sync.action_space
    assert native.metadata["autoreset_mode"] == mode

    assert_same(native.reset(seed=3), sync.reset(seed=3))
    rng = np.random.default_rng(0)
    eos = task.tokenizer.eos_token_id
    done = np.zeros(N, dtype=bool)
    for step in range(40):
        if mode == AutoresetMode.DISABLED and done.any():
            # Synchronous batches: reset the finished ones by mask, as SyncVectorEnv demands.
            assert_same(native.reset(options={"reset_mask": done.copy()}),
                        sync.reset(options={"reset_mask": done.copy()}), f"reset@{step}")
        actions = rng.integers(4, task.vocab_size, size=N)
        actions[rng.random(N) < 0.15] = eos
        if masked:  # never pick a masked token, in both envs
            masks = native.unwrapped.action_masks()
            np.testing.assert_array_equal(masks, np.stack([e.unwrapped.action_masks() for e in sync.envs]))
            actions = np.where(masks[np.arange(N), actions], actions, eos)
        out_native, out_sync = native.step(actions), sync.step(actions)
        assert_same(out_native, out_sync, f"step {step}")
        done = out_native[2] | out_native[3]
    native.close()
    sync.close()


def test_disabled_mode_freezes_finished_episodes_until_reset():
    task = make_task(max_new_tokens=5)
    env = TextGenerationVectorEnv(task, num_envs=4, autoreset_mode="Disabled")
    env.reset(seed=0)
    eos = task.tokenizer.eos_token_id
    obs, rewards, terminated, _, infos = env.step(np.array([eos, 5, 5, 5]))
    frozen = obs["input_ids"][0].copy()
    for _ in range(4):
        obs, rewards, terminated, _, infos = env.step(np.array([6, 6, 6, 6]))
        assert terminated[0] and rewards[0] == 0.0 and not infos.get("_response", [False])[0]
        np.testing.assert_array_equal(obs["input_ids"][0], frozen)
    assert terminated.all()
    assert infos["response"][1:].tolist() == ["bcccc"] * 3  # b, then c four times


def test_one_reward_model_call_per_step():
    calls = []

    class CountingRM:
        def score(self, prompts, responses):
            calls.append(len(prompts))
            return np.zeros(len(prompts))

    task = make_task(reward_model=CountingRM(), max_new_tokens=3)
    env = TextGenerationVectorEnv(task, num_envs=8, autoreset_mode="Disabled")
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.full(8, 5))
    assert calls == [8]


def test_vector_env_rejects_bad_actions():
    task = make_task()
    env = TextGenerationVectorEnv(task, num_envs=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        env.step(np.array([1, 2]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(np.array([1, 2, task.vocab_size]))


def test_masked_action_names_the_sub_env_and_changes_nothing():
    env = TextGenerationVectorEnv(TASK_WITH_MASK, num_envs=3)
    obs, _ = env.reset(seed=0)
    e = TASK_WITH_MASK.tokenizer.convert_tokens_to_ids("e")  # masked until the response has an 'a'
    a = TASK_WITH_MASK.tokenizer.convert_tokens_to_ids("a")
    with pytest.raises(ValueError, match=r"action \d+ of sub-env 2 is masked out"):
        env.step(np.array([a, a, e]))
    np.testing.assert_array_equal(env.step(np.array([a, a, a]))[0]["input_ids"][:, :-1], obs["input_ids"][:, 1:])


def test_render_shows_each_sub_env_like_a_single_env():
    task = make_task()
    native = TextGenerationVectorEnv(task, num_envs=3, render_mode="ansi")
    singles = [gym.make("RLHFText-v0", task=task, render_mode="ansi") for _ in range(3)]
    native.reset(seed=5)
    for i, env in enumerate(singles):
        env.reset(seed=5 + i)
    for action in (4, 5):
        native.step(np.full(3, action))
        for env in singles:
            env.step(action)
    assert native.render() == tuple(env.render() for env in singles)
    assert TextGenerationVectorEnv(task, num_envs=2).render() is None
