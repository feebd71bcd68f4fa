"""What every agent shares: the SB3 surface (learn / predict / save / load) and its plumbing.

An agent subclass supplies one ``_iteration()`` (generate a batch, maybe update, return
metrics); this module owns the env, the policy and its frozen reference, the learn loop
with its progress bar, TensorBoard/CSV logging, linear learning-rate annealing,
atomic checkpoints every N iterations, resuming a killed run, and the stop on NaN.
Gradient agents also get LoRA adapters (:mod:`agents.lora`), data parallelism under
``torchrun`` (:mod:`agents.distributed`) and Ray rollout workers (:mod:`agents.ray_rollout`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.distributed import (
    DistInfo,
    broadcast_parameters,
    init_distributed,
    reduce_gradients,
    resolve_rank_device,
)
from agents.lm import load_causal_lm
from agents.lora import AdapterDisabled, LoraSettings, add_lora, base_state_dict, is_adapter_folder, is_lora
from agents.rollout import (
    RolloutBatch,
    make_rollout_env,
    reduced_precision,
    response_logprobs,
    rollout,
    sample_next_token,
)
from rlhf_common.io import save_dir_atomic
from rlhf_common.training import RunLogger, quiet_transformers

PolicyArg = str | os.PathLike[str] | torch.nn.Module | None
"""A causal LM, a Hugging Face folder, or None for the embedded default policy."""


@dataclass
class AgentConfig:
    """Settings every agent has."""

    batch_size: int = 64
    """Episodes per iteration, generated together (the vector env's ``num_envs``)."""
    temperature: float = 1.0
    """Sampling temperature; every log-prob is computed at it too (PPO_NOTES #5)."""
    seed: int = 0
    """Seeds sampling, shuffling, the value-head init and the env's prompt draws."""
    log_dir: str = "runs/agent"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every this many iterations (and at the end); 0 never."""
    device: str = "auto"
    """Torch device for the models: ``"auto"`` is CUDA when present, else CPU."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.temperature <= 0 or self.checkpoint_every < 0:
            raise ValueError(
                f"batch_size={self.batch_size} must be >= 1, temperature={self.temperature} > 0 and "
                f"checkpoint_every={self.checkpoint_every} >= 0."
            )


@dataclass
class TrainConfig(AgentConfig):
    """Settings every agent that updates its policy by gradient has."""

    num_minibatches: int = 4
    """Minibatches per batch; each gives one optimiser step (or one gradient-accumulation part)."""
    learning_rate: float = 1e-4
    """Adam step size at the start. 1e-4 suits the embedded 4x256 policy (clip fraction ~0.1 falling
    to 0.01); OAI used 1.41e-5 for GPT-2 124M: lower it for larger models."""
    adam_eps: float = 1e-5
    """Adam epsilon: 1e-5 as TF's default in lm-human-preferences, not PyTorch's 1e-8 (PPO_NOTES #14)."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over ``total_timesteps`` (OAI, CleanRL)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (CleanRL: 0.5; TRL: 1.0)."""
    lora: LoraSettings | None = None
    """Train LoRA adapters instead of every weight (needs ``peft``); the reference is then the
    policy with its adapters disabled, so no second copy of the model is held. None: full fine-tuning."""
    rollout_workers: int = 0
    """Ray actors that generate the batch, ``batch_size / rollout_workers`` episodes each, with the
    weights synced after every update (needs ``ray``); 0 generates in this process."""
    rollout_worker_gpus: float = 0.0
    """GPUs Ray reserves for each rollout worker (fractions share one GPU); 0: CPU workers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_minibatches < 1 or self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} must be >= 1 and divide batch_size={self.batch_size}."
            )
        if isinstance(self.lora, dict):  # read back from a checkpoint's state.json
            self.lora = LoraSettings(**self.lora)
        if self.rollout_workers < 0 or self.rollout_worker_gpus < 0:
            raise ValueError(
                f"rollout_workers={self.rollout_workers} and rollout_worker_gpus={self.rollout_worker_gpus} "
                "must be >= 0."
            )
        if self.rollout_workers and self.batch_size % self.rollout_workers:
            raise ValueError(
                f"rollout_workers={self.rollout_workers} must divide batch_size={self.batch_size} (equal shares)."
            )


def _load_model(model: PolicyArg, device: torch.device) -> Any:
    if model is None:
        from text_env.defaults import default_policy_path

        model = default_policy_path()
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    with quiet_transformers():
        return load_causal_lm(model, device=device)


class Agent:
    """Base of every agent: subclasses set ``config_class`` and implement ``_iteration``.

    Timesteps are env steps, i.e. generated tokens summed over the batch, as in SB3
    where each sub-env step counts; ``learn`` stops after the first iteration that
    reaches ``total_timesteps``. Under ``torchrun`` ``batch_size`` is the global batch:
    each rank generates ``batch_size / world_size`` episodes and counts the global timesteps.
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
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(self.config).__name__}.")
        self.dist = self._check_distributed(init_distributed())
        self.env = make_rollout_env(env, self.config.batch_size // self.dist.world_size)
        self.task = self.env.unwrapped.task
        self.device = resolve_rank_device(self.config.device, self.dist) if self.needs_policy else torch.device("cpu")
        torch.manual_seed(self.config.seed)  # value-head init and anything else drawn at build time
        # Same seed on every rank: minibatch shuffles agree, so ranks split one global permutation.
        self.generator = torch.Generator(self.device).manual_seed(self.config.seed)
        self.num_timesteps = 0
        self.iteration = 0
        self._start_timesteps = self._target_timesteps = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.policy: Any = None
        self.reference: Any = None
        self.rollout_pool: Any = None
        lora: LoraSettings | None = getattr(self.config, "lora", None)
        if self.needs_policy:
            self.policy = _load_model(policy, self.device)
            vocab = self.policy.get_output_embeddings().out_features
            if vocab < self.task.vocab_size:
                raise ValueError(
                    f"policy has {vocab} output tokens but the env's tokenizer has {self.task.vocab_size}; "
                    "use the policy's own tokenizer in the Task (default_task(model=PATH))."
                )
            cfg = self.policy.config
            positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
            if positions is not None and positions < self.task.window:
                raise ValueError(
                    f"the task's window is {self.task.window} tokens (max_prompt_tokens {self.task.max_prompt_tokens}"
                    f" + max_new_tokens {self.task.max_new_tokens}) but the policy has {positions} positions; "
                    "lower them in the Task so prompt and response fit the model."
                )
            if lora is None and is_lora(self.policy):
                raise ValueError(
                    "policy is already a peft model; pass its base model and config lora=LoraSettings(...), "
                    "so that checkpoints save and restore the adapters."
                )
        if self.needs_reference and (lora is None or reference is not None):
            # The reference is a frozen copy of the initial policy: no grad, eval (PPO_NOTES #1).
            self.reference = copy.deepcopy(self.policy) if reference is None else _load_model(reference, self.device)
            self.reference.requires_grad_(False).eval()
        if lora is not None:
            adapter = checkpoint / "policy" if checkpoint is not None else None
            self.policy = add_lora(self.policy, lora, adapter).to(self.device)
            if self.needs_reference and reference is None:
                # The frozen base weights are the initial policy: the reference is the policy with
                # its adapters off, so the model is held once (memory: bench/memory.py).
                self.reference = AdapterDisabled(self.policy)
        if self.needs_policy:
            broadcast_parameters([self.policy], self.dist)  # every rank starts from rank 0's weights
        self._build(checkpoint)

    def _check_distributed(self, info: DistInfo) -> DistInfo:
        if info.world_size == 1:
            return info
        if not self.supports_distributed:
            raise RuntimeError(
                f"{type(self).__name__} does not support torchrun data parallelism (WORLD_SIZE={info.world_size}); "
                "run it in one process, or use PPOKL or RLOO."
            )
        if self.config.batch_size % info.world_size:
            raise ValueError(
                f"batch_size={self.config.batch_size} is the global batch: it must be divisible by "
                f"WORLD_SIZE={info.world_size}, each rank generating an equal share."
            )
        if getattr(self.config, "rollout_workers", 0):
            raise ValueError("rollout_workers > 0 (Ray) and torchrun data parallelism cannot be combined; pick one.")
        return info

    # ---- hooks for subclasses --------------------------------------------------------
    def _build(self, checkpoint: Path | None) -> None:
        """Create value heads, optimiser etc., fresh or from a checkpoint folder's extra files."""

    def _iteration(self) -> tuple[dict[str, float], int]:
        """One batch: generate (and update). Returns metrics and the number of env steps taken."""
        raise NotImplementedError

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
        ``reset_num_timesteps=False`` counts ``total_timesteps`` on top of earlier calls.
        """
        if total_timesteps < 1:
            raise ValueError(f"total_timesteps={total_timesteps} must be >= 1.")
        checkpoint = self.checkpoint_dir
        resumed = resume and (checkpoint / "state.json").exists()
        if resumed:
            # Continue in place: adopt the checkpoint's models, optimiser, counters and RNG.
            self.__dict__.update(type(self).load(checkpoint, self.env).__dict__)
        else:
            if resume:
                warnings.warn(f"resume=True but {checkpoint} has no checkpoint; starting fresh.", stacklevel=2)
            if reset_num_timesteps:
                self.num_timesteps = 0
            self._start_timesteps = self.num_timesteps
            self._target_timesteps = self.num_timesteps + total_timesteps
        # Only rank 0 writes logs and checkpoints and shows progress (torchrun).
        main = self.dist.is_main
        logger = RunLogger(self.config.log_dir, resume_step=self.iteration or None) if main else None
        span = self._target_timesteps - self._start_timesteps
        bar = tqdm(total=span, initial=self.num_timesteps - self._start_timesteps, unit="tok",
                   desc=type(self).__name__, disable=not (progress_bar and main))
        try:
            while self.num_timesteps < self._target_timesteps:
                lr = self._anneal_lr()
                start = time.perf_counter()
                metrics, steps = self._iteration()
                seconds = time.perf_counter() - start
                self.iteration += 1
                self.num_timesteps += steps
                metrics.update(timesteps=self.num_timesteps, episodes_per_second=self.config.batch_size / seconds,
                               tokens_per_second=steps / seconds)
                if lr is not None:
                    metrics["learning_rate"] = lr
                if logger is not None:
                    logger.log(self.iteration, metrics)
                bar.update(steps)
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("score", "kl", "beta") if k in metrics})
                every = self.config.checkpoint_every
                if every and (self.iteration % every == 0 or self.num_timesteps >= self._target_timesteps):
                    self.save(checkpoint)
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        return self

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
        def write(folder: Path) -> None:
            models = [("policy", self.policy), ("reference", self.reference)]
            if is_lora(self.policy):
                base = self.policy.get_base_model()
                base.save_pretrained(folder / "policy_base", state_dict=base_state_dict(self.policy),
                                     safe_serialization=True)
                self.task.tokenizer.save_pretrained(folder / "policy_base")
            for name, model in models:
                if model is not None and not isinstance(model, AdapterDisabled):
                    model.save_pretrained(folder / name, safe_serialization=True)
                    self.task.tokenizer.save_pretrained(folder / name)
            tensors: dict[str, Any] = {"generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}
            if self.optimizer is not None:
                tensors["optimizer"] = self.optimizer.state_dict()
            torch.save(tensors, folder / "trainer_state.pt")
            self._save_extra(folder)
            state = {
                "algorithm": type(self).__name__,
                "config": asdict(self.config),
                "num_timesteps": self.num_timesteps,
                "iteration": self.iteration,
                "start_timesteps": self._start_timesteps,
                "target_timesteps": self._target_timesteps,
                **self._extra_state(),
            }
            (folder / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

        if self.dist.is_main:
            with quiet_transformers():  # no "Writing model shards" bar under the training bar
                save_dir_atomic(path, write)
        if self.dist.world_size > 1:
            torch.distributed.barrier()  # no rank reads the folder before it is complete

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any) -> Agent:
        """An agent restored from :meth:`save`, acting in ``env`` (which must have the same tokenizer)."""
        path = Path(path)
        state_file = path / "state.json"
        if not state_file.is_file():
            raise FileNotFoundError(f"{state_file} is missing: {path} is not a folder written by save().")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if state["algorithm"] != cls.__name__:
            raise ValueError(f"{path} holds a {state['algorithm']}, not a {cls.__name__}; load it with that class.")
        agent = cls.__new__(cls)
        policy, reference = (path / name if (path / name).is_dir() else None for name in ("policy", "reference"))
        if policy is not None and is_adapter_folder(policy):  # LoRA: base weights, adapter loaded in _setup
            policy = path / "policy_base"
        agent._setup(env, policy, cls.config_class(**state["config"]), reference, checkpoint=path)
        tensors = torch.load(path / "trainer_state.pt", weights_only=True)
        agent.generator.set_state(tensors["generator"])
        torch.set_rng_state(tensors["torch_rng"])
        if agent.optimizer is not None:
            agent.optimizer.load_state_dict(tensors["optimizer"])
        agent.num_timesteps, agent.iteration = state["num_timesteps"], state["iteration"]
        agent._start_timesteps, agent._target_timesteps = state["start_timesteps"], state["target_timesteps"]
        agent._load_extra_state(state)
        return agent

    # ---- helpers for subclasses ------------------------------------------------------
    def _prompt_seed(self) -> int:
        # Prompts (and sampling streams) of episode j of iteration i depend only on (seed, i, j), so a
        # resumed run draws what the killed one would, and ranks and workers draw what one process would.
        return self.config.seed + self.iteration * self.config.batch_size + self.dist.rank * self.env.num_envs

    def _generate(self, group_size: int = 1, output_hidden: bool = False) -> RolloutBatch:
        """Step 1 of every RL agent: this rank's share of the batch, from this process or the Ray workers."""
        config = self.config
        if getattr(config, "rollout_workers", 0):
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
            # without a kernel bias (PPO_NOTES #4). In float32 they agree to 1e-6 and are kept.
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
        if not torch.isfinite(value).all():
            raise FloatingPointError(
                f"iteration {self.iteration + 1}: {what} is {value.item() if value.numel() == 1 else value}; "
                f"training stopped before applying it. The last good checkpoint is {self.checkpoint_dir} "
                "(learn(..., resume=True) continues from it); lower learning_rate or check the reward model."
            )


# ---- command line ---------------------------------------------------------------------
def _flag_type(hint: Any) -> dict[str, Any]:
    """Keyword arguments of `add_argument` for one config field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner = _flag_type(next(a for a in args if a is not type(None)))
        convert = inner.get("type", str)
        return {**inner, "type": lambda text: None if text.lower() == "none" else convert(text)}
    if typing.get_origin(hint) is Literal:
        return {"choices": list(args)}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint is LoraSettings:
        return {"type": LoraSettings.parse, "metavar": "r=8,alpha=16,..."}
    return {"type": hint}


def config_cli(agent_class: type[Agent], argv: Sequence[str] | None, description: str,
               default_timesteps: int) -> int:
    """Parse ``--flags`` onto ``agent_class.config_class``, learn, save; the body of ``python -m agents.X``."""
    config_class = agent_class.config_class
    hints = typing.get_type_hints(config_class)
    parser = argparse.ArgumentParser(prog=f"python -m {agent_class.__module__}", description=description)
    parser.add_argument("--env", default="RLHFText-v0", help="registered text env id (default: %(default)s)")
    parser.add_argument("--total-timesteps", type=int, default=default_timesteps,
                        help="generated tokens to train for (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from LOG_DIR/checkpoint")
    parser.add_argument("--save", default=None, help="save the agent here at the end (default: LOG_DIR/model)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 on a shared machine)")
    if agent_class.needs_policy:
        parser.add_argument("--policy", default=None, help="causal-LM folder (default: the embedded policy)")
    for f in fields(config_class):
        kind = _flag_type(hints[f.name])
        parser.add_argument(f"--{f.name.replace('_', '-')}", default=f.default, **kind,
                            help=f"(default: {f.default})")
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    config = config_class(**{f.name: getattr(args, f.name) for f in fields(config_class)})
    policy = getattr(args, "policy", None)
    agent = agent_class(args.env, policy=policy, config=config) if agent_class.needs_policy \
        else agent_class(args.env, config=config)
    agent.learn(args.total_timesteps, resume=args.resume)
    save = args.save or str(Path(config.log_dir) / "model")
    agent.save(save)
    if agent.dist.is_main:
        print(f"{agent_class.__name__}: {agent.num_timesteps} timesteps in {agent.iteration} iterations; "
              f"saved to {save}; metrics in {config.log_dir}/progress.csv")
    return 0
