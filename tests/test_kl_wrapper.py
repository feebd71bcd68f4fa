"""KLRewardWrapper: the added reward is beta * log pi_ref(a|s), and with an entropy bonus it is -beta * KL."""

from __future__ import annotations

import copy
import doctest

import gymnasium as gym
import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm
from sb3_helpers import quiet_sb3  # noqa: F401  (autouse fixture)

import text_env.wrappers
from reward_models import FunctionRewardModel
from text_env import Task, TextGenerationEnv
from text_env.char_tokenizer import char_tokenizer
from text_env.observation import next_token_logits
from text_env.wrappers import KLRewardWrapper

BETA = 0.3

@torch.no_grad()
def ref_logprobs(ref, obs, n_actions: int, mask=None) -> torch.Tensor:
    """log pi_ref(.|obs) the plain way: the padded window, position ids from the attention mask."""
    ids = torch.as_tensor(obs["input_ids"])[None]  # (1, W)
    attention = torch.as_tensor(obs["attention_mask"])[None]  # (1, W)
    positions = (attention.cumsum(1) - 1).clamp(min=0)  # (1, W)
    logits = ref(input_ids=ids, attention_mask=attention, position_ids=positions).logits[0, -1, :n_actions]  # (A,)
    if mask is not None:
        logits = logits.masked_fill(torch.as_tensor(mask) == 0, -torch.inf)
    return torch.log_softmax(logits, -1)  # (A,)


class LastTokensOnly(gym.ObservationWrapper):
    """Shows only the last 3 tokens, so an observation is not the previous one plus the action."""

    def observation(self, obs):
        keep = np.zeros_like(obs["attention_mask"])
        keep[-3:] = obs["attention_mask"][-3:]
        return {"input_ids": obs["input_ids"], "attention_mask": keep}


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("sliding", [False, True], ids=["growing", "sliding-window"])
def test_added_reward_is_beta_times_reference_log_prob(use_cache, sliding):
    task = count_task(max_new_tokens=6)
    ref = tiny_lm(task)
    ref.resize_token_embeddings(task.vocab_size + 3)  # the reference scores more tokens than the env has
    inner = LastTokensOnly(TextGenerationEnv(task)) if sliding else TextGenerationEnv(task)
    env = KLRewardWrapper(inner, copy.deepcopy(ref), beta=BETA, use_cache=use_cache)
    fed = []  # tokens the reference reads per call: 1 per step once the KV cache is in use
    env.ref_model.register_forward_pre_hook(lambda m, args, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True)
    rng = np.random.default_rng(0)
    for episode in range(4):
        obs, _ = env.reset(seed=episode)
        done, total = False, 0.0
        while not done:
            action = int(rng.choice([0, 1, 3, 4, 5]))  # anything but EOS (pad and bos included): full length
            expected = ref_logprobs(ref, obs, task.vocab_size)[action].item()
            obs, reward, done, _, info = env.step(action)
            score = info.get("score", 0.0)
            assert info["ref_logprob"] == pytest.approx(expected, abs=1e-5)
            assert reward == pytest.approx(score + BETA * expected, abs=1e-5)
            total += expected
        assert info["episode_ref_logprob"] == pytest.approx(total, abs=1e-4)
        assert info["response_length"] == 6
    if sliding:  # once the shown window stops growing, the cache cannot apply: full recomputation
        assert fed.count(3) >= 4 * 4
    else:  # 5 incremental calls per episode with the cache (none after the last step)
        assert fed.count(1) == (4 * 5 if use_cache else 0)


def test_reference_is_renormalized_over_the_action_mask():
    def letters_only(prompt, response_ids):
        return np.array([0, 0, 1, 0, 1, 1 if len(response_ids) % 2 else 0], dtype=bool)  # eos, a, b on odd steps

    task = count_task(action_mask=letters_only)
    ref = tiny_lm(task)
    env = KLRewardWrapper(TextGenerationEnv(task), copy.deepcopy(ref), beta=BETA)
    obs, info = env.reset(seed=0)
    for _ in range(4):
        masked = ref_logprobs(ref, obs, task.vocab_size, mask=info["action_mask"])[4].item()
        assert masked > ref_logprobs(ref, obs, task.vocab_size)[4].item()  # the banned tokens' mass moved
        obs, reward, _, _, info = env.step(4)
        assert reward == pytest.approx(BETA * masked, abs=1e-6)


def test_expected_bonus_plus_entropy_is_minus_beta_kl():
    """E_pi[beta log pi_ref(a|s)] + beta H(pi(.|s)) = -beta KL(pi || pi_ref): 0 when pi == pi_ref."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from agents.sb3 import LMActorCriticPolicy, lm_policy_kwargs

    task = count_task(reward_model=FunctionRewardModel(lambda p, r: 0.0))  # reward = the wrapper's bonus only
    ref = tiny_lm(task)
    prefix = [4, 5]  # the state: prompt "ab", response "ab"
    env = KLRewardWrapper(TextGenerationEnv(task), copy.deepcopy(ref), beta=BETA)

    def bonus(action: int) -> float:
        env.reset(options={"prompt": "ab"})
        for a in prefix:
            env.step(a)
        return env.step(action)[1]

    bonuses = torch.tensor([bonus(a) for a in range(task.vocab_size)])  # (A,)
    state = env.reset(options={"prompt": "ab"})[0]
    for a in prefix:
        state = env.step(a)[0]
    ref_dist = torch.distributions.Categorical(logits=ref_logprobs(ref, state, task.vocab_size))

    venv = make_vec_env("RLHFText-v0", n_envs=1, env_kwargs={"task": task, "render_mode": None})
    for perturb in (0.0, 0.5):
        policy_lm = copy.deepcopy(ref)
        with torch.no_grad():
            policy_lm.lm_head.weight.add_(perturb * torch.randn_like(policy_lm.lm_head.weight))
        policy = PPO(LMActorCriticPolicy, venv, policy_kwargs=lm_policy_kwargs(policy_lm)).policy
        with torch.no_grad():
            pi = policy.get_distribution(policy.obs_to_tensor(state)[0]).distribution  # batch of 1
        lhs = (pi.probs[0] * bonuses).sum() + BETA * pi.entropy()[0]
        kl = torch.distributions.kl_divergence(pi, ref_dist)[0]
        torch.testing.assert_close(lhs, -BETA * kl, atol=1e-5, rtol=1e-4)
        if perturb == 0:
            assert abs(lhs.item()) < 1e-5
        else:
            assert kl.item() > 0.01  # the identity was checked away from the trivial point too


def test_center_adds_the_reference_entropy_so_the_bonus_averages_zero_under_the_reference():
    task = count_task(reward_model=FunctionRewardModel(lambda p, r: 0.0))
    ref = tiny_lm(task)
    env = KLRewardWrapper(TextGenerationEnv(task), copy.deepcopy(ref), beta=BETA, center=True)

    def bonus(action: int) -> float:
        env.reset(options={"prompt": "ab"})
        env.step(4)
        return env.step(action)[1]

    bonuses = torch.tensor([bonus(a) for a in range(task.vocab_size)])  # (A,)
    env.reset(options={"prompt": "ab"})
    logp = ref_logprobs(ref, env.step(4)[0], task.vocab_size)  # (A,) at the state after "a"
    entropy = -(logp.exp() * logp).sum()
    torch.testing.assert_close(bonuses, BETA * (logp + entropy), atol=1e-5, rtol=1e-5)
    assert abs((logp.exp() * bonuses).sum().item()) < 1e-5  # mean 0 under pi_ref
    assert entropy.item() > 1.0  # so the uncentred bonus would average -beta * H, clearly not 0


def test_kl_penalty_callback_stores_the_per_token_kl_as_reward():
    """Wrapper + KLPenaltyCallback: stored reward = beta * (log pi_ref - log pi), 0 while pi == pi_ref."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from agents.sb3 import KLPenaltyCallback, LMActorCriticPolicy, lm_policy_kwargs

    task = count_task(reward_model=FunctionRewardModel(lambda p, r: 0.0), max_new_tokens=4)
    ref = tiny_lm(task)
    venv = make_vec_env(lambda: KLRewardWrapper(gym.make("RLHFText-v0", task=task), ref, beta=BETA), n_envs=2)
    stored = {}
    for name, callbacks in (("with", [KLPenaltyCallback(BETA)]), ("without", [])):
        model = PPO(LMActorCriticPolicy, venv, policy_kwargs=lm_policy_kwargs(copy.deepcopy(ref)), n_steps=8,
                    batch_size=16, n_epochs=1, seed=0)
        model.learn(16, callback=callbacks)  # one rollout, collected before any update: pi == pi_ref
        stored[name] = model.rollout_buffer.rewards  # (8, 2)
    assert np.abs(stored["with"]).max() < 1e-5
    assert np.abs(stored["without"]).min() > 0.05  # beta * log pi_ref: the callback did the cancelling


def test_bad_arguments_name_the_fix():
    task = count_task()
    env = TextGenerationEnv(task)
    with pytest.raises(ValueError, match="beta"):
        KLRewardWrapper(env, tiny_lm(task), beta=-0.1)
    with pytest.raises(TypeError, match="ref_model"):
        KLRewardWrapper(env, "gpt2", beta=0.1)
    with pytest.raises(ValueError, match="Dict"):
        KLRewardWrapper(gym.make("CartPole-v1"), tiny_lm(task), beta=0.1)
    with pytest.raises(RuntimeError, match="reset"):
        KLRewardWrapper(env, tiny_lm(task), beta=0.1).step(4)


def test_docstring_example_runs():
    result = doctest.testmod(text_env.wrappers, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_works_under_sb3_with_gym_make():
    """The wrapper composes with gym.make, SB3's Monitor and DummyVecEnv, and MaskablePPO's action_masks()."""
    pytest.importorskip("sb3_contrib")
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.env_util import make_vec_env

    from agents.sb3 import MaskableLMActorCriticPolicy, lm_policy_kwargs

    task = Task(prompts=["ab"], tokenizer=char_tokenizer("ab"), max_new_tokens=4, max_prompt_tokens=4,
                reward_model=FunctionRewardModel(lambda p, r: float(r.count("a"))),
                action_mask=lambda p, r: np.array([0, 0, 1, 0, 1, 1], dtype=bool))
    ref = tiny_lm(task)
    venv = make_vec_env(lambda: KLRewardWrapper(gym.make("RLHFText-v0", task=task), ref, beta=BETA), n_envs=2)
    model = MaskablePPO(MaskableLMActorCriticPolicy, venv, policy_kwargs=lm_policy_kwargs(copy.deepcopy(ref)),
                        n_steps=16, batch_size=16, n_epochs=1, ent_coef=BETA, seed=0)
    model.learn(32)
    assert model.num_timesteps == 32


def test_next_token_logits_ignore_left_padding_and_agree_with_the_kv_cache():
    """The observation contract: a padded window, the unpadded tokens and a cached step give the same logits."""
    task = count_task()
    lm = tiny_lm(task)
    lm.resize_token_embeddings(task.vocab_size + 2)
    tokens = torch.tensor([[1, 4, 5, 4, 0]])  # (1, 5) pad id 0 as real text at the end
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), tokens], 1)  # (1, 8) left-padded
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], 1)  # (1, 8)
    with torch.no_grad():
        plain = lm(tokens).logits[:, -1, : task.vocab_size]  # (1, A)
        from_window, _ = next_token_logits(lm, padded, mask, task.vocab_size)
        _, prefix = next_token_logits(lm, tokens[:, :-1], torch.ones(1, 4, dtype=torch.long), task.vocab_size,
                                      use_cache=True)
        cached, _ = next_token_logits(lm, tokens[:, -1:], torch.ones(1, 5, dtype=torch.long), task.vocab_size,
                                      cache=prefix.cache)
        allowed = torch.tensor([[False, True, True, False, True, True]])
        masked, _ = next_token_logits(lm, padded, mask, task.vocab_size, temperature=0.5, action_mask=allowed)
    assert from_window.shape == (1, task.vocab_size)
    torch.testing.assert_close(from_window, plain)
    torch.testing.assert_close(cached, plain)
    torch.testing.assert_close(masked[allowed], plain[allowed] / 0.5)
    assert masked.softmax(-1)[~allowed].sum() == 0


def test_a_disallowed_token_taken_anyway_has_reference_log_prob_minus_infinity():
    task = count_task(action_mask=lambda p, r: np.array([0, 0, 1, 0, 1, 0], dtype=bool), enforce_action_mask=False)
    env = KLRewardWrapper(TextGenerationEnv(task), tiny_lm(task), beta=BETA)
    env.reset(seed=0)
    assert np.isfinite(env.step(4)[4]["ref_logprob"])
    assert env.step(5)[4]["ref_logprob"] == -np.inf  # 'b' is masked out, but the task lets it through
