"""The fast rollout shared by every LM agent.

:func:`rollout` steps a whole batch of episodes through the Gymnasium vector API with
one KV-cached forward pass per token, feeding the model only the new tokens of the
episodes still running; the env decides when each response ends and scores it. It
records the log-prob and entropy of every sampled token (and, on request, the hidden
state that predicted it), so agents need no second pass of the sampling policy.
:mod:`agents.scoring` re-scores finished responses in one packed pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from agents.rollout_batch import RolloutBatch, interleave_env_tokens
from text_env import Task, TextGenerationEnv, TextGenerationVectorEnv
from text_env.observation import action_logits, next_token_logits, position_ids

__all__ = [
    "RolloutBatch",
    "autocast",
    "episode_uniforms",
    "make_rollout_env",
    "next_token_logprobs",
    "reduced_precision",
    "rollout",
    "sample_next_token",
]


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
    """Log-softmax of ``logits / temperature`` over the env's actions, disallowed tokens at probability 0.

    Every log-prob (sampling, old, reference, new) goes through here, so temperature and
    masking are applied identically everywhere (docs/ppo_details.md #4, #5); the logits are
    prepared by the observation contract's :func:`text_env.observation.action_logits`.
    """
    return action_logits(logits, vocab_size, temperature, allowed).log_softmax(-1)  # (..., V)


def reduced_precision(device: torch.device) -> bool:
    """Whether :func:`autocast` computes in bf16 on ``device`` (a CUDA device that supports it)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on a CUDA device that supports it, a no-op elsewhere: one code path for CPU and GPU.

    Log-probs stay float32 either way (:func:`next_token_logprobs` upcasts the logits).
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=reduced_precision(device))


SAMPLING_STREAM = 0x5A4D
"""Mixed into an episode's seed so its sampling stream is independent of the env's prompt draws."""
GAME_STREAM = 0x6A4D
"""Mixed into a group's seed so its game (on multi-turn tasks) is independent of the prompt and sampling draws."""


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


def _reset(env: gym.vector.VectorEnv, seed: int | None, group_size: int,
           prompts: Sequence[str] | None, generator: torch.Generator | None) -> dict[str, np.ndarray]:
    """Reset every sub-env; consecutive groups of ``group_size`` share one prompt and one game.

    Sharing the game matters on multi-turn tasks: a group's samples are compared with each other
    (RLOO's leave-one-out baseline, GRPO's group mean), and the comparison only credits the
    policy if they faced the same hidden number or opponent; otherwise it mostly measures luck.
    """
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
        options = {"reset_mask": group, "prompt": prompt}
        if group_size > 1:
            options["game_seed"] = _game_seed(seed, g * group_size, generator)
        obs, _ = env.reset(seed=seed if g == 0 else None, options=options)
    return obs


def _game_seed(seed: int | None, first: int, generator: torch.Generator | None) -> int:
    """The game seed of the group whose first sub-env is ``first``.

    A function of ``seed + first``, so a batch split over processes draws the games one process
    would; without a seed, drawn from ``generator``.
    """
    if seed is None:
        return int(torch.randint(2**31 - 1, (), generator=generator))
    return int(np.random.SeedSequence([seed + first, GAME_STREAM]).generate_state(1)[0])


def _scatter(live: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """``values`` of the live rows ``(b, ...)`` placed in a zero ``(n, ...)`` tensor of the whole batch."""
    return values.new_zeros((n, *values.shape[1:])).index_copy_(0, live, values)


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
    output_hidden: bool = False,
) -> RolloutBatch:
    """Reset ``env`` and sample every episode to its end, all together, one forward pass per token.

    Args:
        model: a causal LM (``model(input_ids, attention_mask, position_ids, cache)``),
            or None to sample uniformly over the allowed tokens (the random agent).
        env: a text vector env with autoreset DISABLED (see :func:`make_rollout_env`).
        temperature: logits are divided by it; train with 1.0-like values and no top-k/top-p
            so the sampled distribution is the one scored (docs/ppo_details.md #5).
        deterministic: greedy decoding instead of sampling.
        group_size: consecutive sub-envs share a prompt and, on multi-turn tasks, the game
            (k samples per prompt for RLOO, GRPO, best-of-n).
        prompts: one prompt per group instead of the env's own draws.
        seed: passed to ``env.reset`` (prompt draws); also seeds episode ``i``'s sampling with
            ``seed + i`` (:func:`episode_uniforms`), so a rollout split over processes with
            offset seeds samples the same tokens as one process.
        generator: torch RNG for sampling when ``seed`` is None.
        output_hidden: also record the last hidden state that predicted each token (``batch.hidden``).
    """
    if output_hidden and model is None:
        raise ValueError("output_hidden=True needs a model: a uniform random rollout has no hidden states.")
    task: Task = env.unwrapped.task
    obs = _reset(env, seed, group_size, prompts, generator)
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    n, vocab = env.num_envs, task.vocab_size
    # The most agent steps an episode can take: every turn at the length cap.
    max_steps = task.max_new_tokens * (task.max_turns if task.turn_rule is not None else 1)
    uniforms = None if seed is None else torch.from_numpy(episode_uniforms(range(seed, seed + n), max_steps)).to(device)
    prompt_len = int(obs["attention_mask"].sum(1).max())
    prompt_ids = torch.from_numpy(obs["input_ids"][:, -prompt_len:]).to(device)  # (B, P)
    prompt_mask = torch.from_numpy(obs["attention_mask"][:, -prompt_len:]).to(device)  # (B, P)

    # The model computes only the live rows, the episodes still running: a finished one would
    # just feed pad tokens (on the default task responses end after half the steps on average).
    live = torch.arange(n, device=device)  # (b,) batch rows the model computes
    # The attention mask over everything the KV cache holds, preallocated for one-turn episodes
    # (prompt + response) and widened when env tokens arrive; ``width`` columns are in use.
    attention = torch.zeros(n, prompt_len + task.max_new_tokens, dtype=torch.long, device=device)  # (b, P+T)
    attention[:, :prompt_len] = prompt_mask
    width = prompt_len
    position = position_ids(prompt_mask)  # (b, P)
    if model is not None:
        # The samples of a group share their prompt: prefill it once and repeat its KV cache.
        first = slice(None, None, group_size)
        with autocast(device):
            out = model(input_ids=prompt_ids[first], attention_mask=prompt_mask[first], position_ids=position[first],
                        use_cache=True, logits_to_keep=1, output_hidden_states=output_hidden)
        out.cache.batch_repeat_interleave(group_size)
        logits = out.logits[:, -1].repeat_interleave(group_size, 0)  # (b, V)
        state = out.hidden_states[-1][:, -1].repeat_interleave(group_size, 0) if output_hidden else None  # (b, H)
    else:
        logits = torch.zeros(n, vocab, device=device)  # (b, V): uniform
    position = position[:, -1]  # (b,)
    masked = task.action_mask is not None
    running = np.ones(n, dtype=bool)
    inserted: list[dict[int, tuple[list[int], bool]]] = [{} for _ in range(n)]  # row -> {step: (env tokens, restart)}
    final_infos: list[dict[str, Any]] = [{} for _ in range(n)]
    tokens, logps, entropies, hiddens, steps_running, step_masks, step_rewards = [], [], [], [], [], [], []

    for t in range(max_steps):
        allowed = torch.from_numpy(env.unwrapped.action_masks()).to(device) if masked else None  # (B, V)
        logp_all = next_token_logprobs(logits, temperature, vocab, None if allowed is None else allowed[live])  # (b, V)
        if uniforms is not None:
            u = uniforms[live, t]  # (b,)
        else:
            u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)[live]  # (b,)
        picked = _pick(logp_all, deterministic, u)  # (b,)
        token = torch.full((n,), task.pad_token_id, device=device).index_put_((live,), picked)  # (B,): pad when done
        tokens.append(token)
        logps.append(_scatter(live, logp_all.gather(-1, picked[:, None]).squeeze(-1), n))  # (B,)
        entropies.append(_scatter(live, -(logp_all.exp() * logp_all).sum(-1), n))  # (B,)
        if output_hidden:
            hiddens.append(_scatter(live, state, n))  # (B, H): the last hidden state that predicted the token
        steps_running.append(torch.from_numpy(running.copy()).to(device))  # (B,) a copy: `running` changes in place
        if masked:
            step_masks.append(allowed)

        _, rewards, terminated, truncated, infos = env.step(token.cpu().numpy())
        step_rewards.append(torch.from_numpy(np.where(running, rewards, 0.0)).to(device))  # (B,) float64
        ended = running & (terminated | truncated)
        for i in np.flatnonzero(ended):
            final_infos[i] = {k: v[i] for k, v in infos.items() if not k.startswith("_") and infos[f"_{k}"][i]}
        if "env_tokens" in infos:  # a turn ended and the env replied: those rows go on after its tokens
            for i in np.flatnonzero(infos["_env_tokens"] & running & ~ended):
                inserted[i][t] = (list(infos["env_tokens"][i]), bool(infos["restart"][i]))
        still = ~ended[live.cpu().numpy()]  # (b,) which live rows run on
        running &= ~ended
        if not running.any():
            break
        if not still.all():  # drop the rows that just finished, from the KV cache too
            keep = torch.from_numpy(np.flatnonzero(still)).to(device)
            live, attention, position = live[keep], attention[keep], position[keep]
            if model is not None:
                out.cache.batch_select_indices(keep)
        if model is None:
            logits = torch.zeros(len(live), vocab, device=device)  # (b, V)
            continue
        # Feed each live row its new token, and after a turn the env's tokens with it (one pass:
        # the KV cache grows by the widest row's block). Positions continue from the prompt's
        # (docs/ppo_details.md #6), or restart with a fresh context.
        blocks = [inserted[i].get(t) for i in live.tolist()]
        ids, block_mask, block_position, restart = _blocks(token[live], position, blocks)  # (b, K) x3, (b,)
        if width + ids.shape[1] > attention.shape[1]:
            attention = torch.cat([attention, attention.new_zeros(len(live), ids.shape[1] + task.max_new_tokens)], 1)
        if restart.any():  # a fresh rendering of the state replaces the context
            attention[restart, :width] = 0
            attention, width = _drop_unseen_columns(out.cache, attention, width)
        attention[:, width : width + ids.shape[1]] = block_mask
        width += ids.shape[1]
        position = block_position[:, -1]  # (b,)
        with autocast(device):
            out = model(input_ids=ids, attention_mask=attention[:, :width], position_ids=block_position,
                        cache=out.cache, use_cache=True, logits_to_keep=1, output_hidden_states=output_hidden)
        logits = out.logits[:, -1]  # (b, V)
        state = out.hidden_states[-1][:, -1] if output_hidden else None  # (b, H)
    if running.any():
        raise RuntimeError(
            f"sub-envs {np.flatnonzero(running).tolist()} did not end within {max_steps} steps; "
            "the env must end every response at its length cap and every episode within max_turns."
        )
    steps = {
        "response_ids": torch.stack(tokens, 1),  # (B, S)
        "response_mask": torch.stack(steps_running, 1).long(),  # (B, S)
        "logprobs": torch.stack(logps, 1),  # (B, S)
        "entropy": torch.stack(entropies, 1),  # (B, S)
        "step_rewards": torch.stack(step_rewards, 1),  # (B, S)
        "action_masks": torch.stack(step_masks, 1) if masked else None,  # (B, S, V)
        "hidden": torch.stack(hiddens, 1) if output_hidden else None,  # (B, S, H)
    }
    if task.turn_rule is not None:
        steps = interleave_env_tokens(steps, inserted, position_ids(prompt_mask)[:, -1], task.pad_token_id)
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, infos=final_infos,
                        rewards=steps["step_rewards"].sum(1).cpu().numpy(), **steps)


def _drop_unseen_columns(cache: Any, attention: torch.Tensor, width: int) -> tuple[torch.Tensor, int]:
    """Drop the oldest KV-cache columns once no live row attends to them (every row restarted past them).

    A restart only masks the old context; without this, every later step would still attend over
    the whole episode. Done for caches of plain layers (keys and values per layer), else skipped.
    """
    seen = attention[:, :width].any(0)  # (width,)
    lead = int(seen.long().argmax()) if seen.any() else width
    if lead < 8 or any(type(layer).__name__ != "DynamicLayer" for layer in getattr(cache, "layers", [None])):
        return attention, width
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
    return attention[:, lead:], width - lead


def _blocks(
    token: torch.Tensor, position: torch.Tensor, blocks: list[tuple[list[int], bool] | None]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each live row feeds the model next, right-aligned in one ``(b, K)`` block.

    A row feeds its new token; after a turn, also the env's tokens (appended), or only them
    (a restart: the new context begins at position 0). Returns the block's ids, mask and
    positions, and which rows restart.
    """
    if not any(blocks):  # one token per row: the common, one-turn case
        return token[:, None], torch.ones_like(token)[:, None], (position + 1)[:, None], torch.zeros_like(token).bool()
    rows = []
    for j, block in enumerate(blocks):
        if block is None:
            rows.append(([int(token[j])], int(position[j]) + 1))
        else:
            env_ids, fresh = block
            rows.append((env_ids if fresh else [int(token[j]), *env_ids], 0 if fresh else int(position[j]) + 1))
    k = max(len(r) for r, _ in rows)
    ids = token.new_zeros(len(rows), k)
    mask, positions = torch.zeros_like(ids), torch.zeros_like(ids)
    for j, (row, start) in enumerate(rows):
        ids[j, k - len(row) :] = torch.tensor(row)
        mask[j, k - len(row) :] = 1
        positions[j, k - len(row) :] = torch.arange(start, start + len(row))
    restart = torch.tensor([b is not None and b[1] for b in blocks], device=token.device)
    return ids, mask, positions, restart


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
    Gymnasium/SB3 surface; training rollouts use :func:`rollout` instead. The logits are the
    observation contract's (:func:`text_env.observation.next_token_logits`); ``action_masks``
    (bool ``(V,)`` or ``(N, V)``, e.g. the env's ``action_masks()``) gives disallowed tokens probability 0.
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
    allowed = None
    if action_masks is not None:
        allowed = torch.as_tensor(np.asarray(action_masks, dtype=bool).reshape(len(ids), -1), device=device)  # (N, V)
    with autocast(device):
        logits, _ = next_token_logits(
            model,
            torch.as_tensor(ids, dtype=torch.long, device=device),  # (N, W)
            torch.as_tensor(mask, dtype=torch.long, device=device),  # (N, W)
            vocab_size,
            temperature=temperature,
            action_mask=allowed,
            use_cache=False,
            logits_to_keep=1,
        )  # (N, V)
    uniform = torch.rand(len(ids), generator=generator, device=device, dtype=torch.float64)  # (N,)
    action = _pick(logits.log_softmax(-1), deterministic, uniform).cpu().numpy()  # (N,)
    return action[0] if single else action
