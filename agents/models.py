"""An agent's models: the policy, its frozen reference, LoRA adapters, the device, the torchrun broadcast.

:func:`build_models` turns what a user passes (a model, a folder, or None for the embedded
default policy) into the policy an agent trains and the reference its KL is measured
against, checking that both fit the env's task; :func:`save_models` writes them into a
checkpoint folder and :func:`checkpoint_models` finds them there again.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.distributed import DistInfo, broadcast_parameters, resolve_rank_device
from agents.lm import load_causal_lm
from agents.lora import AdapterDisabled, LoraSettings, add_lora, base_state_dict, is_adapter_folder, is_lora
from rlhf_common.training import quiet_transformers

__all__ = ["Models", "PolicyArg", "agent_device", "build_models", "checkpoint_models", "load_model", "save_models"]

PolicyArg = str | os.PathLike[str] | torch.nn.Module | None
"""A causal LM, a Hugging Face folder, or None for the embedded default policy."""


@dataclass
class Models:
    """The models an agent acts and learns with."""

    policy: Any
    """The causal LM that samples and trains (a peft model with LoRA); None for an agent without one."""
    reference: Any
    """The frozen KL anchor: a copy of the initial policy, a given model, or the LoRA policy with its
    adapters off (:class:`agents.lora.AdapterDisabled`); None when the agent needs none."""


def agent_device(device: str, dist: DistInfo, needs_policy: bool) -> torch.device:
    """Where an agent's models live: ``device`` (this rank's GPU under torchrun), the CPU without a model."""
    return resolve_rank_device(device, dist) if needs_policy else torch.device("cpu")


def load_model(model: PolicyArg, device: torch.device, task: Any = None) -> Any:
    """``model`` on ``device`` in eval mode: a module as is, a folder loaded, None the task's default policy.

    None loads ``task.default_policy`` (each registered env ships one), else the embedded default of RLHFText-v0.
    """
    if model is None:
        from text_env.defaults import default_policy_path

        model = getattr(task, "default_policy", None) or default_policy_path()
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    with quiet_transformers():
        return load_causal_lm(model, device=device)


def _check_default_fits(policy: Any, task: Any) -> None:
    """Refuse RLHFText-v0's embedded policy for a task with another vocabulary (it would write nonsense)."""
    vocab = policy.get_output_embeddings().out_features
    if vocab != task.vocab_size:
        raise ValueError(
            f"no policy given and task {task.name!r} names no default_policy, so the embedded RLHFText-v0 policy "
            f"({vocab} tokens) was loaded, but the task's tokenizer has {task.vocab_size}; pass policy=FOLDER "
            "(a causal LM over the task's tokenizer) or set Task(default_policy=FOLDER)."
        )


def _check_fits(policy: Any, task: Any, lora: LoraSettings | None) -> None:
    """Refuse a policy whose vocabulary or context is too small for ``task``, or a peft model without ``lora``."""
    vocab = policy.get_output_embeddings().out_features
    if vocab < task.vocab_size:
        raise ValueError(
            f"policy has {vocab} output tokens but the env's tokenizer has {task.vocab_size}; "
            "use the policy's own tokenizer in the Task (default_task(model=PATH))."
        )
    cfg = policy.config
    positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if positions is not None and positions < task.window:
        raise ValueError(
            f"the task's window is {task.window} tokens (max_prompt_tokens {task.max_prompt_tokens}"
            f" + max_new_tokens {task.max_new_tokens}) but the policy has {positions} positions; "
            "lower them in the Task so prompt and response fit the model."
        )
    if lora is None and is_lora(policy):
        raise ValueError(
            "policy is already a peft model; pass its base model and config lora=LoraSettings(...), "
            "so that checkpoints save and restore the adapters."
        )


def build_models(
    task: Any,
    policy: PolicyArg,
    reference: PolicyArg,
    *,
    device: torch.device,
    dist: DistInfo,
    needs_policy: bool = True,
    needs_reference: bool = True,
    lora: LoraSettings | None = None,
    adapter: str | os.PathLike[str] | None = None,
) -> Models:
    """Load the policy and its reference for ``task`` and give every torchrun rank rank 0's weights.

    The reference is a frozen copy of the initial policy unless one is given. With ``lora``
    the policy gets adapters (fresh, or loaded from the ``adapter`` folder) and the reference
    is the policy with its adapters off, so the model is held once (memory: bench/memory.py).
    """
    model = None
    if needs_policy:
        model = load_model(policy, device, task)
        if policy is None and not getattr(task, "default_policy", None):
            _check_default_fits(model, task)
        _check_fits(model, task, lora)
    anchor = None
    if needs_reference and (lora is None or reference is not None):
        # The reference is a frozen copy of the initial policy: no grad, eval (docs/ppo_details.md #1).
        anchor = copy.deepcopy(model) if reference is None else load_model(reference, device, task)
        anchor.requires_grad_(False).eval()
    if lora is not None:
        model = add_lora(model, lora, adapter).to(device)
        if needs_reference and reference is None:
            anchor = AdapterDisabled(model)  # the frozen base weights are the initial policy
    if needs_policy:
        broadcast_parameters([model], dist)  # every rank starts from rank 0's weights
    return Models(policy=model, reference=anchor)


def checkpoint_models(folder: Path) -> tuple[Path | None, Path | None, Path | None]:
    """``(policy, reference, adapter)`` folders of a checkpoint, None where it has none.

    With LoRA ``policy/`` is the peft adapter: the policy then loads from ``policy_base/``
    (its frozen base weights) and the adapter from ``policy/``.
    """
    policy, reference = (folder / name if (folder / name).is_dir() else None for name in ("policy", "reference"))
    if policy is not None and is_adapter_folder(policy):
        return folder / "policy_base", reference, policy
    return policy, reference, None


def save_models(folder: Path, policy: Any, reference: Any, tokenizer: Any) -> None:
    """Write ``policy/`` and ``reference/`` as Hugging Face folders (safetensors) with the env's tokenizer.

    With LoRA ``policy/`` is the peft adapter and ``policy_base/`` its frozen base model
    (also the reference, unless one was given: :class:`AdapterDisabled` is not written).
    """
    if is_lora(policy):
        base = policy.get_base_model()
        base.save_pretrained(folder / "policy_base", state_dict=base_state_dict(policy), safe_serialization=True)
        tokenizer.save_pretrained(folder / "policy_base")
    for name, model in (("policy", policy), ("reference", reference)):
        if model is not None and not isinstance(model, AdapterDisabled):
            model.save_pretrained(folder / name, safe_serialization=True)
            tokenizer.save_pretrained(folder / name)
