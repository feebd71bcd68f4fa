"""The observation contract on the model side: from ``Dict(input_ids, attention_mask)`` to next-token logits.

An observation is a window of token ids, right-aligned (left-padded), with
``attention_mask == 0`` on padding. Every policy or reference that reads it (the SB3
adapter, the KL reward wrapper, ``agents.rollout.sample_next_token``) turns it into the
distribution of the next token here, so they all agree: position ids from the mask, the
last position's logits sliced to the action space, temperature, then the action mask.
"""

from __future__ import annotations

from typing import Any

import torch


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(N, T)`` positions: each row's first real token is position 0, so left padding shifts nothing.

    Hugging Face models number positions ``0..T-1`` by column when given none, which would
    start a left-padded prompt at a later position than in training (docs/ppo_details.md #6).
    """
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def lm_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None) -> dict[str, Any]:
    """Keyword arguments for a causal LM reading a batch of observations ``(N, W)``.

    Without a cache, the all-padding columns on the left are dropped (right-aligned windows:
    the longest row decides). With ``cache``, ``input_ids`` holds only the new tokens and
    ``attention_mask`` covers cache and new tokens, as Hugging Face expects.
    """
    if cache is None:
        keep = max(int(attention_mask.sum(-1).max()), 1)
        input_ids, attention_mask = input_ids[:, -keep:], attention_mask[:, -keep:]  # (N, T)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids(attention_mask)[:, -input_ids.shape[1] :],  # (N, new tokens)
    }
    if cache is not None:
        inputs["cache"] = cache
    return inputs


def action_logits(
    logits: torch.Tensor, vocab_size: int, temperature: float = 1.0, action_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``(..., vocab_size)`` float32 logits of the env's actions: sliced, divided by ``temperature``, masked.

    A model may score more tokens than the tokenizer has (a padded embedding matrix): the
    extra columns are no action. Sampling and every log-prob use the same temperature
    (docs/ppo_details.md #5). Disallowed tokens (``action_mask`` False) get ``finfo.min``,
    not ``-inf``: their probability is exactly 0 and ``0 * log p`` stays 0 in an entropy.
    """
    logits = logits[..., :vocab_size].float()  # (..., V)
    if temperature != 1.0:  # dividing by 1 would only copy the (..., V) logits
        logits = logits / temperature
    if action_mask is not None:
        logits = logits.masked_fill(~action_mask, torch.finfo(logits.dtype).min)
    return logits


def next_token_logits(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    vocab_size: int,
    *,
    cache: Any = None,
    temperature: float = 1.0,
    action_mask: torch.Tensor | None = None,
    **model_kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """The next-token logits ``(N, vocab_size)`` of a batch of observations, and the model's output.

    Args:
        model: a causal LM (``model(input_ids, attention_mask, position_ids, ...)`` returning ``.logits``).
        input_ids: ``(N, W)`` observation tokens (long, on the model's device); with
            ``cache``, the new tokens only.
        attention_mask: ``(N, W)`` 1 on real tokens; with ``cache``, covering cache and new tokens.
        vocab_size: the env's action count; the logits are sliced to it.
        cache: the model's KV cache (``out.cache`` of an earlier call) of the tokens before ``input_ids``.
        temperature: the logits are divided by it (sampling and scoring alike).
        action_mask: bool ``(N, vocab_size)``, False for tokens that get probability 0.
        model_kwargs: passed to the model as they are (``use_cache``, ``logits_to_keep``,
            ``output_hidden_states``); the output carries what they ask for.
    """
    out = model(**lm_inputs(input_ids, attention_mask, cache), **model_kwargs)
    return action_logits(out.logits[:, -1], vocab_size, temperature, action_mask), out
