"""Arithmetic-v0: registration, check_env, the verifier, partial credit, the held-out split, bad input, the policy."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from text_env import TextGenerationEnv, TextGenerationVectorEnv
from text_env.arithmetic import (
    ARITHMETIC_POLICY,
    POLICY_META_FILE,
    ArithmeticConfig,
    ArithmeticVerifier,
    Problem,
    eval_problems,
    make_arithmetic_env,
    parse_problem,
    partial_credit,
)


def type_answer(env: gym.Env, text: str) -> tuple[float, bool, dict]:
    """Step ``text`` then EOS into a reset env; the last step's reward, terminated and info."""
    tokenizer = env.unwrapped.task.tokenizer
    for token in [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]:
        _, reward, terminated, _, info = env.step(token)
    return reward, terminated, info


# ---- registration and checkers --------------------------------------------------------
def test_make_and_make_vec_with_no_arguments():
    env = gym.make("Arithmetic-v0")
    assert isinstance(env.unwrapped, TextGenerationEnv)
    _, info = env.reset(seed=0)
    problem = parse_problem(info["prompt"])
    assert problem.op in "+*" and 10 <= min(problem.a, problem.b) and max(problem.a, problem.b) <= 99
    assert env.action_space.n == 18 and env.observation_space["input_ids"].shape == (12,)
    assert env.unwrapped.task.default_policy == str(ARITHMETIC_POLICY)  # what agents load when given none
    envs = gym.make_vec("Arithmetic-v0", num_envs=4, vectorization_mode="vector_entry_point")
    assert isinstance(envs.unwrapped, TextGenerationVectorEnv)
    _, infos = envs.reset(seed=0)
    assert len(set(infos["prompt"])) > 1
    _, rewards, terminated, _, _ = envs.step(np.full(4, envs.unwrapped.task.tokenizer.eos_token_id))
    assert terminated.all() and (rewards == 0).all()  # an empty answer is wrong
    envs.close()


def test_gymnasium_and_sb3_check_env():
    env = gym.make("Arithmetic-v0", render_mode="ansi")
    check_env(env.unwrapped, skip_render_check=False)
    sb3_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_checker.check_env(make_arithmetic_env(), warn=True)


# ---- the verifier and partial credit -----------------------------------------------------
def test_verifier_scores_exact_answers():
    verifier = ArithmeticVerifier()
    prompts = ["37+45=", "37+45=", "12-45=", "99*99=", "10*10=", "37+45="]
    responses = ["82", "83", "-33", "9801", "0100", " 82\n"]
    np.testing.assert_array_equal(verifier.score(prompts, responses), [1, 0, 1, 1, 0, 1])


def test_partial_credit_values():
    assert partial_credit("82", "82") == 1.0
    assert partial_credit("72", "82") == 0.5  # units right, tens wrong
    assert partial_credit("182", "82") == pytest.approx(2 / 3)  # an extra digit costs a position
    assert partial_credit("2", "82") == 0.5  # a missing digit too
    assert partial_credit("8", "82") == 0.0  # aligned from the right: 8 sits under the 2
    assert partial_credit("33", "-33") == pytest.approx(2 / 3)  # the sign is a position
    assert partial_credit("", "82") == partial_credit("8x", "82") == partial_credit("--8", "82") == 0.0
    scores = ArithmeticVerifier(partial_credit=True).score(["37+45="] * 3, ["82", "72", "abc"])
    np.testing.assert_allclose(scores, [1.0, 0.5, 0.0])


def test_partial_credit_option_rewards_near_misses_but_gold_stays_exact():
    env = gym.make("Arithmetic-v0", partial_credit=True)
    env.reset(options={"prompt": "37+45="})
    reward, terminated, info = type_answer(env, "72")
    assert terminated and reward == 0.5 and info["gold_score"] == 0.0 and info["correct"] is False


# ---- episodes ---------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["37+45=", "12*34="])
def test_scripted_episode_with_the_right_answer(prompt):
    env = gym.make("Arithmetic-v0", render_mode="ansi")
    _, info = env.reset(options={"prompt": prompt})
    answer = parse_problem(prompt).answer
    reward, terminated, info = type_answer(env, answer)
    assert terminated and reward == 1.0 and info["correct"] is True and info["answer"] == answer
    assert info["gold_score"] == 1.0 and info["end_reason"] == "eos" and env.render() == prompt + answer
    env.reset(options={"prompt": prompt})
    reward, _, info = type_answer(env, "1")
    assert reward == 0.0 and info["correct"] is False and info["answer"] == answer


def test_subtraction_and_length_cap():
    env = gym.make("Arithmetic-v0", operations="-", digits=3)
    _, info = env.reset(seed=1)
    assert "-" in info["prompt"] and env.unwrapped.task.max_new_tokens == 5  # sign, 3 digits, EOS
    env.reset(options={"prompt": "123-456="})
    assert type_answer(env, "-333")[0] == 1.0
    env.reset(options={"prompt": "123-456="})
    for _ in range(5):
        _, reward, terminated, _, info = env.step(5)  # "1" five times: the cap ends it
    assert terminated and reward == 0.0 and info["end_reason"] == "max_new_tokens"


def test_vector_env_verifies_every_sub_env():
    envs = gym.make_vec("Arithmetic-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        autoreset_mode=AutoresetMode.DISABLED)
    _, infos = envs.reset(seed=3)
    tokenizer = envs.unwrapped.task.tokenizer
    answers = [parse_problem(p).answer + "+" if i == 2 else parse_problem(p).answer
               for i, p in enumerate(infos["prompt"])]  # sub-env 2 writes a wrong answer
    queues = [[*tokenizer(a, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id] for a in answers]
    rewards = np.zeros(3)
    for step in range(max(map(len, queues))):
        actions = [q[min(step, len(q) - 1)] for q in queues]
        _, r, terminated, _, infos = envs.step(actions)
        rewards += r
        if terminated.all():
            break
    np.testing.assert_array_equal(rewards, [1, 1, 0])
    envs.close()


# ---- the held-out split -----------------------------------------------------------------
def test_training_draws_skip_the_held_out_problems():
    config = ArithmeticConfig()
    held_out = eval_problems(config)
    assert len(held_out) == 500 and len({p.text for p in held_out}) == 500 and all(p.held_out for p in held_out)
    assert eval_problems(config) == held_out and eval_problems(ArithmeticConfig(seed=1)) != held_out
    rng = np.random.default_rng(0)
    train = [config.train_problem(rng) for _ in range(3000)]
    assert not any(p.held_out for p in train)
    assert not {p.text for p in train} & {p.text for p in held_out}
    assert Problem(37, "+", 45).held_out == Problem(45, "+", 37).held_out  # commutative pairs go together
    share = np.mean([config.problem_at(i).held_out for i in range(config.space)])
    assert 0.08 < share < 0.12
    envs = gym.make_vec("Arithmetic-v0", num_envs=8, vectorization_mode="vector_entry_point", split="eval")
    _, infos = envs.reset(seed=0)
    assert set(infos["prompt"]) <= {p.text for p in held_out}


def test_small_problem_spaces_hold_out_every_problem_they_can():
    problems = eval_problems(ArithmeticConfig(digits=1, operations="+"))
    assert 0 < len(problems) < 20 and all(p.held_out for p in problems)


# ---- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "match"), [
    ({"operations": "+/"}, r"operations='\+/'.*from '\+-\*'"),
    ({"operations": ""}, "non-empty string"),
    ({"digits": 0}, r"digits=0; give an integer from 1 to 9"),
    ({"digits": 10}, r"digits=10; give an integer from 1 to 9"),
    ({"max_new_tokens": 0}, "max_new_tokens=0"),
    ({"split": "test"}, "split='test'; use 'train' or 'eval'"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        gym.make("Arithmetic-v0", **options)


@pytest.mark.parametrize(("prompt", "match"), [
    ("3x4=", "not an arithmetic problem"),
    ("37 + 45 =", "no spaces"),
    ("05+37=", "leading zeros"),
    ("37+45", "not an arithmetic problem"),
    ("123+45=", "exactly digits=2 digits"),
    ("37-45=", r"uses '-', not one of operations='\+\*'"),
])
def test_bad_prompts_given_to_reset(prompt, match):
    env = gym.make("Arithmetic-v0")
    with pytest.raises(ValueError, match=match):
        env.reset(options={"prompt": prompt})
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        ArithmeticVerifier().score([prompt.replace("=", "")], ["1"])


# ---- the default policy -----------------------------------------------------------------
def test_default_policy_is_imperfect_but_not_useless():
    from rlhf_gym.build.arithmetic_policy import held_out_exact_match

    meta = json.loads((ARITHMETIC_POLICY / POLICY_META_FILE).read_text())
    recorded = meta["held_out_exact_match"]
    assert 0.05 < recorded["sampled"]["all"] < 0.95 and 0.05 < recorded["greedy"]["all"] < 0.95
    measured = held_out_exact_match(ARITHMETIC_POLICY, ArithmeticConfig(), deterministic=False, limit=64)
    assert 0.05 < measured["all"] < 0.95
    assert sum(p.stat().st_size for p in ARITHMETIC_POLICY.iterdir()) <= 3_000_000


def test_builder_writes_a_loadable_policy_with_its_record(tmp_path):
    from agents.lm import load_policy
    from rlhf_gym.build.arithmetic_policy import CARD_FILE, ArithmeticPolicyConfig, build_arithmetic_policy

    config = ArithmeticPolicyConfig(out=str(tmp_path / "policy"), work=str(tmp_path / "work"), num_demos=200,
                                    eval_size=16, n_layer=1, n_embd=16, n_head=2, max_steps=4, warmup_steps=0,
                                    eval_steps=2, progress=False)
    meta = build_arithmetic_policy(config)
    assert set(meta["held_out_exact_match"]) == {"greedy", "sampled"}
    assert meta["config"]["max_steps"] == 4 and "out" not in meta["config"]
    assert json.loads((tmp_path / "policy" / POLICY_META_FILE).read_text())["sft"]["steps"] == 4
    assert "Held-out exact match" in (tmp_path / "policy" / CARD_FILE).read_text()
    model, tokenizer = load_policy(tmp_path / "policy", device="cpu")
    assert len(tokenizer) == model.config.vocab_size == 18
    with pytest.raises(ValueError, match="must be >= 1"):
        ArithmeticPolicyConfig(max_steps=0)
