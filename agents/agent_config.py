"""The settings every agent shares: :class:`AgentConfig`, and :class:`TrainConfig` for agents that learn by gradient."""

from __future__ import annotations

from dataclasses import dataclass

from agents.lora import LoraSettings

__all__ = ["RESUMABLE_CHANGES", "AgentConfig", "TrainConfig"]

RESUMABLE_CHANGES = frozenset({"device", "save_steps"})
"""Config fields a resumed run may change: they do not change what it computes."""


@dataclass
class AgentConfig:
    """Settings every agent has."""

    batch_size: int = 64
    """Episodes per iteration, generated together (the vector env's ``num_envs``)."""
    temperature: float = 1.0
    """Sampling temperature; every log-prob is computed at it too (docs/ppo_details.md #5)."""
    seed: int = 0
    """Seeds sampling, shuffling, the value-head init and the env's prompt draws."""
    log_dir: str = "runs/agent"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    save_steps: int = 10
    """Save a resumable checkpoint every this many iterations (and at the end); 0 never."""
    device: str = "auto"
    """Torch device for the models: ``"auto"`` is CUDA when present, else CPU."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.temperature <= 0 or self.save_steps < 0:
            raise ValueError(
                f"batch_size={self.batch_size} must be >= 1, temperature={self.temperature} > 0 and "
                f"save_steps={self.save_steps} >= 0."
            )

    def check_divides_batch(self, name: str, minimum: int = 1) -> None:
        """Refuse a field ``name`` below ``minimum`` or not dividing ``batch_size`` (groups, minibatches)."""
        value = getattr(self, name)
        if value < minimum or self.batch_size % value:
            raise ValueError(f"{name}={value} must be >= {minimum} and divide batch_size={self.batch_size}.")


@dataclass
class TrainConfig(AgentConfig):
    """Settings every agent that updates its policy by gradient has."""

    num_mini_batches: int = 4
    """Minibatches per batch; each gives one optimiser step (or one gradient-accumulation part)."""
    learning_rate: float = 1e-4
    """Adam step size at the start. 1e-4 suits the embedded 4x256 policy (clip fraction ~0.1 falling
    to 0.01); OAI used 1.41e-5 for GPT-2 124M: lower it for larger models."""
    adam_eps: float = 1e-5
    """Adam epsilon: 1e-5 as TF's default in lm-human-preferences, not PyTorch's 1e-8 (docs/ppo_details.md #14)."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over ``total_timesteps`` (OAI, CleanRL)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (CleanRL: 0.5; TRL: 1.0)."""
    missing_eos_penalty: float = 0.0
    """Extra score penalty when a response hits the length cap, on top of the task's own
    (:meth:`agents.rollout.RolloutBatch.penalized_rewards`, docs/ppo_details.md #7)."""
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
        self.check_divides_batch("num_mini_batches")
        if isinstance(self.lora, dict):  # read back from a checkpoint's state.json
            self.lora = LoraSettings(**self.lora)
        if self.rollout_workers < 0 or self.rollout_worker_gpus < 0:
            raise ValueError(f"rollout_workers={self.rollout_workers} and "
                             f"rollout_worker_gpus={self.rollout_worker_gpus} must be >= 0.")
        if self.rollout_workers and self.batch_size % self.rollout_workers:
            raise ValueError(f"rollout_workers={self.rollout_workers} must divide batch_size={self.batch_size} "
                             "(equal shares).")
