"""stable-baselines3 PPO on a language model, as an agent like the others: KL-penalised, logged, resumable.

:class:`SB3PPO` trains ``stable_baselines3.PPO`` with :class:`agents.sb3.LMActorCriticPolicy`
through the Gymnasium API: every sub-env is a single ``RLHFText-v0`` env in
:class:`text_env.wrappers.KLRewardWrapper` with a frozen copy of the initial policy as
reference, and :class:`agents.sb3.KLPenaltyCallback` subtracts ``beta * log pi(a|s)`` from
each stored reward, so the returns carry the exact per-token KL penalty of ``agents.PPOKL``
and SB3 optimises ``E[score] - beta * KL`` with ``ent_coef = 0``. It has SB3's verbs
(``learn``, ``predict``, ``save``, ``load``) and the counters the pipeline reads
(``num_timesteps``, ``num_episodes``, ``train_seconds``); it logs ``progress.csv`` and
TensorBoard through :class:`rlhf_common.training.RunLogger` and checkpoints atomically.

Each token costs about 19x PPOKL's (``bench/sb3_vs_ppokl.py``): SB3 re-encodes the whole
window for every token, in the rollout and in the update.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.lm import load_causal_lm
from agents.sb3 import KLPenaltyCallback, LMActorCriticPolicy, lm_policy_kwargs
from rlhf_common.io import save_dir_atomic
from rlhf_common.training import (
    RunLogger,
    check_same_config,
    has_checkpoint,
    load_checkpoint,
    progress_bar,
    quiet_transformers,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from text_env import Task

try:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.env_util import make_vec_env
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"agents.sb3_ppo needs stable-baselines3 ({e}); pip install 'rlhf-gym[sb3]'.") from e

__all__ = ["SB3PPO", "SB3PPOConfig"]


def _maskable() -> tuple[type, type]:
    """sb3-contrib's MaskablePPO and our LM policy for it."""
    try:
        from sb3_contrib import MaskablePPO
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"an env with action masks needs sb3-contrib's MaskablePPO ({e}); "
                          "pip install 'rlhf-gym[sb3]'.") from e
    from agents.sb3 import MaskableLMActorCriticPolicy

    return MaskablePPO, MaskableLMActorCriticPolicy

MODEL_FILE = "model.zip"
"""The SB3 model inside a checkpoint folder (``PPO.save``)."""


@dataclass
class SB3PPOConfig:
    """stable-baselines3 PPO on the LM adapter (``agents.sb3``) with the KL reward wrapper."""

    num_envs: int = 16
    """Single envs stepped together (SB3 DummyVecEnv), each wrapped in ``KLRewardWrapper``."""
    n_steps: int = 32
    """SB3's steps per sub-env per rollout: num_envs x n_steps tokens per update."""
    num_ppo_epochs: int = 1
    """Passes over each rollout (SB3's ``n_epochs``): the update re-encodes the window per token, so it is the cost."""
    num_mini_batches: int = 4
    """Minibatches per epoch: SB3's batch_size is num_envs x n_steps / num_mini_batches tokens."""
    learning_rate: float = 1e-4
    """Adam step size."""
    beta: float = 0.05
    """KL coefficient: the wrapper adds beta * log pi_ref(a|s) to each reward and ``KLPenaltyCallback`` subtracts
    beta * log pi(a|s), so every stored reward carries the per-token KL penalty of ``agents.PPOKL``."""
    gamma: float = 1.0
    """Discount across response tokens; 1: the score counts fully at every token."""
    lam: float = 0.95
    """GAE lambda (SB3's ``gae_lambda``)."""
    cliprange: float = 0.2
    """Policy ratio clip epsilon (SB3's ``clip_range``)."""
    vf_coef: float = 0.1
    """Weight of the value loss (OAI: 0.1)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this."""
    seed: int = 0
    """Seeds SB3, the envs and the policy's sampling."""
    log_dir: str = "runs/sb3_ppo"
    """``progress.csv``, TensorBoard events, ``checkpoint/`` and the final ``policy/`` folder."""
    save_steps: int = 4
    """Save a resumable checkpoint every this many rollouts (and at the end); 0 only at the end."""

    def __post_init__(self) -> None:
        rollout = self.num_envs * self.n_steps
        if min(self.num_envs, self.n_steps, self.num_ppo_epochs, self.num_mini_batches) < 1 or \
                rollout % self.num_mini_batches or self.save_steps < 0:
            raise ValueError(
                f"num_envs={self.num_envs}, n_steps={self.n_steps}, num_ppo_epochs={self.num_ppo_epochs} and "
                f"num_mini_batches={self.num_mini_batches} must be >= 1, num_mini_batches must divide "
                f"num_envs x n_steps, and save_steps={self.save_steps} >= 0."
            )


class SB3PPO:
    """SB3 PPO with a per-token KL penalty on ``env_or_task``, from the causal LM folder ``policy``.

    ``env_or_task`` is a :class:`text_env.Task` or a text env (its task is used); ``policy``
    a Hugging Face folder, None for the embedded default policy. The model is built (and
    seeded) here, as SB3's constructors do; ``learn(..., resume=True)`` continues the
    checkpoint in ``log_dir/checkpoint`` instead.
    """

    def __init__(self, env_or_task: Any, policy: str | os.PathLike[str] | None = None,
                 config: SB3PPOConfig | None = None) -> None:
        from reward_models.hf import resolve_device
        from text_env.wrappers import KLRewardWrapper

        self.config = config if config is not None else SB3PPOConfig()
        self.task: Task = env_or_task if isinstance(env_or_task, Task) else env_or_task.unwrapped.task
        if policy is None:
            from text_env.defaults import default_policy_path

            policy = self.task.default_policy or default_policy_path()
        self.policy_path = str(policy)
        self.device = resolve_device("auto")
        cfg = self.config
        with quiet_transformers():
            reference = load_causal_lm(policy, device=self.device)
        # One frozen reference shared by the wrappers: read-only, each wrapper keeps its own KV cache.
        self.venv = make_vec_env(lambda: KLRewardWrapper(gym.make("RLHFText-v0", task=self.task), reference, cfg.beta),
                                 n_envs=cfg.num_envs, seed=cfg.seed)
        # A task with an action mask (chess) needs sb3-contrib's MaskablePPO: plain PPO would sample
        # masked tokens, whose reference log-prob in the KL wrapper is -inf.
        self.algorithm, policy_class = (_maskable() if self.task.action_mask is not None
                                        else (PPO, LMActorCriticPolicy))
        with quiet_transformers():
            self.model = self.algorithm(
                policy_class, self.venv, policy_kwargs=lm_policy_kwargs(self.policy_path),
                learning_rate=cfg.learning_rate, n_steps=cfg.n_steps,
                batch_size=cfg.num_envs * cfg.n_steps // cfg.num_mini_batches, n_epochs=cfg.num_ppo_epochs,
                gamma=cfg.gamma, gae_lambda=cfg.lam, clip_range=cfg.cliprange, vf_coef=cfg.vf_coef,
                max_grad_norm=cfg.max_grad_norm, ent_coef=0.0, seed=cfg.seed, device=self.device,
            )
        self.num_episodes = 0
        """Episodes finished in training so far (resumed parts included)."""
        self.train_seconds = 0.0
        """Wall seconds of training so far: rollouts and updates, resumed parts included."""
        self.rollouts = 0
        """Rollouts (one update each) so far: the ``step`` of ``progress.csv``."""

    # ---- SB3 surface ---------------------------------------------------------------------
    @property
    def policy(self) -> Any:
        """The Hugging Face causal LM being trained."""
        return self.model.policy.features_extractor.lm

    @property
    def num_timesteps(self) -> int:
        """Env steps (generated tokens) trained so far."""
        return self.model.num_timesteps

    @property
    def checkpoint_dir(self) -> Path:
        """Where ``learn`` keeps its latest resumable checkpoint."""
        return Path(self.config.log_dir) / "checkpoint"

    def learn(self, total_timesteps: int, *, resume: bool = False, progress_bar: bool = True) -> SB3PPO:
        """Train until ``total_timesteps`` env steps; ``resume=True`` continues ``checkpoint_dir`` when there is one.

        The trained LM is also saved as a Hugging Face folder in ``log_dir/policy``.
        """
        resumed = resume and has_checkpoint(self.checkpoint_dir)
        if resumed:
            saved, _ = load_checkpoint(self.checkpoint_dir)
            check_same_config(saved["config"], self.config, {"save_steps"}, self.checkpoint_dir,
                              "resume with the same settings, or pass another log_dir for a new run.")
            self._restore(self.checkpoint_dir)
        remaining = total_timesteps - self.model.num_timesteps
        if remaining > 0:
            with _quiet_padding_warning():
                callbacks = [KLPenaltyCallback(self.config.beta), TrainingMonitor(self, total_timesteps, progress_bar)]
                self.model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=not resumed)

        def write(tmp: Path) -> None:
            self.policy.save_pretrained(tmp, safe_serialization=True)
            self.task.tokenizer.save_pretrained(tmp)

        with quiet_transformers():
            save_dir_atomic(Path(self.config.log_dir) / "policy", write)
        return self

    def predict(self, observation: Any, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, Any]:
        """The next token for an observation (or a batch), as ``PPO.predict``."""
        return self.model.predict(observation, state, episode_start, deterministic)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save the model, config and counters into the folder ``path``, atomically."""
        state = {"algorithm": type(self).__name__, "config": asdict(self.config), "policy": self.policy_path,
                 "num_episodes": self.num_episodes, "train_seconds": self.train_seconds, "rollouts": self.rollouts}
        save_checkpoint(path, state, {"rng": rng_state()},
                        write_models=lambda folder: self.model.save(folder / MODEL_FILE))

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any) -> SB3PPO:
        """An agent restored from :meth:`save`, acting in ``env`` (a text env or a Task with the same tokenizer)."""
        state, _ = load_checkpoint(path)
        if state.get("algorithm") != cls.__name__:
            raise ValueError(f"{path} holds a {state.get('algorithm')}, not an {cls.__name__}; load it with that.")
        agent = cls(env, state["policy"], SB3PPOConfig(**state["config"]))
        agent._restore(path)
        return agent

    def _restore(self, path: str | os.PathLike[str]) -> None:
        state, tensors = load_checkpoint(path)
        with quiet_transformers():
            self.model = self.algorithm.load(Path(path) / MODEL_FILE, env=self.venv, device=self.device)
        set_rng_state(tensors["rng"])
        self.num_episodes, self.train_seconds, self.rollouts = (state["num_episodes"], state["train_seconds"],
                                                                 state["rollouts"])

    def close(self) -> None:
        """Close the training envs."""
        self.venv.close()


class TrainingMonitor(BaseCallback):
    """Per rollout: the finished episodes' proxy and gold scores, KL and length; CSV, TensorBoard, bar, checkpoint.

    A rollout's row is logged when the next rollout starts (or training ends), so its
    ``seconds`` cover the rollout and the update after it; the checkpoint is saved then too.
    """

    def __init__(self, agent: SB3PPO, total: int, progress: bool) -> None:
        super().__init__()
        self.agent, self.total, self.progress = agent, total, progress

    def _on_training_start(self) -> None:
        agent = self.agent
        self.run_log = RunLogger(agent.config.log_dir, resume_step=agent.rollouts or None)
        self.bar = progress_bar(self.total, "SB3 PPO", unit="tok", initial=self.model.num_timesteps,
                                enabled=self.progress)
        self.logp = np.zeros(self.training_env.num_envs)
        self.pending: dict[str, float] | None = None
        self.started = time.perf_counter()
        self._reset_stats()

    def _reset_stats(self) -> None:
        self.scores: list[float] = []
        self.golds: list[float] = []
        self.kls: list[float] = []
        self.lengths: list[int] = []

    def _on_step(self) -> bool:
        self.logp += self.locals["log_probs"].cpu().numpy()  # (num_envs,) log pi of the actions taken
        for i, (done, info) in enumerate(zip(self.locals["dones"], self.locals["infos"], strict=True)):
            if done:
                self.scores.append(info["score"])
                self.golds.append(info.get("gold_score", math.nan))
                self.kls.append(self.logp[i] - info["episode_ref_logprob"])  # k1 summed over the response
                self.lengths.append(info["response_length"])
                self.logp[i] = 0.0
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_end(self) -> None:
        self.agent.num_episodes += len(self.scores)
        self.pending = {"episodes": self.agent.num_episodes, "timesteps": self.model.num_timesteps}
        if self.scores:
            self.pending.update(score=float(np.mean(self.scores)), gold_score=float(np.mean(self.golds)),
                                kl=float(np.mean(self.kls)), response_length=float(np.mean(self.lengths)))
            self.bar.set_postfix(score=f"{self.pending['score']:.3g}", kl=f"{self.pending['kl']:.3g}")
        self._reset_stats()

    def _on_rollout_start(self) -> None:
        self._flush(final=False)

    def _on_training_end(self) -> None:
        self._flush(final=True)
        self.bar.close()
        self.run_log.close()

    def _flush(self, final: bool) -> None:
        if self.pending is None:
            return
        agent, now = self.agent, time.perf_counter()
        agent.rollouts += 1
        agent.train_seconds += now - self.started
        self.run_log.log(agent.rollouts, {**self.pending, "seconds": now - self.started})
        self.started, self.pending = now, None
        every = agent.config.save_steps
        if final or (every and agent.rollouts % every == 0):
            agent.save(agent.checkpoint_dir)


@contextlib.contextmanager
def _quiet_padding_warning() -> Iterator[None]:
    """Hide transformers' one-off "pass an attention_mask" advice: the KL wrapper's inputs are never padded."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
