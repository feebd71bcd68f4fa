"""The fast rollout: KV-cache correctness under left padding, agreement with the env, masks, speed shape."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from rl_helpers import count_task, tiny_lm

from agents.rollout import make_rollout_env, next_token_logprobs, rollout, sample_next_token
from agents.scoring import pack_sequences, response_logprobs
from text_env import TextGenerationEnv, TextGenerationVectorEnv

torch.set_num_threads(1)
# Prompts of 2..12 tokens: a batch is left-padded by up to 10 slots.
PROMPTS = ["a", "ab", "babab", "aaaaabbbbba"]


@pytest.fixture
def task():
    return count_task(max_new_tokens=10, prompts=PROMPTS, max_prompt_tokens=12)


def _rollout(model, task, n=16, **kwargs):
    return rollout(model, make_rollout_env(task, n), seed=0, generator=torch.Generator().manual_seed(0), **kwargs)


def padded_logprobs(model, batch, temperature):
    """(B, T, V) next-token log-probs of the batch padded the plain way: left-padded prompts, an attention mask."""
    ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    return next_token_logprobs(logits[:, batch.prompt_ids.shape[1] - 1 : -1], temperature, logits.shape[-1])


@pytest.mark.parametrize(("temperature", "group_size"), [(1.0, 1), (0.7, 1), (1.0, 4)])
def test_rollout_logprobs_equal_recomputed_ones(task, temperature, group_size):
    # RLOO and PPOKL take the policy's old log-probs, entropy and (shared value head) hidden states
    # from the rollout instead of a second forward pass: valid because they equal a recomputation.
    # (Groups prefill their shared prompt once; finished rows leave the model's batch.)
    model = tiny_lm(task)
    batch = _rollout(model, task, temperature=temperature, group_size=group_size, output_hidden=True)
    lengths = batch.prompt_mask.sum(1)
    assert lengths.min() < lengths.max(), "the batch must mix prompt lengths to exercise left padding"
    assert batch.lengths.min() < batch.lengths.max(), "and response lengths, to exercise finished rows"
    mask = batch.response_mask == 1
    full = response_logprobs(model, batch, temperature, task.vocab_size, output_hidden=True)
    assert torch.allclose(full.logprobs, batch.logprobs, atol=1e-5)
    assert torch.allclose(full.hidden, batch.hidden, atol=1e-5)
    assert (full.logprobs[~mask] == 0).all() and (batch.logprobs[~mask] == 0).all() and (batch.hidden[~mask] == 0).all()
    logp = padded_logprobs(model, batch, temperature)  # (B, T, V)
    entropy = -(logp.exp() * logp).sum(-1) * mask
    assert torch.allclose(batch.entropy, entropy, atol=1e-5) and (batch.entropy[mask] > 0).all()


def user_lm(task, arch: str):
    """A tiny randomly initialised causal LM of another family, as a user might bring."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    tok = task.tokenizer
    common = dict(vocab_size=task.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=1)).eval()
    return GPTNeoXForCausalLM(GPTNeoXConfig(**common)).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_packed_sequences_match_the_padded_forward(task, arch):
    # Packing relies on the model separating sequences by restarting position_ids (sdpa/eager):
    # checked on the three families users bring most (rotary and learned positions, GQA).
    model = tiny_lm(task) if arch == "gpt2" else user_lm(task, arch)
    batch = _rollout(model, task)
    packed = pack_sequences(batch)
    rows = packed.input_ids.shape[0]
    assert (packed.position_ids == 0).sum() > rows, "some rows must hold several sequences"
    assert packed.input_ids.numel() < batch.prompt_ids.numel() + batch.response_ids.numel()  # less than padded
    expected = padded_logprobs(model, batch, 1.0).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    expected = expected * batch.response_mask  # (B, T)
    assert torch.allclose(response_logprobs(model, batch, 1.0, task.vocab_size).logprobs, expected, atol=1e-5)
    index = torch.tensor([5, 0, 11])  # a minibatch packs on its own
    got = response_logprobs(model, batch, 1.0, task.vocab_size, index=index).logprobs
    assert torch.allclose(got, expected[index], atol=1e-5)


def test_responses_match_env_infos(task):
    batch = _rollout(tiny_lm(task), task)
    for i, info in enumerate(batch.infos):
        n = int(batch.lengths[i])
        assert batch.response_mask[i, :n].all() and not batch.response_mask[i, n:].any()  # right-padded
        assert (batch.response_ids[i, n:] == task.pad_token_id).all()
        ids = batch.response_ids[i, :n].tolist()
        assert info["response_length"] == n
        assert info["response"] == task.response_text(ids)
        assert info["end_reason"] == task.end_reason(ids)
        assert batch.rewards[i] == info["score"] == info["response"].count("a")
        prompt_ids = batch.prompt_ids[i][batch.prompt_mask[i] == 1].tolist()
        assert prompt_ids == task.encode_prompt(info["prompt"])


def test_one_forward_per_token_with_only_new_tokens(task):
    model = tiny_lm(task)
    shapes = []
    model.register_forward_pre_hook(lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    batch = _rollout(model, task)
    steps = batch.response_ids.shape[1]
    assert shapes[0] == tuple(batch.prompt_ids.shape)  # one prefill over the prompts
    assert [w for _, w in shapes[1:]] == [1] * (steps - 1)  # then one new token per step, KV cache reused
    # ... of the episodes still running only: step k feeds the rows whose response is longer than k.
    assert [b for b, _ in shapes[1:]] == [int((batch.lengths > k).sum()) for k in range(1, steps)]


def test_groups_share_prompts_and_explicit_prompts(task):
    model = tiny_lm(task)
    prefill = []
    model.register_forward_pre_hook(lambda m, args, kwargs: prefill.append(kwargs["input_ids"].shape) or None,
                                    with_kwargs=True)
    batch = _rollout(model, task, n=8, group_size=4)
    prompts = [info["prompt"] for info in batch.infos]
    assert prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4
    assert prefill[0][0] == 2  # each group's prompt is prefilled once
    batch = _rollout(tiny_lm(task), task, n=4, group_size=2, prompts=["b", "aa"])
    assert [info["prompt"] for info in batch.infos] == ["b", "b", "aa", "aa"]
    with pytest.raises(ValueError, match="group_size=3"):
        _rollout(tiny_lm(task), task, n=4, group_size=3)


def test_action_masks_are_obeyed_and_scored(task):
    # Only 'b' and EOS allowed after the first token: the first token is free.
    vocab = task.vocab_size
    b, eos = task.tokenizer.convert_tokens_to_ids("b"), task.tokenizer.eos_token_id

    def rule(prompt, response_ids):
        allowed = np.zeros(vocab, dtype=bool)
        if not response_ids:
            allowed[:] = True
        allowed[[b, eos]] = True
        return allowed

    masked = count_task(max_new_tokens=10, prompts=PROMPTS, max_prompt_tokens=12, action_mask=rule)
    model = tiny_lm(masked)
    batch = _rollout(model, masked)
    later = batch.response_ids[:, 1:][batch.response_mask[:, 1:] == 1]
    assert set(later.tolist()) <= {b, eos}
    assert batch.action_masks.shape == (16, batch.response_ids.shape[1], vocab)
    full = response_logprobs(model, batch, 1.0, vocab)
    assert torch.allclose(full.logprobs, batch.logprobs, atol=1e-5)
    # Under the mask, the probabilities of 'b' and EOS after the first token sum to 1.
    unmasked = response_logprobs(model, dataclasses.replace(batch, action_masks=None), 1.0, vocab)
    assert (full.logprobs[:, 1:] >= unmasked.logprobs[:, 1:]).all()


def test_random_rollout_is_uniform(task):
    batch = _rollout(None, task, n=64)
    expected = -np.log(task.vocab_size)
    assert torch.allclose(batch.logprobs[batch.response_mask == 1], torch.tensor(expected, dtype=torch.float32))


def test_deterministic_rollout_is_greedy(task):
    model = tiny_lm(task)
    first, second = (_rollout(model, task, deterministic=True) for _ in range(2))
    assert torch.equal(first.response_ids, second.response_ids)
    logits = model(input_ids=first.prompt_ids, attention_mask=first.prompt_mask,
                   position_ids=(first.prompt_mask.cumsum(1) - 1).clamp(min=0)).logits[:, -1]
    assert torch.equal(first.response_ids[:, 0], logits.argmax(-1))


def test_make_rollout_env_accepts_gym_objects_and_rejects_autoreset(task):
    vec = gym.make_vec("RLHFText-v0", num_envs=4, vectorization_mode="vector_entry_point", task=task,
                       autoreset_mode=AutoresetMode.DISABLED)
    assert make_rollout_env(vec, 4) is vec
    assert make_rollout_env(TextGenerationEnv(task), 3).num_envs == 3
    with pytest.raises(ValueError, match="DISABLED"):
        make_rollout_env(TextGenerationVectorEnv(task, 4), 4)
    with pytest.raises(ValueError, match="num_envs=4"):
        make_rollout_env(vec, 8)
    with pytest.raises(TypeError, match="not a text environment"):
        make_rollout_env(gym.make("CartPole-v1"), 4)


def test_sample_next_token_single_and_batched(task):
    model = tiny_lm(task)
    env = TextGenerationVectorEnv(task, 3)
    obs, _ = env.reset(seed=0)
    batched = sample_next_token(model, obs, vocab_size=task.vocab_size, deterministic=True)
    single = sample_next_token(model, {k: v[1] for k, v in obs.items()}, vocab_size=task.vocab_size,
                               deterministic=True)
    assert batched.shape == (3,) and single.shape == () and single == batched[1]
    only_b = np.zeros((3, task.vocab_size), dtype=bool)
    only_b[:, 5] = True
    assert (sample_next_token(model, obs, vocab_size=task.vocab_size, action_masks=only_b) == 5).all()
