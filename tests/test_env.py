"""TextGenerationEnv: the Gymnasium contract, episodes, seeding and bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import make_task
from gymnasium.utils.env_checker import check_env

from reward_models import FunctionRewardModel
from text_env import TextGenerationEnv


def letter(env: TextGenerationEnv, ch: str) -> int:
    return env.task.tokenizer.convert_tokens_to_ids(ch)


def test_gymnasium_check_env(task):
    check_env(gym.make("RLHFText-v0", task=task, render_mode="ansi").unwrapped, skip_render_check=False)


def test_sb3_check_env(task):
    sb3_env_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3 warns about spaces it cannot use; none allowed
        sb3_env_checker.check_env(TextGenerationEnv(task), warn=True)


def test_make_registered_id_without_prior_import(task):
    env = gym.make("text_env:RLHFText-v0", task=task)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["prompt"] in task.prompts


def test_episode_reward_only_at_end_and_info(task):
    env = TextGenerationEnv(task)
    obs, info = env.reset(seed=1, options={"prompt": "hello"})
    assert info == {"prompt": "hello"}
    prompt_len = int(obs["attention_mask"].sum())
    a, eos = letter(env, "a"), task.tokenizer.eos_token_id
    for t in range(3):
        obs, reward, terminated, truncated, info = env.step(a)
        assert (reward, terminated, truncated, info) == (0.0, False, False, {})
        assert obs["input_ids"][-1] == a  # newest token is always last
        assert obs["attention_mask"].sum() == prompt_len + t + 1
    obs, reward, terminated, truncated, info = env.step(eos)
    assert terminated and not truncated
    assert reward == 3.0
    assert info["response"] == "aaa" and info["score"] == 3.0 and info["end_reason"] == "eos"
    assert info["prompt"] == "hello" and info["response_length"] == 4
    with pytest.raises(RuntimeError, match="reset"):
        env.step(a)


def test_observation_is_left_padded_prompt_then_response(task):
    env = TextGenerationEnv(task)
    obs, _ = env.reset(options={"prompt": "ab"})
    ids = task.tokenizer("ab")["input_ids"]  # BOS a b
    w = task.window
    assert obs["input_ids"].shape == (w,) and obs["input_ids"].dtype == np.int64
    assert obs["attention_mask"].tolist() == [0] * (w - 3) + [1] * 3
    assert obs["input_ids"][-3:].tolist() == ids
    obs, *_ = env.step(letter(env, "c"))
    assert obs["input_ids"][-4:].tolist() == ids + [letter(env, "c")]


def test_max_new_tokens_terminates_with_missing_eos_penalty():
    task = make_task(max_new_tokens=3, missing_eos_penalty=0.5)
    env = TextGenerationEnv(task)
    env.reset(seed=0)
    rewards = [env.step(letter(env, "a"))[1] for _ in range(2)]
    _, reward, terminated, _, info = env.step(letter(env, "a"))
    assert rewards == [0.0, 0.0] and terminated
    assert info["end_reason"] == "max_new_tokens" and info["score"] == 3.0 and reward == 2.5


def test_stop_string_ends_and_cuts_response():
    env = TextGenerationEnv(make_task(stop_strings=("!",)))
    env.reset(seed=0)
    for ch in "ab!":
        _, reward, terminated, _, info = env.step(letter(env, ch))
    assert terminated and info["end_reason"] == "stop_string"
    assert info["response"] == "ab" and reward == 1.0


def test_render_ansi_shows_text_so_far(task):
    env = TextGenerationEnv(task, render_mode="ansi")
    env.reset(options={"prompt": "hi "})
    env.step(letter(env, "y"))
    env.step(letter(env, "o"))
    assert env.render() == "hi yo"


def test_seeded_determinism(task):
    def rollout(seed):
        env = TextGenerationEnv(task)
        env.action_space.seed(seed)
        trace = []
        for episode in range(4):
            obs, info = env.reset(seed=seed if episode == 0 else None)
            trace.append(info["prompt"])
            done = False
            while not done:
                obs, reward, done, _, info = env.step(env.action_space.sample())
                trace.append(obs["input_ids"].tolist())
            trace.append((reward, info["response"]))
        return trace

    assert rollout(7) == rollout(7)
    assert rollout(7) != rollout(8)


def test_action_outside_vocabulary_is_rejected(task):
    env = TextGenerationEnv(task)
    env.reset(seed=0)
    for bad in (task.vocab_size, -1, 2.5):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            env.step(bad)
    with pytest.raises(TypeError, match="not an integer"):
        env.step("a")


def test_empty_prompt_source_is_rejected():
    with pytest.raises(ValueError, match="prompt source is empty"):
        make_task(prompts=[])


def test_empty_prompt_conditions_on_bos(task):
    env = TextGenerationEnv(task)
    obs, _ = env.reset(options={"prompt": ""})
    assert obs["attention_mask"].sum() == 1 and obs["input_ids"][-1] == task.tokenizer.bos_token_id


def test_long_prompt_truncates_left_with_warning_or_raises():
    long = "abcdefghij" * 5
    env = TextGenerationEnv(make_task(max_prompt_tokens=10))
    with pytest.warns(UserWarning, match="left-truncated"):
        obs, _ = env.reset(options={"prompt": long})
    assert obs["attention_mask"].sum() == 10
    assert env.task.tokenizer.decode(obs["input_ids"][-10:]) == long[-10:]
    strict = TextGenerationEnv(make_task(max_prompt_tokens=10, long_prompt="error"))
    with pytest.raises(ValueError, match="exceeds max_prompt_tokens=10"):
        strict.reset(options={"prompt": long})


@pytest.mark.parametrize(
    "scores, message",
    [([float("nan")], "returned nan"), ([float("inf")], "returned inf"), ([1.0, 2.0], r"shape \(2,\)")],
)
def test_bad_reward_model_output_stops_with_clear_error(scores, message):
    rm = FunctionRewardModel(lambda prompts, responses: scores, batched=True, name="broken")
    env = TextGenerationEnv(make_task(reward_model=rm, max_new_tokens=1))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(5)


def test_action_mask_in_info_and_method_and_enforced():
    vowels = set("aeiou")

    def only_vowels_then_eos(prompt, response_ids):
        tok = task.tokenizer
        mask = np.zeros(len(tok), dtype=bool)
        if len(response_ids) < 2:
            mask[[tok.convert_tokens_to_ids(v) for v in vowels]] = True
        else:
            mask[tok.eos_token_id] = True
        return mask

    task = make_task(action_mask=only_vowels_then_eos)
    env = TextGenerationEnv(task)
    _, info = env.reset(seed=0)
    assert info["action_mask"].dtype == np.int8 and info["action_mask"].sum() == 5
    assert env.action_masks().dtype == bool
    for _ in range(2):
        a = env.action_space.sample(mask=info["action_mask"])  # Gymnasium's masked sampling works
        assert task.tokenizer.convert_ids_to_tokens(int(a)) in vowels
        _, _, terminated, _, info = env.step(a)
        assert not terminated
    with pytest.raises(ValueError, match="masked out"):
        env.step(letter(env, "a"))
    assert env.action_masks().sum() == 1
    _, _, terminated, _, info = env.step(task.tokenizer.eos_token_id)
    assert terminated and "action_mask" not in info


def test_gold_scorer_reported_in_info():
    gold = FunctionRewardModel(lambda p, r: -float(len(r)))
    env = TextGenerationEnv(make_task(gold_scorer=gold, max_new_tokens=2))
    env.reset(seed=0)
    env.step(letter(env, "a"))
    _, reward, _, _, info = env.step(letter(env, "a"))
    assert reward == info["score"] == 2.0 and info["gold_score"] == -2.0


def test_task_options_need_default_task(task):
    with pytest.raises(TypeError, match="only configure the default task"):
        gym.make("RLHFText-v0", task=task, max_new_tokens=4)
