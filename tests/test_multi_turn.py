"""Multi-turn episodes: the env's turns, the KV-cached rollout over them, and agents that leave env tokens alone."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from rl_helpers import count_a, tiny_lm, turns_task
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from agents import PPOKL, RLOO, PPOKLConfig, RLOOConfig
from agents.grpo import GRPO, GRPOConfig
from agents.reinforce_pp import ReinforcePP, ReinforcePPConfig
from agents.rollout import make_rollout_env, rollout
from agents.scoring import response_logprobs
from reward_models import FunctionRewardModel
from text_env import Reply, Task, TextGenerationEnv
from text_env.char_tokenizer import char_tokenizer

torch.set_num_threads(1)
MODES = ["conversation", "state"]


def play(env: TextGenerationEnv, letters: str) -> list[tuple[float, bool, dict]]:
    """Type ``letters`` (EOS after each ``|``) until the episode ends; the step results."""
    tok, out = env.task.tokenizer, []
    for ch in letters:
        token = tok.eos_token_id if ch == "|" else tok.convert_tokens_to_ids(ch)
        _, reward, terminated, _, info = env.step(token)
        out.append((reward, terminated, info))
        if terminated:
            break
    return out


@pytest.mark.parametrize("mode", MODES)
def test_game_replies_and_rewards_every_turn(mode):
    env = TextGenerationEnv(turns_task(mode))
    env.reset(seed=0)
    steps = play(env, "a|aa|bb|")
    turn_ends = [(r, info) for r, _, info in steps if "turn" in info or "turns" in info]
    assert len(turn_ends) == 3 and steps[-1][1]  # three responses; the last ('bb') ends the game
    assert [r for r, _ in turn_ends] == pytest.approx([1 - 0.1, 2 - 0.1, 0 + 1.0])  # count_a + the game's reward
    final = steps[-1][2]
    assert final["turns"] == 3 and final["return"] == pytest.approx(3.8) and final["score"] == 3.0
    assert final["response"].startswith("a" + turn_ends[0][1]["reply"])
    assert all(len(info["env_tokens"]) for _, info in turn_ends[:2])
    if mode == "state":  # the fresh context is the reply alone, as a prompt
        assert all(info["restart"] for _, info in turn_ends[:2])


def test_max_turns_ends_the_episode_and_conversation_is_truncated_with_a_warning():
    env = TextGenerationEnv(turns_task("conversation", max_turns=2, max_prompt_tokens=4))
    env.reset(seed=1)
    with pytest.warns(UserWarning, match="left-truncated"):
        steps = play(env, "aaa|aaa|")
    assert steps[-1][1] and steps[-1][2]["turns"] == 2 and steps[-1][2]["reply"] is None
    assert sum(r for r, _, _ in steps) == pytest.approx(steps[-1][2]["return"])


@pytest.mark.parametrize("mode", MODES)
def test_check_env_passes(mode):
    check_env(TextGenerationEnv(turns_task(mode)), skip_render_check=True)
    sb3_check_env(TextGenerationEnv(turns_task(mode)), warn=False)


def test_bad_turn_settings_are_refused():
    with pytest.raises(ValueError, match="max_turns=0"):
        turns_task(max_turns=0)
    with pytest.raises(ValueError, match="next_observation"):
        turns_task("screen")
    long_reply = turns_task(turn_rule=lambda p, rng: type("G", (), {"reply": lambda self, r: Reply("a" * 50)})())
    env = TextGenerationEnv(long_reply)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="does not fit max_prompt_tokens=12"):
        play(env, "a|")
    not_a_reply = turns_task(turn_rule=lambda p, rng: type("G", (), {"reply": lambda self, r: "hi"})())
    env = TextGenerationEnv(not_a_reply)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="return a text_env.Reply"):
        play(env, "a|")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group_size", [1, 2])
def test_rollout_logprobs_equal_recomputed_ones_across_turns(mode, group_size):
    """The KV-cached rollout (env tokens fed as blocks, contexts restarted) scores what a packed pass scores."""
    task = turns_task(mode)
    model = tiny_lm(task, n_layer=1)
    batch = rollout(model, make_rollout_env(task, 16), seed=3, group_size=group_size)
    assert batch.env_mask is not None and batch.env_mask.sum() > 0
    assert not (batch.env_mask.bool() & batch.response_mask.bool()).any()
    again = response_logprobs(model, batch, 1.0, task.vocab_size).logprobs
    torch.testing.assert_close(again, batch.logprobs, atol=2e-5, rtol=0)
    # Every episode's rewards: summed over its turns, and each turn's on its last agent token.
    np.testing.assert_allclose(batch.rewards, [info["return"] for info in batch.infos])
    assert (batch.step_rewards.ne(0).sum(1).cpu().numpy() <= [info["turns"] for info in batch.infos]).all()
    # The stream holds each episode's responses and replies, in order.
    tok = task.tokenizer
    for i, info in enumerate(batch.infos):
        stream = batch.response_ids[i][batch.stream_mask[i].bool()].tolist()
        if mode == "conversation" and not any(batch.positions[i].diff() < 0):  # no truncation: text round-trips
            assert tok.decode(stream, skip_special_tokens=True) == info["response"]


def letter_task(mode: str) -> Task:
    """Rewards 'a'; the env answers in 'c', a letter the agent may never write: env tokens are the only 'c's."""
    tok = char_tokenizer("abc")
    c = tok.convert_tokens_to_ids("c")

    def no_c(prompt, response_ids):
        mask = np.ones(len(tok), dtype=bool)
        mask[c] = False
        return mask

    class Cs:
        def __init__(self, prompt, rng):
            self.rng = rng

        def reply(self, response):
            return Reply("c" * int(self.rng.integers(1, 4)), reward=0.0)

    return Task(prompts=["a", "b", "ab"], tokenizer=tok, reward_model=FunctionRewardModel(count_a), max_new_tokens=4,
                max_prompt_tokens=16, action_mask=no_c, turn_rule=Cs, max_turns=3, next_observation=mode)


AGENTS = {
    "ppo_kl": lambda task, log: PPOKL(task, tiny_lm(task), PPOKLConfig(batch_size=8, num_mini_batches=2, beta=0.5,
                                                                       save_steps=0, log_dir=log)),
    "rloo": lambda task, log: RLOO(task, tiny_lm(task), RLOOConfig(batch_size=8, num_generations=2, beta=0.5,
                                                                   save_steps=0, log_dir=log)),
    "grpo": lambda task, log: GRPO(task, tiny_lm(task), GRPOConfig(batch_size=8, num_generations=2, beta=0.5,
                                                                   save_steps=0, log_dir=log)),
    "reinforce_pp": lambda task, log: ReinforcePP(task, tiny_lm(task), ReinforcePPConfig(
        batch_size=8, num_generations=1, beta=0.5, save_steps=0, log_dir=log)),
}


@pytest.mark.parametrize("name", sorted(AGENTS))
@pytest.mark.parametrize("mode", MODES)
def test_env_tokens_get_no_policy_loss_and_no_kl(name, mode, tmp_path):
    """Untied output layer: its row for 'c' gets a gradient only if some loss or KL term scores 'c' as an action."""
    task = letter_task(mode)
    agent = AGENTS[name](task, str(tmp_path))
    agent.policy.config.tie_word_embeddings = False
    head = agent.policy.lm_head
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    agent.optimizer = torch.optim.Adam([p for p in agent.policy.parameters() if p.requires_grad], lr=1e-3)
    c = task.tokenizer.convert_tokens_to_ids("c")
    a = task.tokenizer.convert_tokens_to_ids("a")
    grads = []
    head.weight.register_hook(lambda g: grads.append((float(g[c].abs().max()), float(g[a].abs().max()))))
    metrics, steps = agent._iteration()
    assert grads, "no backward pass reached the output layer"
    assert max(gc for gc, _ in grads) == 0.0  # env tokens: no policy loss, no KL term
    assert max(ga for _, ga in grads) > 0.0  # the agent's own tokens do get one
    assert metrics["turns"] > 1


def test_rollout_on_a_registered_multi_turn_id_runs_through_make_vec():
    """A multi-turn task through gym.make_vec's vector entry point, as agents build it from an id."""
    env = gym.make_vec("RLHFText-v0", num_envs=4, vectorization_mode="vector_entry_point",
                       task=turns_task("state"), autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    batch = rollout(None, make_rollout_env(env, 4), seed=0)
    assert all(1 <= info["turns"] <= 3 for info in batch.infos)
    assert batch.lengths.tolist() == [info["response_length"] for info in batch.infos]


def test_predict_plays_whole_multi_turn_episodes_through_the_gym_loop(tmp_path):
    """SB3-style predict (generic agents, best-of-n's plan per turn) acts only on the agent's turns."""
    from agents import BestOfN, BestOfNConfig

    task = turns_task("conversation")
    agent = BestOfN(task, tiny_lm(task), BestOfNConfig(batch_size=4, num_generations=4, log_dir=str(tmp_path)))
    env = TextGenerationEnv(task)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        state, start, done = None, True, False
        while not done:
            action, state = agent.predict(obs, state=state, episode_start=np.array([start]))
            obs, _, done, _, info = env.step(int(action))
            start = False
        assert 1 <= info["turns"] <= 3


def test_closing_a_task_whose_turn_rule_is_a_game_class_with_close():
    """A Game class given as the rule has an unbound close(); Task.close must not call it."""

    class Closing:
        def __init__(self, prompt, rng):
            pass

        def reply(self, response):
            return Reply(None)

        def close(self):
            raise AssertionError("a game instance's close is not the task's business")

    env = TextGenerationEnv(turns_task(turn_rule=Closing))
    env.reset(seed=0)
    env.close()
