"""A Hugging Face causal LM as a stable-baselines3 actor-critic policy for text_env environments.

The policy reads the ``Dict(input_ids, attention_mask)`` observation (right-aligned, so
the newest token is at index -1), runs the LM once, and returns

* the action distribution: Categorical over the LM's next-token logits at index -1,
  sliced to the action space when the model's vocabulary is larger than the tokenizer's
  (:func:`text_env.observation.next_token_logits`, shared with the KL wrapper and ``predict``);
* the value: a linear head (zero-initialised, as in Ziegler et al. 2019) on the LM's
  last hidden state at index -1, sharing the LM backbone.

    >>> from stable_baselines3 import PPO
    >>> model = PPO(LMActorCriticPolicy, env, policy_kwargs=lm_policy_kwargs("path/to/lm"))  # doctest: +SKIP
    >>> from sb3_contrib import MaskablePPO
    >>> model = MaskablePPO(MaskableLMActorCriticPolicy, env, policy_kwargs=lm_policy_kwargs(lm))  # doctest: +SKIP

KL regularisation: wrap the env in ``text_env.wrappers.KLRewardWrapper(env, ref, beta)``
and pass ``callback=KLPenaltyCallback(beta)`` to ``learn`` with ``ent_coef=0``: every
stored reward then carries the exact per-token KL penalty.

Cost, inherent to SB3's one-observation-per-step design: the rollout re-runs the whole
window (prompt + response so far) for every token, O(T) where a KV-cached rollout is
O(1), and the update re-encodes the window once per token sample where ``agents.PPOKL``
encodes each response once. The adapter trims all-padding columns and computes logits at
the last position only; ``bench/sb3_vs_ppokl.py`` measured SB3 19x slower per token than
PPOKL with the default policy, 90% of it in the update.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from agents.lm import load_causal_lm
from text_env.observation import next_token_logits

try:
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.type_aliases import Schedule
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        f"agents.sb3 needs stable-baselines3 and sb3-contrib ({e}); install them with pip install 'rlhf-gym[sb3]'."
    ) from e

__all__ = [
    "KLPenaltyCallback",
    "LMActorCriticPolicy",
    "LMFeaturesExtractor",
    "MaskableLMActorCriticPolicy",
    "lm_policy_kwargs",
]

LMSpec = str | os.PathLike[str] | nn.Module | None
"""A causal LM: a Hugging Face folder or hub name, a model object, or None for the embedded default policy."""

_OWNED = ("features_extractor_class", "features_extractor_kwargs", "net_arch", "ortho_init", "share_features_extractor")
"""SB3 policy options that define the network layout: the adapter sets them itself."""


def lm_policy_kwargs(lm: LMSpec = None, *, trust_remote_code: bool = False, **policy_kwargs: Any) -> dict[str, Any]:
    """``policy_kwargs`` for :class:`LMActorCriticPolicy` / :class:`MaskableLMActorCriticPolicy`.

    ``lm`` is a folder or hub name (loaded with ``agents.lm.load_causal_lm`` onto CUDA when
    present, as SB3's ``device="auto"``; SB3 then moves it to the algorithm's device), a
    causal LM object (trained in place: give the KL wrapper a separate copy as reference;
    SB3's ``save`` pickles it whole into the zip, a path keeps saves small), or None for
    the embedded default policy.
    Other SB3 policy options (``optimizer_class``, ``optimizer_kwargs``) pass through;
    the network layout is the adapter's, so ``net_arch``, ``features_extractor_*``,
    ``ortho_init`` and ``share_features_extractor`` are refused here, early.
    """
    if lm is not None and not isinstance(lm, str | os.PathLike | nn.Module):
        raise TypeError(
            f"lm={lm!r}: pass a Hugging Face folder or hub name, a causal LM object, or None for the default policy."
        )
    clash = [key for key in _OWNED if key in policy_kwargs]
    if clash:
        raise ValueError(
            f"policy_kwargs {clash} are set by the LM adapter (one shared LM backbone, identity action net, "
            "linear value head, no re-initialisation); drop them."
        )
    return {"lm": lm, "trust_remote_code": trust_remote_code, **policy_kwargs}


def _resolve_lm(lm: LMSpec, trust_remote_code: bool) -> nn.Module:
    """The model object behind ``lm``; one given by name loads where SB3's ``device="auto"`` would put it."""
    if isinstance(lm, nn.Module):
        return lm
    if lm is None:
        from text_env.defaults import default_policy_path

        lm = default_policy_path()  # FileNotFoundError naming the fix when the assets are not built
    return load_causal_lm(lm, device="auto", trust_remote_code=trust_remote_code)


class LMFeaturesExtractor(BaseFeaturesExtractor):
    """Runs the causal LM on the observation; features are ``[next-token logits (A) | last hidden state (H)]``.

    Keeping both in one tensor lets SB3's unchanged ``forward`` / ``evaluate_actions`` /
    ``predict_values`` route them: the policy's split module hands the first ``A``
    columns to the (identity) action net and the last ``H`` to the value head.
    """

    def __init__(
        self, observation_space: spaces.Dict, n_actions: int, lm: LMSpec = None, trust_remote_code: bool = False
    ) -> None:
        if not isinstance(observation_space, spaces.Dict) or {"input_ids", "attention_mask"} - set(observation_space):
            raise ValueError(
                f"observation space {observation_space} is not Dict(input_ids, attention_mask); "
                "use a text_env environment (or one with the same observation layout)."
            )
        model = _resolve_lm(lm, trust_remote_code)
        device = next(model.parameters()).device
        with torch.no_grad():  # one-token probe: exact logits width and hidden size for any architecture
            one = torch.ones(1, 1, dtype=torch.long, device=device)  # (1, 1)
            probe = model(input_ids=one, attention_mask=one, output_hidden_states=True)
        model_vocab, hidden_size = probe.logits.shape[-1], probe.hidden_states[-1].shape[-1]
        if model_vocab < n_actions:
            raise ValueError(
                f"lm: the model scores {model_vocab} tokens but the env's action space is Discrete({n_actions}); "
                "build the env's Task with the model's own tokenizer (e.g. default_task(model=PATH))."
            )
        super().__init__(observation_space, features_dim=n_actions + hidden_size)
        self.lm = model.eval()
        self.n_actions = n_actions
        self.hidden_size = hidden_size
        # Logits at the last position only: the LM head over the whole window is the
        # biggest avoidable cost for large vocabularies (asked only of a forward that names it: remote code may not).
        accepts = inspect.signature(model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}

    def train(self, mode: bool = True) -> LMFeaturesExtractor:
        """Keep the LM in eval mode whatever SB3 asks: dropout off, so log-probs are deterministic."""
        super().train(mode)
        self.lm.eval()
        return self

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, A + H)`` features for a batch of observations."""
        logits, out = next_token_logits(  # (B, A) at the last position; left padding trimmed
            self.lm,
            observations["input_ids"].long(),  # (B, W); SB3 hands Box observations over as float32
            observations["attention_mask"].long(),  # (B, W)
            self.n_actions,
            output_hidden_states=True,
            use_cache=False,
            **self._last_logits_only,
        )
        hidden = out.hidden_states[-1][:, -1]  # (B, H)
        return torch.cat([logits, hidden.float()], dim=1)  # (B, A + H)


class _SplitFeatures(nn.Module):
    """SB3's ``mlp_extractor`` slot: logits to the actor, hidden state to the critic, no extra layers."""

    def __init__(self, n_actions: int, hidden_size: int) -> None:
        super().__init__()
        self.latent_dim_pi, self.latent_dim_vf = n_actions, hidden_size

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, : self.latent_dim_pi]  # (B, A)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, self.latent_dim_pi :]  # (B, H)


class _LMPolicy:
    """What both SB3 policy families need to run on an LM: the extractor, the split, the heads.

    Everything else (sampling, log-probs, entropy, masking) is SB3's own code, unchanged.
    """

    features_extractor: LMFeaturesExtractor
    optimizer_class: type[torch.optim.Optimizer]
    optimizer_kwargs: dict[str, Any]

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        lm: LMSpec = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"action space {action_space} is not Discrete(vocab_size); the LM policy picks tokens.")
        # PPO and A2C always pass use_sde (they refuse True for Discrete actions themselves);
        # MaskableActorCriticPolicy has no such option.
        kwargs.pop("use_sde", None)
        kwargs = lm_policy_kwargs(lm, trust_remote_code=trust_remote_code, **kwargs)
        kwargs.update(
            features_extractor_class=LMFeaturesExtractor,
            features_extractor_kwargs={
                "n_actions": int(action_space.n),
                "lm": kwargs.pop("lm"),
                "trust_remote_code": kwargs.pop("trust_remote_code"),
            },
            net_arch=[],
            share_features_extractor=True,
            ortho_init=False,  # SB3's orthogonal re-init would overwrite the pretrained LM weights
        )
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)  # type: ignore[call-arg]

    def _build(self, lr_schedule: Schedule) -> None:
        extractor = self.features_extractor
        self.mlp_extractor = _SplitFeatures(extractor.n_actions, extractor.hidden_size)
        self.action_net = nn.Identity()  # the features already are the LM's next-token logits
        self.value_net = nn.Linear(extractor.hidden_size, 1)
        nn.init.zeros_(self.value_net.weight)
        nn.init.zeros_(self.value_net.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[attr-defined]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        extractor_kwargs = data.pop("features_extractor_kwargs")
        for key in (*_OWNED, "use_sde"):
            data.pop(key, None)
        data.update(lm=extractor_kwargs["lm"], trust_remote_code=extractor_kwargs["trust_remote_code"])
        return data


class LMActorCriticPolicy(_LMPolicy, ActorCriticPolicy):
    """A causal LM policy with a linear value head for ``stable_baselines3.PPO`` and ``A2C``.

    ``policy_kwargs``: see :func:`lm_policy_kwargs`.
    """


class MaskableLMActorCriticPolicy(_LMPolicy, MaskableActorCriticPolicy):
    """The same policy for ``sb3_contrib.MaskablePPO``: masked tokens get probability 0.

    ``policy_kwargs``: see :func:`lm_policy_kwargs`.
    """


class KLPenaltyCallback(BaseCallback):
    """Subtracts ``beta * log pi(a|s)`` (the rollout policy's own log-prob) from every reward SB3 stores.

    With ``text_env.wrappers.KLRewardWrapper(env, ref, beta)`` on the env, each stored
    reward becomes ``r_t + beta * (log pi_ref - log pi)(a_t|s_t)``: the exact per-token KL
    penalty of RLHF PPO (OAI's k1, the reward ``agents.PPOKL`` uses), inside the returns,
    so train with ``ent_coef=0``. An entropy bonus in the loss only stands in for it in
    expectation and misses the future tokens' ``-beta log pi`` (see the wrapper).

    Works with PPO, A2C and MaskablePPO: they call ``on_step`` after ``env.step`` and
    store the step's ``rewards`` array right after, so it is adjusted in place here.
    """

    def __init__(self, beta: float) -> None:
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta={beta!r} must be >= 0; use the KLRewardWrapper's beta.")
        self.beta = float(beta)

    def _on_step(self) -> bool:
        rewards = self.locals["rewards"]  # (num_envs,) about to enter the rollout buffer
        rewards -= self.beta * self.locals["log_probs"].cpu().numpy()  # (num_envs,)
        return True
