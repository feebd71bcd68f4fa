"""Property-based tests: random prompts, actions, batch sizes and reset patterns.

The env and the vector env must never fail except with the documented errors, and the
vector env must always equal single envs fed the same actions.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_task
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vector_env import assert_same

from text_env import TextGenerationEnv, TextGenerationVectorEnv

pytestmark = pytest.mark.filterwarnings("ignore:.*left-truncated")  # documented behaviour

TASK = make_task(max_new_tokens=5, max_prompt_tokens=12, stop_strings=("!",))
V = TASK.vocab_size
EOS = TASK.tokenizer.eos_token_id

prompts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
)  # unicode, control characters, empty, longer than the window
actions = st.integers(min_value=0, max_value=V - 1)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(prompt=prompts, seq=st.lists(actions, min_size=1, max_size=12))
def test_single_env_never_fails_and_keeps_its_invariants(prompt, seq):
    env = TextGenerationEnv(TASK)
    obs, info = env.reset(seed=0, options={"prompt": prompt})
    assert env.observation_space.contains(obs)
    total, steps = 0.0, 0
    for a in seq:
        obs, reward, terminated, truncated, info = env.step(a)
        steps += 1
        assert env.observation_space.contains(obs) and not truncated
        assert obs["input_ids"][-1] == a
        # attention mask is a contiguous block of ones at the right end
        ones = int(obs["attention_mask"].sum())
        assert obs["attention_mask"][len(obs["attention_mask"]) - ones :].all()
        total += reward
        if terminated:
            assert info["end_reason"] in ("eos", "stop_string", "max_new_tokens")
            assert info["response_length"] == steps <= TASK.max_new_tokens
            assert "!" not in info["response"]
            assert total == reward == info["response"].count("a")
            break
        assert reward == 0.0 and info == {}


@PROPS
@given(
    num_envs=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(["NextStep", "SameStep", "Disabled"]),
    steps=st.lists(
        st.tuples(st.lists(actions, min_size=9, max_size=9), st.lists(st.booleans(), min_size=9, max_size=9)),
        min_size=1,
        max_size=15,
    ),
)
def test_vector_env_equals_single_envs(num_envs, seed, mode, steps):
    vec = TextGenerationVectorEnv(TASK, num_envs, autoreset_mode=mode)
    singles = [TextGenerationEnv(TASK) for _ in range(num_envs)]
    obs, info = vec.reset(seed=seed)
    for i, env in enumerate(singles):
        o, inf = env.reset(seed=seed + i)
        np.testing.assert_array_equal(obs["input_ids"][i], o["input_ids"])
        assert info["prompt"][i] == inf["prompt"]
    finished = np.zeros(num_envs, dtype=bool)
    for acts, resets in steps:
        acts = np.array(acts[:num_envs])
        if mode == "Disabled":
            # random reset patterns: some finished and some running sub-envs are reset by mask
            mask = np.array(resets[:num_envs])
            if mask.any():
                vec.reset(options={"reset_mask": mask})
                for i in np.flatnonzero(mask):
                    singles[i].reset()
                finished &= ~mask
        obs, rewards, terminated, truncated, infos = vec.step(acts)
        for i, env in enumerate(singles):
            if mode == "NextStep" and finished[i]:
                o, inf = env.reset()
                r, term = 0.0, False
            elif mode == "Disabled" and finished[i]:
                assert terminated[i] and rewards[i] == 0.0
                continue
            else:
                o, r, term, _, inf = env.step(acts[i])
                if mode == "SameStep" and term:
                    assert_same(infos["final_obs"][i], o)
                    assert_same({k: v[i] for k, v in infos["final_info"].items() if not k.startswith("_")},
                                inf)
                    o, inf = env.reset()
            np.testing.assert_array_equal(obs["input_ids"][i], o["input_ids"])
            np.testing.assert_array_equal(obs["attention_mask"][i], o["attention_mask"])
            assert rewards[i] == r and terminated[i] == term
            for key, value in inf.items():
                assert infos[f"_{key}"][i] and infos[key][i] == value
        finished = terminated | truncated
