"""Hugging Face sequence-classification reward models: the input format and batched scoring.

Training (:mod:`reward_models.train`) and scoring (:class:`HFRewardModel`) build model
inputs with the same two functions, :func:`encode_for_reward` and :func:`sequence_scores`,
so a reward model sees at scoring time exactly what it saw in training. The text format
is TRL ``RewardTrainer``'s: ``prompt + response + eos_token``, tokenised with the
tokenizer's special tokens; a model trained by either tool scores the same in both.
Conversations arrive as text, rendered once by :mod:`reward_models.chat`: by
:func:`~reward_models.preferences.load_preferences` for training, by the env's ``Task``
for scoring, so a reward model that shares the policy's tokenizer (one trained from the
SFT policy) scores the prompt text it was trained on.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reward_models.hf import load_tokenizer, refuse_pickled_code, resolve_device

NORMALIZATION_FILE = "reward_normalization.json"
"""Written next to a trained model: the reference-set shift and scale, and any offset left to apply."""


def encode_for_reward(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int | None
) -> list[list[int]]:
    """Token ids of ``prompt + response + eos_token`` for each pair (TRL's reward-model format).

    A sequence longer than ``max_length`` keeps its last ``max_length`` tokens, since the
    score is read at the final token; a warning says how many were cut.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; pass one per response.")
    if not prompts:
        return []
    eos = tokenizer.eos_token or ""
    texts = [p + r if (p + r).endswith(eos) else p + r + eos for p, r in zip(prompts, responses, strict=True)]
    ids = [list(x) for x in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    if max_length is not None:
        cut = sum(len(x) > max_length for x in ids)
        if cut:
            warnings.warn(
                f"{cut} of {len(ids)} prompt+response sequences exceed max_length={max_length} tokens and "
                "lose their beginning; raise max_length to keep them whole.",
                stacklevel=2,
            )
            ids = [x[-max_length:] for x in ids]
    return ids


def sequence_scores(
    model: Any, sequences: Sequence[Sequence[int]], padding_side: str = "right"
) -> torch.Tensor:
    """One scalar score per token sequence, shape ``(len(sequences),)``, in one forward pass.

    Pads with ``model.config.pad_token_id``, which is also what the classifier uses to find
    each sequence's last real token. Right padding works for every architecture; left
    padding needs the model to take ``position_ids`` (passed as ``cumsum(mask) - 1``).
    """
    pad_id = model.config.get_text_config().pad_token_id
    if pad_id is None:
        raise ValueError(
            "the reward model's config has no pad_token_id, so its classifier cannot find the last "
            "token of a padded sequence; set model.config.pad_token_id = tokenizer.pad_token_id."
        )
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    for i, seq in enumerate(sequences):
        span = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
        input_ids[i, span] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    inputs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
    if "position_ids" in inspect.signature(model.forward).parameters:
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)  # (B, T)
    elif padding_side != "right":
        raise ValueError(f"{type(model).__name__} takes no position_ids; use padding_side='right'.")
    logits = model(**inputs).logits  # (B, num_labels)
    if logits.shape[-1] != 1:
        raise ValueError(
            f"the model outputs {logits.shape[-1]} labels; a reward model has one "
            "(AutoModelForSequenceClassification with num_labels=1)."
        )
    return logits[:, 0]  # (B,)


def model_max_length(model: Any, tokenizer: Any) -> int | None:
    """The longest input the model takes: its position-embedding size, else the tokenizer's limit."""
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if positions:
        return int(positions)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 1_000_000 else None


def score_head(model: torch.nn.Module) -> tuple[str, torch.nn.Linear]:
    """The final ``nn.Linear`` producing the single score (``score`` in GPT-2, ``classifier`` in BERT)."""
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no linear layer with one output to act as the score head.")
    return heads[-1]


def load_reward_backbone(name_or_path: str, seed: int = 0, trust_remote_code: bool = False) -> Any:
    """``AutoModelForSequenceClassification(num_labels=1)`` from any Hugging Face folder or name.

    A head absent from the checkpoint (a causal LM or an encoder) or of another shape
    (a classifier with more labels) is initialised N(0, 1/sqrt(d + 1)), bias 0, with ``seed``.
    """
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    try:
        with refuse_pickled_code(name_or_path):
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path,
                num_labels=1,
                dtype=torch.float32,
                weights_only=True,
                trust_remote_code=trust_remote_code,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
    except OSError as e:
        raise OSError(
            f"--model {name_or_path!r}: could not load it: {e}\n"
            "Pass a local Hugging Face folder (config.json + weights), or a hub name on a machine that is online."
        ) from e
    name, head = score_head(model)
    mismatched = {m[0] if isinstance(m, tuple) else m for m in info["mismatched_keys"]}  # (key, shapes) or key
    if any(k.startswith(name + ".") for k in info["missing_keys"] | mismatched):
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / math.sqrt(head.in_features + 1))
            if head.bias is not None:
                head.bias.zero_()
    return model


class HFRewardModel:
    """A saved ``AutoModelForSequenceClassification`` (one label) as a :class:`RewardModel`.

    Loads models trained here or by TRL's ``RewardTrainer``; scores ``prompt + response``
    in batches (shortest padding: sequences sorted by length), in eval mode, without
    gradients. A ``reward_normalization.json`` beside the weights supplies any offset that
    could not be folded into them.

    Args:
        path: a folder saved with ``save_pretrained`` (or a hub name on a machine that is online).
        device: ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda:1"``...
        batch_size: sequences per forward pass.
        max_length: longest sequence in tokens (longer ones keep their end); default: the model's limit.
        trust_remote_code: allow custom model code from the folder.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str | torch.device = "auto",
        batch_size: int = 32,
        max_length: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForSequenceClassification

        try:
            with refuse_pickled_code(path):
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    str(path),
                    dtype=torch.float32,
                    trust_remote_code=trust_remote_code,
                    weights_only=True,
                    output_loading_info=True,
                )
        except OSError as e:
            raise OSError(
                f"could not load a reward model from {str(path)!r}: {e}\n"
                "Pass a folder saved by `rlhf-gym train-rm` or TRL's RewardTrainer."
            ) from e
        bad = sorted(info["missing_keys"]) + sorted(info["mismatched_keys"])
        if bad:
            raise ValueError(
                f"{path}: weights {bad} are missing or of the wrong shape, so the scores would be random; "
                "this folder holds no trained reward model. Train one with `rlhf-gym train-rm --model "
                f"{path} ...` and load its --out folder."
            )
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        norm_file = Path(path) / NORMALIZATION_FILE
        offset = json.loads(norm_file.read_text()).get("output_offset", 0.0) if norm_file.is_file() else 0.0
        self._setup(model.to(resolve_device(device)), tokenizer, batch_size, max_length, offset)
        self.path = str(path)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        batch_size: int = 32,
        max_length: int | None = None,
        output_offset: float = 0.0,
    ) -> HFRewardModel:
        """Wrap a model already in memory (e.g. during training); puts it in eval mode."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, batch_size, max_length, output_offset)
        self.path = f"<in-memory {type(model).__name__}>"
        return self

    def _setup(self, model: Any, tokenizer: Any, batch_size: int, max_length: int | None, offset: float) -> None:
        if model.config.num_labels != 1:
            raise ValueError(
                f"the model has num_labels={model.config.num_labels}; a reward model has one "
                "(AutoModelForSequenceClassification.from_pretrained(..., num_labels=1))."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        text_config = model.config.get_text_config()
        if text_config.pad_token_id is None:
            # TRL does the same before training: the classifier finds the last token through it.
            text_config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or model_max_length(model, tokenizer)
        self.output_offset = float(offset)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """One score per (prompt, response) pair, shape ``(len(prompts),)``."""
        ids = encode_for_reward(self.tokenizer, prompts, responses, self.max_length)
        out = np.empty(len(ids), dtype=np.float64)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = sequence_scores(self.model, [ids[i] for i in chunk]).double().cpu().numpy()
        return out - self.output_offset

    def __repr__(self) -> str:
        return f"HFRewardModel({self.path!r})"
