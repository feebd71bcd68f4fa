"""The fast rollout shared by every LM agent, and one-pass log-probs of finished responses.

:func:`rollout` steps a whole batch of episodes through the Gymnasium vector API with
one KV-cached forward pass per token, feeding the model only the new tokens; the env
decides when each response ends and scores the batch. :func:`response_logprobs`
re-scores prompt + response in one forward pass (policy, reference and new-policy
log-probs all come from it, so they agree with each other exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from text_env import Task, TextGenerationEnv, TextGenerationVectorEnv

__all__ = [
    "ResponseOutput",
    "RolloutBatch",
    "autocast",
    "episode_uniforms",
    "make_rollout_env",
    "next_token_logprobs",
    "response_logprobs",
    "rollout",
    "sample_next_token",
    "sequence_inputs",
]


@dataclass
class RolloutBatch:
    """One synchronous batch of finished episodes, on the model's device."""

    prompt_ids: torch.Tensor
    """(B, P) prompt tokens, left-padded to the batch's longest prompt."""
    prompt_mask: torch.Tensor
    """(B, P) 1 on prompt tokens, 0 on padding."""
    response_ids: torch.Tensor
    """(B, T) sampled tokens, right-padded with the task's pad id to the longest response."""
    response_mask: torch.Tensor
    """(B, T) 1 on response tokens, 0 on padding."""
    logprobs: torch.Tensor
    """(B, T) log-probs of the sampled tokens under the temperature-scaled (masked) policy; 0 on padding."""
    rewards: np.ndarray
    """(B,) the env's final-step rewards: score minus the task's penalties."""
    infos: list[dict[str, Any]]
    """The env's final ``info`` per episode: prompt, response, score, end_reason, gold_score, ..."""
    action_masks: torch.Tensor | None
    """(B, T, V) bool allowed tokens at each response step, when the task has an action-mask rule."""

    @property
    def scores(self) -> np.ndarray:
        """(B,) raw reward-model scores."""
        return np.array([info["score"] for info in self.infos])

    @property
    def gold_scores(self) -> np.ndarray | None:
        """(B,) gold scores, when the task has a gold scorer."""
        if "gold_score" not in self.infos[0]:
            return None
        return np.array([info["gold_score"] for info in self.infos])

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) response lengths in tokens."""
        return self.response_mask.sum(1)

    def metrics(self) -> dict[str, float]:
        """Episode statistics every agent logs: proxy and gold score, length, share ended by EOS."""
        out = {
            "score": float(self.scores.mean()),
            "reward": float(self.rewards.mean()),
            "response_length": float(self.lengths.float().mean()),
            "eos_fraction": float(np.mean([info["end_reason"] == "eos" for info in self.infos])),
        }
        gold = self.gold_scores
        if gold is not None:
            out["gold_score"] = float(gold.mean())
        return out


@dataclass
class ResponseOutput:
    """Per-token outputs of :func:`response_logprobs`."""

    logprobs: torch.Tensor
    """(B, T) log-probs of the response tokens, 0 on padding."""
    entropy: torch.Tensor
    """(B, T) entropy of the next-token distribution, 0 on padding."""
    hidden: torch.Tensor | None
    """(B, T, H) last hidden state at the position that predicts each response token (the state s_t)."""


def make_rollout_env(env: Any, num_envs: int) -> gym.vector.VectorEnv:
    """A vector env with autoreset disabled and ``num_envs`` sub-envs, from what an agent was given.

    Accepts a :class:`TextGenerationVectorEnv` (or a wrapper of one) with autoreset
    DISABLED, a single :class:`TextGenerationEnv` (its task is reused), a
    :class:`Task`, or a registered env id such as ``"RLHFText-v0"``.
    """
    if isinstance(env, str):
        env = gym.make_vec(env, num_envs=num_envs, vectorization_mode="vector_entry_point",
                           autoreset_mode=AutoresetMode.DISABLED)
    elif isinstance(env, Task):
        env = TextGenerationVectorEnv(env, num_envs, autoreset_mode=AutoresetMode.DISABLED)
    elif isinstance(env, gym.Env) and isinstance(env.unwrapped, TextGenerationEnv):
        env = TextGenerationVectorEnv(env.unwrapped.task, num_envs, autoreset_mode=AutoresetMode.DISABLED)
    if not isinstance(getattr(env, "unwrapped", None), TextGenerationVectorEnv):
        raise TypeError(
            f"env {env!r} is not a text environment; pass a TextGenerationVectorEnv, a "
            "TextGenerationEnv, a text_env.Task or an id such as 'RLHFText-v0'."
        )
    if env.unwrapped.autoreset_mode != AutoresetMode.DISABLED:
        raise ValueError(
            f"env has autoreset_mode={env.unwrapped.autoreset_mode}; rollouts need synchronous batches: "
            "build it with autoreset_mode=AutoresetMode.DISABLED (or pass a single env or a Task)."
        )
    if env.num_envs != num_envs:
        raise ValueError(
            f"env has num_envs={env.num_envs} but the agent's batch size is {num_envs}; make them "
            "equal, or pass a single env or a Task and let the agent build the batch."
        )
    return env


def next_token_logprobs(
    logits: torch.Tensor, temperature: float, vocab_size: int, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-softmax of ``logits / temperature`` over the env's actions, disallowed tokens at -inf.

    Every log-prob (sampling, old, reference, new) goes through here, so temperature and
    masking are applied identically everywhere (PPO_NOTES #4, #5).
    """
    logits = logits[..., :vocab_size].float() / temperature  # (..., V): a model may pad its vocab
    if allowed is not None:
        # finfo.min, not -inf: exp gives 0 and 0 * logp stays 0 in the entropy.
        logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
    return logits.log_softmax(-1)


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on a CUDA device that supports it, a no-op elsewhere: one code path for CPU and GPU.

    Log-probs stay float32 either way (:func:`next_token_logprobs` upcasts the logits).
    """
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


SAMPLING_STREAM = 0x5A4D
"""Mixed into an episode's seed so its sampling stream is independent of the env's prompt draws."""


def episode_uniforms(seeds: Sequence[int], steps: int) -> np.ndarray:
    """(len(seeds), steps) uniforms in [0, 1): episode ``i`` samples its tokens from ``seeds[i]`` alone.

    An episode's tokens then depend on its own seed, not on which process, Ray worker or
    batch row generated it: a batch split over workers or ranks samples what one process would.
    """
    return np.stack([np.random.default_rng([int(s), SAMPLING_STREAM]).random(steps) for s in seeds])


def _pick(logp: torch.Tensor, deterministic: bool, uniform: torch.Tensor) -> torch.Tensor:
    """A token per row: argmax, or inverse-CDF sampling from ``exp(logp)`` with one uniform ``(B,)`` per row."""
    if deterministic:
        return logp.argmax(-1)  # (B,)
    cdf = logp.double().exp().cumsum(-1)  # (B, V) float64: disallowed tokens add exactly 0
    # Scale by the row's total so rounding can never point past the last allowed token.
    token = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True).squeeze(-1)  # (B,)
    return token.clamp(max=logp.shape[-1] - 1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # Left padding: each row's first real token is position 0 (PPO_NOTES #6).
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _reset(env: gym.vector.VectorEnv, seed: int | None, group_size: int,
           prompts: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Reset every sub-env; consecutive groups of ``group_size`` share one prompt."""
    n = env.num_envs
    if n % group_size:
        raise ValueError(f"group_size={group_size} must divide the env's num_envs={n}.")
    if prompts is None:
        obs, infos = env.reset(seed=seed)
        if group_size == 1:
            return obs
        prompts = [str(p) for p in infos["prompt"][::group_size]]  # env RNG draws, one per group
    if len(prompts) * group_size != n:
        raise ValueError(
            f"{len(prompts)} prompts x group_size={group_size} != num_envs={n}; give num_envs/group_size prompts."
        )
    for g, prompt in enumerate(prompts):
        group = np.zeros(n, dtype=bool)
        group[g * group_size : (g + 1) * group_size] = True
        obs, _ = env.reset(seed=seed if g == 0 else None, options={"reset_mask": group, "prompt": prompt})
    return obs


@torch.no_grad()
def rollout(
    model: Any | None,
    env: gym.vector.VectorEnv,
    *,
    temperature: float = 1.0,
    deterministic: bool = False,
    group_size: int = 1,
    prompts: Sequence[str] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> RolloutBatch:
    """Reset ``env`` and sample every episode to its end, all together, one forward pass per token.

    Args:
        model: a causal LM (``model(input_ids, attention_mask, position_ids, past_key_values)``),
            or None to sample uniformly over the allowed tokens (the random agent).
        env: a text vector env with autoreset DISABLED (see :func:`make_rollout_env`).
        temperature: logits are divided by it; train with 1.0-like values and no top-k/top-p
            so the sampled distribution is the one scored (PPO_NOTES #5).
        deterministic: greedy decoding instead of sampling.
        group_size: consecutive sub-envs share a prompt (k samples per prompt for RLOO, best-of-n).
        prompts: one prompt per group instead of the env's own draws.
        seed: passed to ``env.reset`` (prompt draws); also seeds episode ``i``'s sampling with
            ``seed + i`` (:func:`episode_uniforms`), so a rollout split over processes with
            offset seeds samples the same tokens as one process.
        generator: torch RNG for sampling when ``seed`` is None.
    """
    task: Task = env.unwrapped.task
    obs = _reset(env, seed, group_size, prompts)
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    n, max_new = env.num_envs, task.max_new_tokens
    uniforms = None if seed is None else torch.from_numpy(episode_uniforms(range(seed, seed + n), max_new)).to(device)
    prompt_len = int(obs["attention_mask"].sum(1).max())
    prompt_ids = torch.from_numpy(obs["input_ids"][:, -prompt_len:]).to(device)  # (B, P)
    prompt_mask = torch.from_numpy(obs["attention_mask"][:, -prompt_len:]).to(device)  # (B, P)

    # One preallocated mask for prompt + response; column P+t is 1 where token t is real.
    attention = torch.zeros(n, prompt_len + max_new, dtype=torch.long, device=device)  # (B, P+T)
    attention[:, :prompt_len] = prompt_mask
    position = _positions(prompt_mask)  # (B, P)
    if model is not None:
        with autocast(device):
            out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position,
                        use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1]  # (B, V)
    else:
        logits = torch.zeros(n, task.vocab_size, device=device)  # (B, V): uniform
    position = position[:, -1]  # (B,)
    masked = task.action_mask is not None
    running = np.ones(n, dtype=bool)
    rewards = np.zeros(n, dtype=np.float64)
    final_infos: list[dict[str, Any]] = [{} for _ in range(n)]
    tokens, logps, steps_running, step_masks = [], [], [], []
    pad = torch.tensor(task.pad_token_id, device=device)

    for t in range(max_new):
        allowed = torch.from_numpy(env.unwrapped.action_masks()).to(device) if masked else None  # (B, V)
        logp_all = next_token_logprobs(logits, temperature, task.vocab_size, allowed)  # (B, V)
        is_running = torch.tensor(running, device=device)  # (B,) a copy: `running` changes in place
        if uniforms is not None:
            u = uniforms[:, t]  # (B,)
        else:
            u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)  # (B,)
        token = torch.where(is_running, _pick(logp_all, deterministic, u), pad)  # (B,)
        tokens.append(token)
        logps.append(logp_all.gather(-1, token[:, None]).squeeze(-1) * is_running)  # (B,)
        steps_running.append(is_running)
        if masked:
            step_masks.append(allowed)

        _, step_rewards, terminated, truncated, infos = env.step(token.cpu().numpy())
        ended = running & (terminated | truncated)
        for i in np.flatnonzero(ended):
            rewards[i] = step_rewards[i]
            final_infos[i] = {k: v[i] for k, v in infos.items() if not k.startswith("_") and infos[f"_{k}"][i]}
        running &= ~ended
        if not running.any():
            break
        if model is None:
            continue
        # Feed only the new token; finished rows get the pad token, masked out (PPO_NOTES #6).
        attention[:, prompt_len + t] = is_running
        position = position + 1
        with autocast(device):
            out = model(input_ids=token[:, None], attention_mask=attention[:, : prompt_len + t + 1],
                        position_ids=position[:, None], past_key_values=out.past_key_values, use_cache=True)
        logits = out.logits[:, -1]  # (B, V)
    if running.any():
        raise RuntimeError(
            f"sub-envs {np.flatnonzero(running).tolist()} did not end within max_new_tokens={max_new}; "
            "the env must terminate every episode by its length cap."
        )
    response_mask = torch.stack(steps_running, 1).long()  # (B, T)
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=torch.stack(tokens, 1),  # (B, T)
        response_mask=response_mask,
        logprobs=torch.stack(logps, 1),  # (B, T)
        rewards=rewards,
        infos=final_infos,
        action_masks=torch.stack(step_masks, 1) if masked else None,  # (B, T, V)
    )


def sequence_inputs(batch: RolloutBatch, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` (b, P+T) of prompt + response rows."""
    rows = slice(None) if index is None else index
    input_ids = torch.cat([batch.prompt_ids[rows], batch.response_ids[rows]], 1)  # (b, P+T)
    attention = torch.cat([batch.prompt_mask[rows], batch.response_mask[rows]], 1)  # (b, P+T)
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": _positions(attention)}


def response_logprobs(
    model: Any,
    batch: RolloutBatch,
    temperature: float,
    vocab_size: int,
    output_hidden: bool = False,
    index: torch.Tensor | None = None,
) -> ResponseOutput:
    """Log-probs and entropy of each response token in one forward pass over prompt + response.

    Runs under the caller's grad mode: wrap in ``torch.no_grad()`` for reference and old
    log-probs. ``index`` selects a minibatch of rows. With ``output_hidden``, also the
    last hidden states that predict each token (what a shared value head reads).
    """
    rows = slice(None) if index is None else index
    response_ids, response_mask = batch.response_ids[rows], batch.response_mask[rows]  # (b, T)
    n_resp = response_ids.shape[1]
    with autocast(response_ids.device):
        out = model(**sequence_inputs(batch, index), use_cache=False, output_hidden_states=output_hidden,
                    logits_to_keep=n_resp + 1)
    allowed = None if batch.action_masks is None else batch.action_masks[rows]  # (b, T, V)
    # Position P-1+t predicts response token t; the last position predicts nothing.
    logp_all = next_token_logprobs(out.logits[:, :-1], temperature, vocab_size, allowed)  # (b, T, V)
    logp = logp_all.gather(-1, response_ids[..., None]).squeeze(-1) * response_mask  # (b, T)
    entropy = -(logp_all.exp() * logp_all).sum(-1) * response_mask  # (b, T)
    hidden = out.hidden_states[-1][:, -n_resp - 1 : -1] if output_hidden else None  # (b, T, H)
    return ResponseOutput(logprobs=logp, entropy=entropy, hidden=hidden)


@torch.no_grad()
def sample_next_token(
    model: Any,
    obs: dict[str, np.ndarray],
    *,
    vocab_size: int,
    temperature: float = 1.0,
    deterministic: bool = False,
    action_masks: np.ndarray | None = None,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """The next token for one observation ``(W,)`` or a batch ``(N, W)``: the generic ``predict`` path.

    Runs the model over the whole window (no cache): simple and stateless, for the
    Gymnasium/SB3 surface; training rollouts use :func:`rollout` instead.
    """
    ids, mask = np.asarray(obs["input_ids"]), np.asarray(obs["attention_mask"])
    single = ids.ndim == 1
    if single:
        ids, mask = ids[None], mask[None]
    if ids.shape != mask.shape or ids.ndim != 2:
        raise ValueError(
            f"obs input_ids {ids.shape} and attention_mask {mask.shape} must have the same shape, "
            "(W,) or (N, W)."
        )
    device = next(model.parameters()).device
    keep = int(mask.sum(1).max())  # right-aligned: drop all-padding columns on the left
    ids_t = torch.as_tensor(ids[:, -keep:], dtype=torch.long, device=device)  # (N, L)
    mask_t = torch.as_tensor(mask[:, -keep:], dtype=torch.long, device=device)  # (N, L)
    with autocast(device):
        logits = model(input_ids=ids_t, attention_mask=mask_t, position_ids=_positions(mask_t),
                       use_cache=False, logits_to_keep=1).logits[:, -1]  # (N, V)
    allowed = None
    if action_masks is not None:
        allowed = torch.as_tensor(np.asarray(action_masks, dtype=bool).reshape(len(ids), -1), device=device)
    uniform = torch.rand(len(ids), generator=generator, device=device, dtype=torch.float64)  # (N,)
    action = _pick(next_token_logprobs(logits, temperature, vocab_size, allowed), deterministic, uniform)
    action = action.cpu().numpy()  # (N,)
    return action[0] if single else action
