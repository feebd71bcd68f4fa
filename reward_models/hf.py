"""Hugging Face loading shared by every package: device choice and tokenizers.

Nothing here downloads unless the user passes a hub name on a machine that is
online; remote code runs only when ``trust_remote_code=True`` is asked for.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class UnsafeCheckpointError(ValueError):
    """A weights file that only a full pickle load, which can run arbitrary code, would read: refused."""


@contextmanager
def refuse_pickled_code(source: str | os.PathLike[str]) -> Iterator[None]:
    """Turn torch's ``weights_only`` refusal inside the block into an :class:`UnsafeCheckpointError`.

    Weights load through safetensors or ``torch.load(weights_only=True)``, which reads
    tensors and plain containers but refuses any other pickled object (a class with
    ``__reduce__`` can run code when unpickled). Torch's own message suggests retrying
    with ``weights_only=False``; this one names the file and says what to do instead.
    """
    try:
        yield
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"a pickled {found.group(1)!r}" if found else "pickled Python objects"
        raise UnsafeCheckpointError(
            f"{source}: refused to load: a weights file there holds {what}, not only tensors, and unpickling "
            "it could run arbitrary code. Use safetensors (or plain tensor) checkpoints; if you made this file "
            "yourself, re-save it with save_pretrained (safetensors)."
        ) from None


def load_tokenizer(name_or_path: str | os.PathLike[str], trust_remote_code: bool = False) -> Any:
    """A tokenizer from a local folder or hub name, with a pad token guaranteed.

    Models without a pad token (GPT-2, Llama) get their EOS token as pad; the
    environments' attention masks mark padding, so no loss or statistic sees it.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except OSError as e:
        raise OSError(
            f"could not load a tokenizer from {str(name_or_path)!r}: {e}\n"
            "Pass a local folder holding tokenizer files, or a hub name on a machine that is online."
        ) from e
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok
