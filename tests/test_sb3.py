"""The SB3 adapter: the LM's logits as the action distribution, PPO / A2C / MaskablePPO through gym.make."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm
from sb3_helpers import quiet_sb3  # noqa: F401  (autouse fixture)

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

from sb3_contrib import MaskablePPO  # noqa: E402
from stable_baselines3 import A2C, PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

from agents.sb3 import LMActorCriticPolicy, MaskableLMActorCriticPolicy, lm_policy_kwargs  # noqa: E402
from reward_models import FunctionRewardModel  # noqa: E402
from text_env import Task, TextGenerationEnv  # noqa: E402
from text_env.char_tokenizer import char_tokenizer  # noqa: E402


def vec_env(task: Task | None, num_envs: int = 2, wrapper=None):
    # render_mode=None: make_vec_env asks gym.make for "rgb_array" first, which a text env refuses.
    return make_vec_env("RLHFText-v0", n_envs=num_envs, seed=0, env_kwargs={"task": task, "render_mode": None},
                        wrapper_class=wrapper)


def params(model) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.policy.parameters()).detach().clone()


def mean_score(model, task: Task, episodes: int = 32) -> float:
    env = gym.make("RLHFText-v0", task=task)
    scores = []
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            action, _ = model.predict(obs)
            obs, _, done, _, info = env.step(action)
        scores.append(info["score"])
    return float(np.mean(scores))


def test_distribution_is_lm_logits_at_last_position_sliced_to_action_space():
    task = count_task()
    lm = tiny_lm(task)
    lm.resize_token_embeddings(task.vocab_size + 5)  # model vocab larger than the tokenizer's
    policy = PPO(LMActorCriticPolicy, vec_env(task), policy_kwargs=lm_policy_kwargs(lm), seed=0).policy
    env = TextGenerationEnv(task)
    observations = []
    for prompt, actions in (("a", []), ("ba", [4, 5, 4]), ("b", [5])):  # different lengths in one batch
        obs, _ = env.reset(options={"prompt": prompt})
        for a in actions:
            obs, *_ = env.step(a)
        observations.append(obs)
    batch = {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    obs_tensor, _ = policy.obs_to_tensor(batch)
    with torch.no_grad():
        probs = policy.get_distribution(obs_tensor).distribution.probs  # (3, A)
        values = policy.predict_values(obs_tensor)  # (3, 1)
        for i, obs in enumerate(observations):
            tokens = torch.as_tensor(obs["input_ids"][obs["attention_mask"] == 1])[None]  # unpadded, (1, T)
            expected = torch.softmax(lm(tokens).logits[0, -1, : task.vocab_size], -1)  # (A,)
            torch.testing.assert_close(probs[i], expected)
    assert probs.shape == (3, task.vocab_size)
    assert torch.all(values == 0)  # zero-initialised value head


def test_dropout_stays_off_in_training_mode():
    task = count_task()
    policy = PPO(LMActorCriticPolicy, vec_env(task), policy_kwargs=lm_policy_kwargs(tiny_lm(task))).policy
    assert policy.features_extractor.lm.config.resid_pdrop > 0  # the model does have dropout to switch off
    policy.set_training_mode(True)
    obs_tensor, _ = policy.obs_to_tensor(TextGenerationEnv(task).reset(seed=0)[0])
    first, second = (policy.get_distribution(obs_tensor).distribution.logits for _ in range(2))
    assert not policy.features_extractor.lm.training
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_ppo_smoke_updates_lm_and_value_head():
    task = count_task(max_new_tokens=4)
    model = PPO(LMActorCriticPolicy, vec_env(task), policy_kwargs=lm_policy_kwargs(tiny_lm(task)),
                n_steps=16, batch_size=16, n_epochs=2, learning_rate=1e-3, seed=0)
    lm_before, value_before = params(model), model.policy.value_net.weight.detach().clone()
    model.learn(64)
    assert model.num_timesteps == 64
    assert not torch.equal(params(model), lm_before)
    assert not torch.equal(model.policy.value_net.weight, value_before)


def test_a2c_runs_and_updates():
    task = count_task(max_new_tokens=4)
    model = A2C(LMActorCriticPolicy, vec_env(task), policy_kwargs=lm_policy_kwargs(tiny_lm(task)),
                n_steps=4, learning_rate=1e-3, seed=0)
    before = params(model)
    model.learn(32)
    assert not torch.equal(params(model), before)


def no_repeat_rule(prompt: str, response_ids) -> np.ndarray:
    """Letters only (no pad/bos/unk), EOS allowed, never the previous response token again."""
    allowed = np.zeros(10, dtype=bool)
    allowed[2] = True  # EOS
    allowed[4:] = True  # a..f
    if response_ids:
        allowed[response_ids[-1]] = False
    return allowed


class RecordMasks(gym.Wrapper):
    """Records (action, mask in force) for every step the agent takes."""

    def __init__(self, env):
        super().__init__(env)
        self.steps = []

    def step(self, action):
        self.steps.append((int(action), self.env.unwrapped.action_masks().copy()))
        return self.env.step(action)


def test_maskable_ppo_never_emits_a_masked_action():
    task = Task(prompts=["ab", "c"], tokenizer=char_tokenizer("abcdef"), max_new_tokens=6, max_prompt_tokens=4,
                reward_model=FunctionRewardModel(lambda p, r: float(r.count("a"))), action_mask=no_repeat_rule)
    env = vec_env(task, wrapper=RecordMasks)
    model = MaskablePPO(MaskableLMActorCriticPolicy, env, policy_kwargs=lm_policy_kwargs(tiny_lm(task)),
                        n_steps=32, batch_size=32, n_epochs=2, learning_rate=1e-3, seed=0)
    model.learn(128)
    steps = [s for e in env.envs for s in e.get_wrapper_attr("steps")]
    assert len(steps) >= 128
    assert all(mask[action] for action, mask in steps)
    # The rule bans 4-5 of 10 tokens at every step, so an unmasked policy would have hit one.
    assert all(mask.sum() <= 7 for _, mask in steps)


def test_lm_by_path_and_save_load_round_trip(tmp_path):
    task = count_task()
    tiny_lm(task).save_pretrained(tmp_path / "lm")
    model = PPO(LMActorCriticPolicy, vec_env(task), policy_kwargs=lm_policy_kwargs(str(tmp_path / "lm")),
                n_steps=8, batch_size=16, n_epochs=1, learning_rate=1e-3, seed=0)
    model.learn(16)
    obs = TextGenerationEnv(task).reset(seed=0)[0]
    obs_tensor, _ = model.policy.obs_to_tensor(obs)
    expected = model.policy.get_distribution(obs_tensor).distribution.probs.detach()

    model.save(tmp_path / "ppo")
    reloaded = PPO.load(tmp_path / "ppo", device="cpu")
    model.policy.save(tmp_path / "policy.pt")
    policy_only = LMActorCriticPolicy.load(tmp_path / "policy.pt", device="cpu")
    for policy in (reloaded.policy, policy_only):
        torch.testing.assert_close(policy.get_distribution(obs_tensor).distribution.probs.detach(), expected)


def test_bad_arguments_name_the_fix():
    task = count_task()
    with pytest.raises(ValueError, match="net_arch"):
        lm_policy_kwargs(tiny_lm(task), net_arch=[64])
    with pytest.raises(TypeError, match="lm="):
        lm_policy_kwargs(42)
    small = tiny_lm(count_task(tokenizer=char_tokenizer("a")))  # 5 tokens for a 6-token action space
    with pytest.raises(ValueError, match="Discrete"):
        PPO(LMActorCriticPolicy, vec_env(task), policy_kwargs=lm_policy_kwargs(small))


def test_ppo_learns_to_emit_the_rewarded_token():
    """Reward = count of 'a' among 10 tokens: from ~0.4 at random init to ~5.8 of 6 in 2048 steps (~3 s)."""
    task = Task(prompts=["ab", "c", "fed"], tokenizer=char_tokenizer("abcdef"), max_new_tokens=6,
                max_prompt_tokens=4, reward_model=FunctionRewardModel(lambda p, r: float(r.count("a"))))
    model = PPO(LMActorCriticPolicy, vec_env(task, num_envs=4), policy_kwargs=lm_policy_kwargs(tiny_lm(task)),
                n_steps=32, batch_size=64, n_epochs=4, learning_rate=1e-3, gamma=1.0, seed=0)
    before = mean_score(model, task)
    model.learn(2048)
    after = mean_score(model, task)
    print(f"mean count of 'a': {before:.2f} -> {after:.2f}")
    assert before < 1.5
    assert after > 4.5


def test_default_policy_when_the_assets_are_built():
    from text_env.defaults import default_policy_path

    try:
        default_policy_path()
        env = vec_env(None, num_envs=1)
    except FileNotFoundError as e:
        pytest.skip(f"no embedded default assets: {e}")
    model = PPO(LMActorCriticPolicy, env, n_steps=8, batch_size=8, n_epochs=1)  # no policy_kwargs: lm=None
    assert model.policy.features_extractor.n_actions == env.action_space.n
    model.learn(8)


# ---- agents.SB3PPO: SB3 PPO with the KL wrapper as an agent like the others ------------------------
def sb3_ppo_agent(tmp_path, **overrides):
    from agents.sb3_ppo import SB3PPO, SB3PPOConfig

    task = count_task(max_new_tokens=4)
    if not (tmp_path / "lm").is_dir():
        tiny_lm(task).save_pretrained(tmp_path / "lm")
    options = dict(num_envs=2, n_steps=8, num_mini_batches=2, learning_rate=1e-3, beta=0.1,
                   log_dir=str(tmp_path / "run"), save_steps=1)
    options.update(overrides)
    return SB3PPO(task, str(tmp_path / "lm"), SB3PPOConfig(**options))


def test_sb3_ppo_agent_trains_logs_counts_and_checkpoints(tmp_path):
    from rlhf_common.training import has_checkpoint, read_log

    agent = sb3_ppo_agent(tmp_path)
    before = torch.nn.utils.parameters_to_vector(agent.policy.parameters()).detach().clone()
    agent.learn(32, progress_bar=False)
    assert agent.num_timesteps == 32 and agent.num_episodes > 0 and agent.train_seconds > 0
    assert not torch.equal(torch.nn.utils.parameters_to_vector(agent.policy.parameters()), before)
    rows = read_log(tmp_path / "run" / "progress.csv")
    assert [r["step"] for r in rows] == ["1", "2"] and int(rows[-1]["episodes"]) == agent.num_episodes
    assert {"score", "kl", "response_length", "seconds"} <= set(rows[0])
    assert has_checkpoint(agent.checkpoint_dir) and (tmp_path / "run" / "policy" / "config.json").is_file()
    obs = TextGenerationEnv(agent.task).reset(seed=0)[0]
    action, _ = agent.predict(obs, deterministic=True)
    assert 0 <= int(action) < agent.task.vocab_size


def test_sb3_ppo_agent_resumes_and_loads_its_checkpoint(tmp_path):
    from agents.sb3_ppo import SB3PPO
    from rlhf_common.training import read_log

    first = sb3_ppo_agent(tmp_path).learn(32, progress_bar=False)
    again = sb3_ppo_agent(tmp_path).learn(48, resume=True, progress_bar=False)  # a new process resuming the run
    assert again.num_timesteps == 48 and again.num_episodes > first.num_episodes
    assert again.train_seconds > first.train_seconds
    assert [r["step"] for r in read_log(tmp_path / "run" / "progress.csv")] == ["1", "2", "3"]
    loaded = SB3PPO.load(again.checkpoint_dir, count_task(max_new_tokens=4))
    assert (loaded.num_timesteps, loaded.num_episodes) == (48, again.num_episodes)
    assert torch.equal(torch.nn.utils.parameters_to_vector(loaded.policy.parameters()),
                       torch.nn.utils.parameters_to_vector(again.policy.parameters()))


def test_sb3_ppo_config_refuses_minibatches_that_do_not_divide_the_rollout():
    from agents.sb3_ppo import SB3PPOConfig

    with pytest.raises(ValueError, match="num_mini_batches"):
        SB3PPOConfig(num_envs=2, n_steps=3, num_mini_batches=4)
