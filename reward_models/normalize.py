"""Score normalization of a trained reward model, folded into its own weights.

After training, scores are normalized to mean 0 and std 1 on reference samples (SFT
samples; Ziegler et al. 2019, and docs/ppo_details.md #8). The scale and shift are folded
into the final layer, so every reader of the saved folder (TRL, OpenRLHF,
:class:`~reward_models.hf_model.HFRewardModel`) sees the normalized score; only what
cannot be folded is left to ``output_offset`` in ``reward_normalization.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reward_models.hf_model import HFRewardModel, score_head


@dataclass(frozen=True)
class Normalization:
    """How raw scores were mapped to mean 0, std 1 on the reference samples: ``(raw - shift) / scale``."""

    shift: float
    """Mean raw score on the reference samples."""
    scale: float
    """Standard deviation of the raw scores on the reference samples."""
    folded_into: str
    """Parameter that absorbed the shift (e.g. ``score.bias``); empty when none could."""
    output_offset: float
    """What readers must still subtract from the saved model's output (0 when the shift is folded)."""
    reference_samples: int
    """Number of reference samples."""


def normalize_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 32,
    max_length: int | None = None,
) -> Normalization:
    """Make the model score the reference samples with mean 0 and std 1, in its own weights.

    The scale always folds into the score head's weight. The shift folds into the head's
    bias, or, for heads without one (GPT-2), into the bias of the final LayerNorm that
    feeds the head (it adds a constant vector to every hidden state). When neither works
    (e.g. Llama's RMSNorm has no bias), ``output_offset`` carries the shift and
    :class:`HFRewardModel` subtracts it. The result is checked sample by sample.
    """
    if len(prompts) < 2:
        raise ValueError(f"normalization needs at least 2 reference samples, got {len(prompts)}.")

    def rescore(offset: float = 0.0) -> np.ndarray:
        rm = HFRewardModel.from_model(model, tokenizer, batch_size, max_length, offset)
        return rm.score(prompts, responses)

    raw = rescore()
    shift, scale = float(raw.mean()), float(raw.std())
    if scale < 1e-6:
        raise ValueError(
            f"the reward model gives all {len(raw)} reference samples the same score ({shift:.4g}), "
            "so it cannot be normalized: it learned nothing that separates them. Check the data and learning rate."
        )
    expected = (raw - shift) / scale
    name, head = score_head(model)
    with torch.no_grad():
        head.weight.div_(scale)
        if head.bias is not None:
            head.bias.sub_(shift).div_(scale)
            folded = f"{name}.bias"
        else:
            folded = _fold_into_final_layer_norm(model, head, shift / scale, lambda: _close(rescore(), expected))
    offset = 0.0 if folded else shift / scale
    now = rescore(offset)
    if not _close(now, expected):
        raise RuntimeError(
            f"normalization folded into {folded or 'the head weight'} did not reproduce (raw - shift) / scale "
            f"(largest error {np.abs(now - expected).max():.3g}); please report this model type."
        )
    return Normalization(shift, scale, folded, offset, len(prompts))


def _fold_into_final_layer_norm(
    model: Any, head: torch.nn.Linear, offset: float, exact: Callable[[], bool]
) -> str:
    """Subtract ``offset`` from every score through the last LayerNorm's bias, if ``exact()`` then holds.

    Adding ``delta = -offset * w / (w . w)`` to the bias of the LayerNorm whose output the
    head reads shifts every score by ``w . delta = -offset``. Which LayerNorm that is, is
    checked, not assumed: the change is undone unless the reference scores come out right.
    Returns the bias's name, or '' when nothing was folded.
    """
    w = head.weight[0]  # (d,) already divided by scale
    norms = [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, torch.nn.LayerNorm) and m.bias is not None and m.bias.shape == w.shape
    ]
    if not norms:
        return ""
    name, norm = norms[-1]
    delta = -offset * w / torch.dot(w, w)  # (d,)
    norm.bias.add_(delta)
    if exact():
        return f"{name}.bias"
    norm.bias.sub_(delta)
    return ""


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, atol=1e-3, rtol=1e-3))
