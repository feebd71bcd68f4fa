"""Data parallelism under ``torchrun``: each rank generates its share of the batch, gradients are summed.

``torchrun --nproc_per_node N script.py`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`init_distributed` then joins the process group (gloo on CPU, NCCL on GPU). Agents
keep every statistic that shapes the update global (advantage whitening in
:func:`agents.ppo_utils.masked_whiten`, the KL controller, the per-minibatch token count
that normalizes the loss), so N processes take the same step as one process over the
same global batch, up to floating-point reduction order. Only rank 0 writes checkpoints
and logs. Without ``WORLD_SIZE > 1`` every helper here is a no-op and nothing touches
``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from reward_models.hf import resolve_device

__all__ = ["DistInfo", "all_gather_objects", "all_gather_rows", "all_reduce", "broadcast_parameters",
           "check_data_parallel", "init_distributed", "reduce_gradients", "reduce_metrics", "resolve_rank_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where the current process sits in a data-parallel run."""

    rank: int = 0
    """Global rank, 0 .. world_size - 1."""
    world_size: int = 1
    """Number of processes."""
    local_rank: int = 0
    """Rank on this machine: which GPU this process uses."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and progress bars."""
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (once per process); else a 1-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        # NCCL for GPUs, gloo on CPU: the backends torch ships for each.
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def check_data_parallel(info: DistInfo, name: str, supported: bool, batch_size: int, rollout_workers: int,
                        group_size: int = 1) -> None:
    """Refuse a torchrun world the agent ``name`` cannot run in: no support, an uneven batch, or Ray workers too.

    ``group_size`` samples of one prompt (``num_generations``) must be generated on one rank.
    """
    if info.world_size == 1:
        return
    if not supported:
        raise ValueError(
            f"{name} does not support torchrun data parallelism (WORLD_SIZE={info.world_size}); "
            "run it in one process, or use an agent that supports it (PPOKL, RLOO, GRPO, ReinforcePP, DPO, "
            "OnlineDPO, VBoN)."
        )
    if batch_size % info.world_size:
        raise ValueError(
            f"batch_size={batch_size} is the global batch: it must be divisible by "
            f"WORLD_SIZE={info.world_size}, each rank generating an equal share."
        )
    if rollout_workers:
        raise ValueError("rollout_workers > 0 (Ray) and torchrun data parallelism cannot be combined; pick one.")
    share = batch_size // info.world_size
    if share % group_size:
        raise ValueError(f"{group_size} samples per prompt (num_generations) must divide each rank's {share} "
                         "episodes (batch_size / WORLD_SIZE): a prompt's samples are generated on one rank.")


def resolve_rank_device(device: str | torch.device, info: DistInfo) -> torch.device:
    """``resolve_device``, with ``"auto"``/``"cuda"`` meaning this rank's own GPU (``cuda:LOCAL_RANK``)."""
    resolved = resolve_device(device)
    if info.world_size > 1 and resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", info.local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)  # NCCL collectives run on the current device
    return resolved


def all_reduce(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returns it (unchanged in a 1-process run)."""
    if info.world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def reduce_gradients(parameters: Sequence[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum every parameter's gradient over ranks in one flat all-reduce.

    A rank that had no rows in a minibatch contributes zeros, so it still joins the collective.
    """
    if info.world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for p, chunk in zip(parameters, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = chunk.view_as(p).clone()


def broadcast_parameters(modules: Iterable[torch.nn.Module], info: DistInfo) -> None:
    """Copy rank 0's weights to every rank, so all start from the same model (as DDP does)."""
    if info.world_size == 1:
        return
    for module in modules:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def reduce_metrics(metrics: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Every metric averaged over ranks, for rank 0's log.

    Every rank holds the same number of episodes, so the average of per-episode means is
    the global mean; token-weighted means are averaged with equal rank weights; values
    already global are unchanged. ``device`` is where the collective runs (this rank's GPU under NCCL).
    """
    if info.world_size == 1:
        return metrics
    keys = sorted(metrics)
    values = all_reduce(torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device), info)
    return {k: float(v) / info.world_size for k, v in zip(keys, values, strict=True)}


def all_gather_rows(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's ``tensor`` (equal shapes) concatenated along dim 0 in rank order."""
    if info.world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_objects(items: list[Any], info: DistInfo) -> list[Any]:
    """Every rank's list of picklable ``items`` concatenated in rank order (``items`` itself in one process)."""
    if info.world_size == 1:
        return items
    parts: list[list[Any] | None] = [None] * info.world_size
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part or []]
