"""Rollout workers as Ray actors: each holds a policy copy and a batched vector env, the learner updates.

A :class:`RolloutPool` splits every batch into equal shares, one per :class:`RolloutWorker`.
A worker steps its own ``TextGenerationVectorEnv`` (autoreset DISABLED) with
:func:`agents.rollout.rollout`, so the env scores its episodes there, in one reward-model
call per step; the learner merges the shares into one batch and updates. Episode ``j`` is
seeded by its global index (``seed + j``) for its prompt and its sampling stream, so
the merged batch is the one a single process would have generated. After each update
the learner puts the trainable weights (all of them, or only the LoRA adapters) in
Ray's object store once and every worker loads them.

Agents use it through ``rollout_workers=N`` in their config::

    import ray
    ray.init()                     # local; ray.init(address="auto") joins a running cluster
    agent = PPOKL(task, config=PPOKLConfig(batch_size=64, rollout_workers=4)).learn(100_000)

``pip install ray`` (extra ``ray``) is needed only here.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from agents.rollout import RolloutBatch, make_rollout_env, rollout
from reward_models.hf import resolve_device

__all__ = ["RolloutPool", "RolloutWorker", "merge_batches"]


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("rollout_workers > 0 needs Ray: pip install ray  (or: pip install 'rlhf-gym[ray]')") from None
    return ray


def _to(batch: RolloutBatch, device: torch.device | str) -> RolloutBatch:
    changes = {f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
               if isinstance(getattr(batch, f.name), torch.Tensor)}
    return dataclasses.replace(batch, **changes)


def _register_output_capture(policy: torch.nn.Module) -> None:
    """Re-register the model classes of an unpickled policy with transformers' output capture.

    transformers 5 records which outputs a class can return (hidden states among them) in
    ``PreTrainedModel.__init__``; unpickling skips ``__init__``, so in a fresh worker process
    ``output_hidden_states=True`` would silently return ``None`` (the value head needs them).
    """
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # older transformers return hidden states without a registry
        return
    from transformers import PreTrainedModel

    for module in policy.modules():
        if isinstance(module, PreTrainedModel):
            _CAN_RECORD_REGISTRY[module] = module._can_record_outputs


class RolloutWorker:
    """One Ray actor's state: a policy copy and a vector env of ``num_envs`` episodes.

    Args:
        task: the env's :class:`text_env.Task` (prompts, tokenizer, reward model).
        policy: the causal LM (a copy arrives through the object store).
        num_envs: episodes this worker generates per batch.
        num_threads: torch CPU threads in this worker.
    """

    def __init__(self, task: Any, policy: Any, num_envs: int, num_threads: int = 1) -> None:
        torch.set_num_threads(num_threads)
        self.env = make_rollout_env(task, num_envs)
        _register_output_capture(policy)
        self.policy = policy.to(resolve_device("auto")).eval()  # a GPU only if Ray gave this actor one

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Take the learner's trainable weights (by parameter name) after an update."""
        missing = set(weights) - {name for name, _ in self.policy.named_parameters()}
        if missing:
            raise KeyError(f"the worker's policy has no parameters {sorted(missing)[:3]}...: it is another model.")
        self.policy.load_state_dict(weights, strict=False)

    def rollout(self, temperature: float, seed: int, group_size: int, output_hidden: bool = False) -> RolloutBatch:
        """The worker's share of the batch, episode ``j`` seeded ``seed + j``; tensors on the CPU."""
        batch = rollout(self.policy, self.env, temperature=temperature, seed=seed, group_size=group_size,
                        output_hidden=output_hidden)
        return _to(batch, "cpu")


class RolloutPool:
    """``num_workers`` :class:`RolloutWorker` actors sharing each batch of ``batch_size`` episodes equally.

    Starts a local Ray instance unless ``ray.init`` was already called (e.g. with
    ``address="auto"`` to join a multi-node cluster).

    Args:
        task: the env's task, sent to every worker once.
        policy: the learner's policy; workers start from a copy of its current weights.
        num_workers: Ray actors.
        batch_size: episodes per batch over all workers; ``num_workers`` must divide it.
        num_gpus: GPUs Ray reserves per worker (0: CPU workers).
        num_cpus: CPUs Ray reserves per worker; also its torch thread count.
    """

    def __init__(self, task: Any, policy: Any, num_workers: int, batch_size: int, num_gpus: float = 0.0,
                 num_cpus: int = 1) -> None:
        if num_workers < 1 or batch_size % num_workers:
            raise ValueError(f"num_workers={num_workers} must be >= 1 and divide batch_size={batch_size}.")
        ray = _ray()
        if not ray.is_initialized():
            ray.init()
        self.share = batch_size // num_workers
        self.pad_token_id = task.pad_token_id
        # Pickle a CPU copy: a worker may sit on another machine or have no GPU.
        cpu_policy = policy if next(policy.parameters()).device.type == "cpu" else copy.deepcopy(policy).cpu()
        task_ref, policy_ref = ray.put(task), ray.put(cpu_policy)
        actor = ray.remote(RolloutWorker).options(num_cpus=num_cpus, num_gpus=num_gpus)
        self.workers = [actor.remote(task_ref, policy_ref, self.share, num_cpus) for _ in range(num_workers)]

    def sync(self, policy: Any) -> None:
        """Send the policy's trainable weights to every worker (one object-store copy) and wait."""
        ray = _ray()
        weights = ray.put({n: p.detach().cpu() for n, p in policy.named_parameters() if p.requires_grad})
        ray.get([w.load_weights.remote(weights) for w in self.workers])

    def rollout(self, temperature: float, seed: int, group_size: int = 1,
                device: torch.device | str = "cpu", output_hidden: bool = False) -> RolloutBatch:
        """One batch: worker ``i`` generates episodes ``i * share ...`` with seeds ``seed + i * share + j``."""
        if self.share % group_size:
            raise ValueError(f"group_size={group_size} must divide each worker's share of {self.share} episodes.")
        ray = _ray()
        futures = [w.rollout.remote(temperature, seed + i * self.share, group_size, output_hidden)
                   for i, w in enumerate(self.workers)]
        return merge_batches(ray.get(futures), self.pad_token_id, device)

    def close(self) -> None:
        """Stop the worker actors."""
        ray = _ray()
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []


def merge_batches(batches: Sequence[RolloutBatch], pad_token_id: int,
                  device: torch.device | str = "cpu") -> RolloutBatch:
    """One batch from several: prompts left-padded and responses right-padded to the widest, as one rollout pads."""
    merged = RolloutBatch.concat(batches, pad_token_id)
    return _to(merged, device)
