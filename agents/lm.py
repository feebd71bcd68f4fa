"""Causal language models as policies: any Hugging Face causal LM from a folder or hub name."""

from __future__ import annotations

import os
from typing import Any

import torch

from reward_models.hf import load_tokenizer, resolve_device

__all__ = ["load_causal_lm", "load_policy", "load_tokenizer", "resolve_device"]


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = torch.float32,
    trust_remote_code: bool = False,
) -> Any:
    """Load ``AutoModelForCausalLM`` onto ``device`` (``"auto"``: CUDA if present, else CPU).

    Weights load through safetensors when the folder has them, else through
    ``torch.load(weights_only=True)`` (transformers' default); remote code runs only
    with ``trust_remote_code=True``. Dropout is off: RLHF log-probs must be deterministic.
    """
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path), dtype=dtype, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise OSError(
            f"could not load a causal LM from {str(name_or_path)!r}: {e}\n"
            "Pass a local folder saved with save_pretrained, or a hub name on a machine that is online."
        ) from e
    return model.to(resolve_device(device)).eval()


def load_policy(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device = "auto",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """The model and its tokenizer from one folder or hub name."""
    model = load_causal_lm(name_or_path, device=device, trust_remote_code=trust_remote_code)
    return model, load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
