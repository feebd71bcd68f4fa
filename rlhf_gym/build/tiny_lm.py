"""A tiny GPT-2-shaped causal LM initialised in code: where a default policy trained from scratch starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def init_tiny_lm(
    folder: str | Path,
    tokenizer: Any,
    *,
    n_positions: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    seed: int,
    dropout: float = 0.1,
) -> None:
    """Save a freshly initialised (seeded) GPT-2-shaped causal LM over ``tokenizer``, and the tokenizer, to ``folder``.

    The special tokens' ids (BOS, EOS, pad) are the tokenizer's, so generation stops at its EOS. ``dropout``
    is every dropout rate of GPT-2 (embeddings, attention, residual); 0.1 is GPT-2's own.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        resid_pdrop=dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
