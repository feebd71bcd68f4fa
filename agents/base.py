"""What every agent shares: the SB3 surface (learn / predict / save / load) and the learn loop.

An agent subclass supplies one ``_iteration()`` (generate a batch, maybe update, return
metrics); this module owns the env, the learn loop with its progress bar and
TensorBoard/CSV logging (:class:`rlhf_common.training.RunLogger`), linear learning-rate
annealing, the optimiser step, atomic checkpoints every N iterations, resuming a killed
run, and the stop on NaN. The policy and its frozen reference are set up in
:mod:`agents.models` (with LoRA adapters, :mod:`agents.lora`); gradient agents also get
data parallelism under ``torchrun`` (:mod:`agents.distributed`) and Ray rollout workers
(:mod:`agents.ray_rollout`).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from agents.agent_config import RESUMABLE_CHANGES, AgentConfig, TrainConfig
from agents.distributed import DistInfo, check_data_parallel, init_distributed, reduce_gradients
from agents.models import PolicyArg, agent_device, build_models, checkpoint_models, save_models
from agents.rollout import RolloutBatch, make_rollout_env, reduced_precision, rollout, sample_next_token
from agents.scoring import response_logprobs
from rlhf_common.training import (
    STATE_FILE,
    RunLogger,
    check_finite,
    check_same_config,
    config_dict,
    has_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlhf_common.training import progress_bar as make_progress_bar

__all__ = ["Agent"]


class Agent:
    """Base of every agent: subclasses set ``config_class`` and implement ``_iteration``.

    Timesteps are env steps, i.e. generated tokens summed over the batch, as in SB3
    where each sub-env step counts; ``learn`` stops after the first iteration that
    reaches ``total_timesteps``. Under ``torchrun`` ``batch_size`` is the global batch:
    each rank generates ``batch_size / world_size`` episodes and counts the global timesteps.
    After ``learn``, ``num_timesteps``, ``num_episodes`` and ``train_seconds`` (wall seconds
    spent in iterations, summed over resumed parts) count the run so far.
    """

    config_class: ClassVar[type[AgentConfig]] = AgentConfig
    needs_policy: ClassVar[bool] = True
    """False for agents without a language model (``RandomAgent``)."""
    needs_reference: ClassVar[bool] = True
    """False for agents that never move away from their policy (nothing to anchor a KL to)."""
    supports_distributed: ClassVar[bool] = False
    """True for agents whose update keeps its statistics global across ``torchrun`` ranks."""

    def __init__(
        self, env: Any, policy: PolicyArg = None, config: AgentConfig | None = None, reference: PolicyArg = None
    ) -> None:
        self._setup(env, policy, config, reference, checkpoint=None)

    def _setup(
        self, env: Any, policy: PolicyArg, config: AgentConfig | None, reference: PolicyArg, checkpoint: Path | None
    ) -> None:
        """Build every attribute: fresh, or (``checkpoint``) with the models of a checkpoint folder."""
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(self.config).__name__}.")
        self.dist = self._check_distributed(init_distributed())
        self.env = make_rollout_env(env, self.config.batch_size // self.dist.world_size)
        self.task = self.env.unwrapped.task
        self.device = agent_device(self.config.device, self.dist, self.needs_policy)
        torch.manual_seed(self.config.seed)  # value-head init and anything else drawn at build time
        # Same seed on every rank: minibatch shuffles agree, so ranks split one global permutation.
        self.generator = torch.Generator(self.device).manual_seed(self.config.seed)
        self.num_timesteps = self.num_episodes = self.iteration = 0
        self.train_seconds = 0.0
        self._start_timesteps = self._target_timesteps = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.rollout_pool: Any = None
        adapter = None
        if checkpoint is not None:
            policy, reference, adapter = checkpoint_models(checkpoint)
        lora = self.config.lora if isinstance(self.config, TrainConfig) else None
        models = build_models(self.task, policy, reference, device=self.device, dist=self.dist, lora=lora,
                              adapter=adapter, needs_policy=self.needs_policy, needs_reference=self.needs_reference)
        self.policy, self.reference = models.policy, models.reference
        self._build(checkpoint)

    def _check_distributed(self, info: DistInfo) -> DistInfo:
        """``info`` if this agent can run in its torchrun world (subclasses add their own conditions)."""
        workers = self.config.rollout_workers if isinstance(self.config, TrainConfig) else 0
        check_data_parallel(info, type(self).__name__, self.supports_distributed, self.config.batch_size, workers,
                            self._samples_per_prompt())
        return info

    # ---- hooks for subclasses --------------------------------------------------------
    def _samples_per_prompt(self) -> int:
        """Consecutive episodes of one prompt in a batch (``num_generations``): a rank generates whole groups."""
        return int(getattr(self.config, "num_generations", 1))

    def _build(self, checkpoint: Path | None) -> None:
        """Create value heads, optimiser etc., fresh or from a checkpoint folder's extra files."""

    def _iteration(self) -> tuple[dict[str, float], int]:
        """One batch: generate (and update). Returns metrics and the number of env steps taken."""
        raise NotImplementedError(f"{type(self).__name__} must implement _iteration().")

    def _extra_state(self) -> dict[str, Any]:
        """JSON-able state beyond counters and config (e.g. the KL coefficient)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` returned."""

    def _save_extra(self, folder: Path) -> None:
        """Write extra model files (a value head) into a checkpoint folder."""

    # ---- SB3 surface -----------------------------------------------------------------
    def learn(
        self,
        total_timesteps: int,
        *,
        resume: bool = False,
        reset_num_timesteps: bool = True,
        progress_bar: bool = True,
    ) -> Agent:
        """Run iterations until ``total_timesteps`` generated tokens.

        ``resume=True`` continues a killed run from ``log_dir/checkpoint`` (counters,
        models, optimiser, RNG), towards that run's total; without a checkpoint it starts fresh.
        ``reset_num_timesteps=False`` counts ``total_timesteps`` (and episodes and seconds) on top
        of earlier calls.
        """
        if total_timesteps < 1:
            raise ValueError(f"total_timesteps={total_timesteps} must be >= 1.")
        checkpoint = self.checkpoint_dir
        if resume and has_checkpoint(checkpoint):
            saved = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))["config"]
            check_same_config(saved, self.config, RESUMABLE_CHANGES, checkpoint,
                              "resume with the same settings, or pass another log_dir for a new run.")
            self._restore(checkpoint, self.env)  # continue in place: the checkpoint's models, counters and RNG
        else:
            if resume:
                warnings.warn(f"resume=True but {checkpoint} has no checkpoint; starting fresh.", stacklevel=2)
            if reset_num_timesteps:
                self.num_timesteps = self.num_episodes = 0
                self.train_seconds = 0.0
            self._start_timesteps = self.num_timesteps
            self._target_timesteps = self.num_timesteps + total_timesteps
        # Only rank 0 writes logs and checkpoints and shows progress (torchrun).
        main = self.dist.is_main
        logger = RunLogger(self.config.log_dir, resume_step=self.iteration or None) if main else None
        bar = make_progress_bar(self._target_timesteps - self._start_timesteps, type(self).__name__, unit="tok",
                                initial=self.num_timesteps - self._start_timesteps, enabled=progress_bar and main)
        try:
            while self.num_timesteps < self._target_timesteps:
                metrics, steps = self._timed_iteration()
                if logger is not None:
                    logger.log(self.iteration, metrics)
                bar.update(steps)
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("score", "kl", "beta") if k in metrics})
                every = self.config.save_steps
                if every and (self.iteration % every == 0 or self.num_timesteps >= self._target_timesteps):
                    self.save(checkpoint)
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        return self

    def _timed_iteration(self) -> tuple[dict[str, float], int]:
        """One iteration at the annealed learning rate; counts it and adds its rates and wall time to the metrics."""
        lr = self._anneal_lr()
        start = time.perf_counter()
        metrics, steps = self._iteration()
        seconds = time.perf_counter() - start
        self.iteration += 1
        self.num_timesteps += steps
        self.num_episodes += self.config.batch_size
        self.train_seconds += seconds
        metrics.update(timesteps=self.num_timesteps, episodes_per_second=self.config.batch_size / seconds,
                       tokens_per_second=steps / seconds, seconds=seconds)
        if lr is not None:
            metrics["learning_rate"] = lr
        return metrics, steps

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """The next token for one observation ``(W,)`` or a batch ``(N, W)``; ``state`` is unused."""
        action = sample_next_token(
            self.policy, observation, vocab_size=self.task.vocab_size, temperature=self.config.temperature,
            deterministic=deterministic, action_masks=action_masks, generator=self.generator,
        )
        return action, state

    @property
    def checkpoint_dir(self) -> Path:
        """Where ``learn`` keeps its latest resumable checkpoint."""
        return Path(self.config.log_dir) / "checkpoint"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save everything needed to continue (atomically: a crash leaves the previous save whole).

        ``policy/`` and ``reference/`` are Hugging Face folders (safetensors, with the
        env's tokenizer); with LoRA, ``policy/`` is the peft adapter and ``policy_base/``
        its frozen base model (also the reference, unless one was given). ``trainer_state.pt``
        holds optimiser and RNG tensors; ``state.json`` the config, counters and algorithm
        state. Under torchrun only rank 0 writes; every rank waits until it has.
        """
        if self.dist.is_main:
            tensors: dict[str, Any] = {"generator": self.generator.get_state(), "rng": rng_state()}
            if self.optimizer is not None:
                tensors["optimizer"] = self.optimizer.state_dict()
            state = {
                "algorithm": type(self).__name__,
                "config": config_dict(self.config),
                "num_timesteps": self.num_timesteps,
                "num_episodes": self.num_episodes,
                "train_seconds": self.train_seconds,
                "iteration": self.iteration,
                "start_timesteps": self._start_timesteps,
                "target_timesteps": self._target_timesteps,
                **self._extra_state(),
            }

            def write_models(folder: Path) -> None:
                save_models(folder, self.policy, self.reference, self.task.tokenizer)
                self._save_extra(folder)

            save_checkpoint(path, state, tensors, write_models)
        if self.dist.world_size > 1:
            torch.distributed.barrier()  # no rank reads the folder before it is complete

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any) -> Agent:
        """An agent restored from :meth:`save`, acting in ``env`` (which must have the same tokenizer)."""
        agent = cls.__new__(cls)
        agent._restore(Path(path), env)
        return agent

    def _restore(self, path: Path, env: Any) -> None:
        """Rebuild this agent from the checkpoint folder ``path``: config, models, optimiser, RNG and counters."""
        state, tensors = load_checkpoint(path)
        if state["algorithm"] != type(self).__name__:
            raise ValueError(f"{path} holds a {state['algorithm']}, not a {type(self).__name__}; load it with "
                             "that class.")
        self._setup(env, None, self.config_class(**state["config"]), None, checkpoint=path)
        self.generator.set_state(tensors["generator"])
        set_rng_state(tensors["rng"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(tensors["optimizer"])
        self.num_timesteps, self.num_episodes = state["num_timesteps"], state["num_episodes"]
        self.train_seconds, self.iteration = state["train_seconds"], state["iteration"]
        self._start_timesteps, self._target_timesteps = state["start_timesteps"], state["target_timesteps"]
        self._load_extra_state(state)

    # ---- helpers for subclasses ------------------------------------------------------
    def _prompt_seed(self) -> int:
        # Prompts (and sampling streams) of episode j of iteration i depend only on (seed, i, j), so a
        # resumed run draws what the killed one would, and ranks and workers draw what one process would.
        return self.config.seed + self.iteration * self.config.batch_size + self.dist.rank * self.env.num_envs

    def _generate(self, group_size: int = 1, output_hidden: bool = False) -> RolloutBatch:
        """Step 1 of every RL agent: this rank's share of the batch, from this process or the Ray workers."""
        config = self.config
        if isinstance(config, TrainConfig) and config.rollout_workers:
            if self.rollout_pool is None:
                from agents.ray_rollout import RolloutPool

                self.rollout_pool = RolloutPool(self.task, self.policy, config.rollout_workers, config.batch_size,
                                                num_gpus=config.rollout_worker_gpus)
            else:
                self.rollout_pool.sync(self.policy)  # the update just changed the weights
            batch = self.rollout_pool.rollout(temperature=config.temperature, seed=self._prompt_seed(),
                                              group_size=group_size, device=self.device, output_hidden=output_hidden)
        else:
            batch = rollout(self.policy, self.env, temperature=config.temperature, group_size=group_size,
                            seed=self._prompt_seed(), generator=self.generator, output_hidden=output_hidden)
        if reduced_precision(self.device):
            # In bf16, KV-cached decoding and the packed re-scoring round differently (~1e-2 per token):
            # re-score once, so the old log-probs (and value-head states) come from the same kind of
            # pass as the reference's and the update's: ratio 1 at the first minibatch, and a KL
            # without a kernel bias (docs/ppo_details.md #4). In float32 they agree to 1e-6 and are kept.
            with torch.no_grad():
                again = response_logprobs(self.policy, batch, config.temperature, self.task.vocab_size,
                                          output_hidden=output_hidden)
            batch = replace(batch, logprobs=again.logprobs, hidden=again.hidden)
        return batch

    def _anneal_lr(self) -> float | None:
        if self.optimizer is None:
            return None
        config = self.config
        assert isinstance(config, TrainConfig)
        lr = config.learning_rate
        if config.anneal_lr:  # linear to 0 over this learn() call's timesteps (OAI, CleanRL)
            span = max(self._target_timesteps - self._start_timesteps, 1)
            lr *= max(0.0, 1 - (self.num_timesteps - self._start_timesteps) / span)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _make_optimizer(self, parameters: list[torch.nn.Parameter]) -> None:
        config = self.config
        assert isinstance(config, TrainConfig)
        self._parameters = parameters
        # fused: one kernel per tensor instead of a dozen elementwise passes (2.6x faster on CPU, same update).
        self.optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, eps=config.adam_eps, fused=True)

    def _backward(self, loss: torch.Tensor, what: str) -> None:
        """Accumulate gradients of ``loss``; a NaN/inf loss stops training before it touches a weight."""
        if self.dist.world_size == 1:
            # Under torchrun a local raise would leave the other ranks waiting in the all-reduce;
            # there the NaN reaches the summed gradient norm, which every rank checks alike.
            self._check_finite(what, loss)
        loss.backward()

    def _optimizer_step(self) -> float:
        """Sum gradients over ranks, clip, take one Adam step, clear them; returns the gradient norm."""
        config = self.config
        assert self.optimizer is not None and isinstance(config, TrainConfig)
        reduce_gradients(self._parameters, self.dist)
        grad_norm = torch.nn.utils.clip_grad_norm_(self._parameters, config.max_grad_norm)
        self._check_finite("gradient norm", grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def _check_finite(self, what: str, value: torch.Tensor) -> None:
        check_finite(value, what, f"iteration {self.iteration + 1}", self.checkpoint_dir,
                     fix="check the reward model, or lower learning_rate in a new run (another log_dir).")
