"""Gymnasium wrappers for text environments, one concern each."""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from text_env.observation import next_token_logits

__all__ = ["KLRewardWrapper"]


class KLRewardWrapper(gym.Wrapper):
    r"""Adds ``beta * log pi_ref(a|s)`` to every step's reward: KL regularisation for any agent.

    With an entropy bonus of ``beta`` in the agent (SB3: ``ent_coef=beta``) the agent
    maximises ``E[score] - beta * KL(pi || pi_ref)`` in expectation:

        E_pi[sum_t r_t + beta log pi_ref(a_t|s_t)] + beta H(pi)
        = E[score] - beta E_pi[sum_t (log pi - log pi_ref)(a_t|s_t)] = E[score] - beta KL(pi || pi_ref)

    The value is the same, the gradient is not: an entropy bonus in the loss acts on the
    current state only, so the ``-beta log pi`` of later tokens never reaches the returns
    while ``beta log pi_ref`` (about ``-beta H`` per token) does. Returns then fall with
    every token and the agent learns to end responses early. Two fixes:

    * exact: subtract ``beta * log pi(a|s)`` of the rollout policy from each reward and
      drop the entropy bonus (SB3: ``agents.sb3.KLPenaltyCallback``); every reward then
      holds the per-token KL penalty of RLHF PPO, as in ``agents.PPOKL``;
    * any agent with an entropy bonus: ``center=True`` also adds ``beta * H(pi_ref(.|s))``,
      the reference's entropy standing in for the missing future entropy. The bonus
      then averages 0 while ``pi == pi_ref``; the objective gains
      ``beta * E[sum_t H(pi_ref(.|s_t))]``, which cancels the missing term as long as
      ``H(pi) ~ H(pi_ref)`` (small KL).

    ``log pi_ref(a|s)`` is computed from the observation before the step by a frozen
    reference model (``eval()``, no gradient) with :func:`text_env.observation.next_token_logits`,
    as every policy reading the observation does: normalized over the action space (the
    model's logits are sliced to ``action_space.n``) and, when
    the env gives ``info["action_mask"]``, over the allowed tokens, so that the
    reference is the distribution the masked env lets a policy sample.

    The reference reuses its KV cache within an episode (one token per step) whenever
    the new observation is the old one plus the action; otherwise it re-runs the window.

    ``info["ref_logprob"]`` holds ``log pi_ref(a|s)`` of each step, and the final
    ``info["episode_ref_logprob"]`` the response's log-likelihood under the reference.
    ``info["score"]`` stays the reward model's raw score.

    Example (a tiny untrained reference; use your SFT model):
        >>> import gymnasium as gym
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from reward_models import FunctionRewardModel
        >>> from text_env import Task
        >>> from text_env.char_tokenizer import char_tokenizer
        >>> tok = char_tokenizer("ab")
        >>> task = Task(prompts=["ab"], tokenizer=tok, reward_model=FunctionRewardModel(lambda p, r: r.count("a")))
        >>> ref = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=8, n_layer=1, n_head=1))
        >>> env = KLRewardWrapper(gym.make("RLHFText-v0", task=task), ref_model=ref, beta=0.1)
        >>> _ = env.reset(seed=0)
        >>> _, reward, terminated, _, info = env.step(tok.convert_tokens_to_ids("a"))
        >>> terminated, reward - 0.1 * info["ref_logprob"]  # no score before the last step
        (False, 0.0)

    Args:
        env: a text env with a ``Dict(input_ids, attention_mask)`` observation (right-aligned)
            and a ``Discrete`` action space.
        ref_model: a Hugging Face causal LM (any ``torch.nn.Module`` returning ``.logits``),
            the SFT policy; put in eval mode. Pass a copy, never the model being trained.
        beta: KL coefficient, >= 0; use the same value as the agent's entropy coefficient.
        device: where the reference runs; None keeps it where its parameters are.
        use_cache: reuse the KV cache across the steps of an episode (False: re-run the
            whole prefix every step; same numbers, slower).
        center: also add ``beta * H(pi_ref(.|s))`` (see above; for agents using an entropy bonus).
    """

    def __init__(
        self,
        env: gym.Env,
        ref_model: torch.nn.Module,
        beta: float,
        device: str | torch.device | None = None,
        use_cache: bool = True,
        center: bool = False,
    ) -> None:
        super().__init__(env)
        obs_space = env.observation_space
        if not isinstance(obs_space, spaces.Dict) or {"input_ids", "attention_mask"} - set(obs_space):
            raise ValueError(
                f"env's observation space {obs_space} is not Dict(input_ids, attention_mask); wrap a text env."
            )
        if not isinstance(env.action_space, spaces.Discrete):
            raise ValueError(f"env's action space {env.action_space} is not Discrete; wrap a text env.")
        if not (math.isfinite(float(beta)) and beta >= 0):
            raise ValueError(f"beta={beta!r} must be a finite float >= 0 (e.g. 0.05).")
        if not isinstance(ref_model, torch.nn.Module):
            raise TypeError(f"ref_model={ref_model!r} is not a torch model; load one with agents.lm.load_causal_lm.")
        self.beta = float(beta)
        self.use_cache = use_cache
        self.center = center
        self.n_actions = int(env.action_space.n)
        self.device = torch.device(device) if device is not None else next(ref_model.parameters()).device
        self.ref_model = ref_model.to(self.device).eval()
        self._tokens = np.zeros(0, dtype=np.int64)  # real tokens of the current observation
        self._past: Any = None  # the reference's KV cache for self._tokens
        self._logprobs: torch.Tensor | None = None  # (A,) log pi_ref(.|s) of the current state
        self._entropy = 0.0  # H(pi_ref(.|s)) of the current state, when centering
        self._episode_logprob = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset the env and score the prompt with the reference."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode_logprob = 0.0
        self._past = None
        self._observe(obs, info, action=None)
        return obs, info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env; add ``beta * log pi_ref(action | previous observation)`` (``+ beta * H`` centred)."""
        if self._logprobs is None:
            raise RuntimeError("step() called before reset() (or after the episode ended); call reset() first.")
        ref_logprob = float(self._logprobs[int(action)])
        bonus = self.beta * (ref_logprob + self._entropy)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._episode_logprob += ref_logprob
        info["ref_logprob"] = ref_logprob
        if terminated or truncated:
            info["episode_ref_logprob"] = self._episode_logprob
            self._logprobs, self._past = None, None
        else:
            self._observe(obs, info, action=int(action))
        return obs, float(reward) + bonus, terminated, truncated, info

    @torch.no_grad()
    def _observe(self, obs: dict[str, np.ndarray], info: dict[str, Any], action: int | None) -> None:
        """Set ``self._logprobs`` to log pi_ref(.|obs), from the KV cache when obs = previous + action."""
        tokens = np.asarray(obs["input_ids"])[np.asarray(obs["attention_mask"]) == 1]  # (T,) real tokens
        grown = (
            self.use_cache
            and self._past is not None
            and action is not None
            and len(tokens) == len(self._tokens) + 1
            and tokens[-1] == action
            and np.array_equal(tokens[:-1], self._tokens)
        )
        new = tokens[-1:] if grown else tokens  # (N,) tokens the reference has not seen
        mask = info.get("action_mask")
        allowed = None if mask is None else torch.as_tensor(mask, device=self.device)[None] != 0  # (1, A)
        logits, out = next_token_logits(
            self.ref_model,
            torch.as_tensor(new, device=self.device)[None],  # (1, N)
            # All ones, cache included: the agent may emit the pad token, and it is real text here.
            torch.ones(1, len(tokens), dtype=torch.long, device=self.device),  # (1, T)
            self.n_actions,  # the model's vocabulary sliced to the action space
            cache=self._past if grown else None,
            action_mask=allowed,
            use_cache=self.use_cache,
        )
        self._past = out.cache if self.use_cache else None
        self._tokens = tokens
        logprobs = torch.log_softmax(logits[0], dim=-1)  # (A,)
        if allowed is not None:
            # log 0 = -inf exactly for a disallowed token: a task with enforce_action_mask=False lets one be taken.
            logprobs = logprobs.masked_fill(~allowed[0], -math.inf)
        self._logprobs = logprobs.cpu()  # (A,)
        if self.center:
            self._entropy = float(torch.distributions.Categorical(logits=self._logprobs).entropy())
