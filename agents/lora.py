"""LoRA adapters (``peft``) on a policy: only the adapters train, and the reference is free.

With LoRA the frozen base weights ARE the initial policy, so the KL anchor is the same
model called with its adapters disabled (:class:`AdapterDisabled`): no second copy of
the weights is held in memory, and the optimiser keeps moments for the adapters only.
``pip install peft`` (extra ``lora``) is needed only when LoRA is switched on.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["AdapterDisabled", "LoraSettings", "add_lora", "base_state_dict", "check_mergeable", "is_lora",
           "merged_state_dict", "trainable_parameters"]

ADAPTER_CONFIG = "adapter_config.json"
"""File that marks a folder as a peft adapter."""


@dataclass
class LoraSettings:
    """Where and how large the LoRA adapters are (Hu et al. 2021); ``PPOKLConfig(lora=LoraSettings())``."""

    r: int = 8
    """Rank of each adapter's update ``B @ A``."""
    alpha: float = 16.0
    """The update is scaled by ``alpha / r`` (peft's ``lora_alpha``)."""
    dropout: float = 0.0
    """Dropout on the adapter input; 0 because RLHF log-probs must be deterministic (docs/ppo_details.md #14)."""
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; None: peft's default for the architecture (GPT-2 ``c_attn``,
    Llama ``q_proj``/``v_proj``), or every linear layer but the output head when peft has none."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"LoraSettings: r={self.r} must be >= 1, alpha={self.alpha} > 0 and dropout={self.dropout} in [0, 1)."
            )
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)  # a JSON list when read back from a checkpoint

    @classmethod
    def parse(cls, text: str) -> LoraSettings:
        """From a command-line value: ``"r=16,alpha=32"``, ``"target_modules=q_proj+v_proj"``, or ``"default"``."""
        if text.strip().lower() in ("", "default", "on"):
            return cls()
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in hints:
                names = ", ".join(f.name for f in dataclasses.fields(cls))
                raise ValueError(f"--lora {text!r}: give key=value pairs of {names} (e.g. r=16,alpha=32).")
            values[key] = tuple(value.split("+")) if key == "target_modules" else hints[key](value)
        return cls(**values)


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs the peft package: pip install peft  (or: pip install 'rlhf-gym[lora]')") from None
    return peft


def _targets(model: Any, settings: LoraSettings) -> list[str] | str:
    if settings.target_modules is not None:
        return list(settings.target_modules)
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    known = defaults.get(getattr(model.config, "model_type", None))
    return list(known) if known else "all-linear"


def add_lora(model: Any, settings: LoraSettings, adapter: str | os.PathLike[str] | None = None) -> Any:
    """Wrap a causal LM in fresh LoRA adapters (B = 0: the output is unchanged), or load saved ones.

    Every base weight is frozen. ``adapter`` is a folder written by ``peft_model.save_pretrained``.
    """
    peft = _peft()
    if adapter is not None:
        return peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=True).eval()
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=_targets(model, settings), bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config).eval()


def is_lora(model: Any) -> bool:
    """True for a peft model (a policy with adapters)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def is_adapter_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds a saved peft adapter."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def base_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The frozen base weights of a peft model under their original names (no adapter tensors).

    What ``save_pretrained`` of the base model must write so that it loads as a plain model.
    """
    out = {}
    for key, value in model.get_base_model().state_dict().items():
        if "lora_" not in key:
            out[key.replace(".base_layer.", ".")] = value
    return out


def check_mergeable(model: Any) -> None:
    """Refuse adapters on a weight two layers share (tied input and output embeddings): merging would change both."""
    from peft.tuners.lora import LoraLayer

    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    tied = [name for name, module in model.get_base_model().named_modules()
            if isinstance(module, LoraLayer) and uses[id(module.get_base_layer().weight)] > 1]
    if tied:
        raise ValueError(
            f"LoRA adapters on {tied}: that weight is shared with another layer (tied embeddings), so merging the "
            "adapter into it would change both; leave it out of LoraSettings.target_modules."
        )


@torch.no_grad()
def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """A peft model's weights with its active adapters folded in, under the base model's names.

    What ``save_pretrained`` of the base model writes so that the fine-tuned model loads as a
    plain one. Unlike peft's ``merge_and_unload`` it leaves the model as it is, so training can go on.
    """
    from peft.tuners.lora import LoraLayer

    state = base_state_dict(model)
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            key = f"{name}.weight"
            for adapter in module.active_adapters:
                state[key] = state[key] + module.get_delta_weight(adapter).to(state[key].dtype)
    return state


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    """Parameters that receive gradients: all of a plain model, only the adapters of a LoRA one."""
    return [p for p in model.parameters() if p.requires_grad]


class AdapterDisabled:
    """The reference model of a LoRA policy: the same module called with its adapters switched off.

    Callable like a model (``reference(input_ids=..., ...)``); holds no weights of its own.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward pass: the policy's forward inside ``disable_adapter()``."""
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)

    def get_output_embeddings(self) -> torch.nn.Module:
        """The output layer the forward pass ends in (the policy's; its adapters are off during the call)."""
        return self.model.get_output_embeddings()
