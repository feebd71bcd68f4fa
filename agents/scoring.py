"""One-pass log-probs of finished responses: prompt + response sequences packed without padding.

:func:`response_logprobs` re-scores a :class:`~agents.rollout.RolloutBatch` (or a
:class:`SequenceBatch` of given sequences, e.g. preference pairs) in one forward pass over
sequences packed end to end (:func:`pack_sequences`): reference and new-policy log-probs
(and a shared value head's hidden states) come from it, and agree with the rollout's up to
float rounding (tests/test_rollout.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agents.rollout import RolloutBatch, autocast, next_token_logprobs
from text_env.observation import position_ids

__all__ = ["PackedSequences", "ResponseOutput", "SequenceBatch", "pack_sequences", "response_logprobs"]


@dataclass
class SequenceBatch:
    """Prompt + response token sequences that were not sampled here (preference data): what scoring reads.

    The token fields of a :class:`~agents.rollout.RolloutBatch`, in the same layout, so both score alike.
    """

    prompt_ids: torch.Tensor
    """(B, P) prompt tokens, left-padded."""
    prompt_mask: torch.Tensor
    """(B, P) 1 on prompt tokens, 0 on padding."""
    response_ids: torch.Tensor
    """(B, T) response tokens, right-padded."""
    response_mask: torch.Tensor
    """(B, T) 1 on response tokens, 0 on padding."""
    action_masks: torch.Tensor | None = None
    """(B, T, V) bool allowed tokens at each response step, or None (every token allowed)."""


Sequences = RolloutBatch | SequenceBatch
"""What :func:`pack_sequences` and :func:`response_logprobs` score: sampled or given sequences."""


@dataclass
class ResponseOutput:
    """Per-token outputs of :func:`response_logprobs`."""

    logprobs: torch.Tensor
    """(B, T) log-probs of the response tokens, 0 on padding."""
    hidden: torch.Tensor | None
    """(B, T, H) last hidden state at the position that predicts each response token (the state s_t), 0 on padding."""


@dataclass
class PackedSequences:
    """Prompt + response sequences packed end to end into a few rows: one forward pass without padding.

    A padded batch (prompts left-padded to the longest, responses right-padded to the longest)
    computed about twice the real tokens on the default task (prompts of 3..32 tokens, responses
    of 1..32). Packed, a row holds whole sequences one after another and ``position_ids`` restart
    at 0 for each; given no ``attention_mask``, transformers detects the restarts and masks
    attention between the sequences of a row (its packed-sequence format). Log-probs equal the
    padded pass's up to float rounding (tests/test_rollout.py).
    """

    input_ids: torch.Tensor
    """(R, W) tokens; the free slots at the end of a row repeat its first token (nothing real attends to them)."""
    position_ids: torch.Tensor
    """(R, W) each token's position within its own sequence."""
    states: torch.Tensor
    """(N,) flat index into the (R * W) slots of the position that predicts each real response token."""
    mask: torch.Tensor
    """(b, T) bool real response tokens: :meth:`unpack` puts the N per-token values back in this shape."""

    def inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of the model's forward pass."""
        return {"input_ids": self.input_ids, "position_ids": self.position_ids}

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """(R, W, ...) per-slot outputs -> (N, ...) at the states that predict the response tokens."""
        return x.flatten(0, 1)[self.states]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) per-token values -> (b, T, ...), 0 on padding."""
        return x.new_zeros((*self.mask.shape, *x.shape[1:])).index_put((self.mask,), x)


def pack_sequences(batch: Sequences, index: torch.Tensor | None = None) -> PackedSequences:
    """Pack prompt + response of (the ``index`` rows of) ``batch``, rows as wide as the longest sequence."""
    rows = slice(None) if index is None else index
    prompt_ids, prompt_lengths = batch.prompt_ids[rows], batch.prompt_mask[rows].sum(1)  # (b, P), (b,)
    response_ids, mask = batch.response_ids[rows], batch.response_mask[rows].bool()  # (b, T) agent tokens
    stream = mask if getattr(batch, "env_mask", None) is None else batch.stream_mask[rows].bool()  # (b, T)
    device, (n, width_p), n_resp = prompt_ids.device, prompt_ids.shape, response_ids.shape[1]
    lengths = prompt_lengths + stream.sum(1)  # (b,)
    sizes = lengths.tolist()
    width = max(sizes)
    # First-fit decreasing: longest sequence first, each into the first row with room for it.
    room: list[int] = []  # free slots left in each row
    start = [0] * n  # flat slot of each sequence's first token
    for i in sorted(range(n), key=sizes.__getitem__, reverse=True):
        row = next((r for r, free in enumerate(room) if free >= sizes[i]), len(room))
        if row == len(room):
            room.append(width)
        start[i] = row * width + width - room[row]
        room[row] -= sizes[i]
    first = torch.tensor(start, device=device)  # (b,)
    cols = torch.arange(width, device=device)  # (W,)
    # Sequence i is the prompt's real tokens then the response: prompt + response from column P - p_i on.
    source = ((width_p - prompt_lengths)[:, None] + cols).clamp(max=width_p + n_resp - 1)  # (b, W)
    tokens = torch.cat([prompt_ids, response_ids], 1).gather(1, source)  # (b, W)
    real = cols < lengths[:, None]  # (b, W)
    slots = (first[:, None] + cols)[real]  # (sum of lengths,) flat destination of every real token
    input_ids = torch.zeros(len(room) * width, dtype=torch.long, device=device).index_put((slots,), tokens[real])
    filled = torch.zeros(len(room) * width, dtype=torch.bool, device=device).index_put((slots,), torch.tensor(True))
    # Positions count from each sequence's start; a multi-turn stream carries its own (a fresh
    # context restarts at 0, and the restart keeps it from attending to earlier turns).
    positions = cols.expand(n, width) if getattr(batch, "positions", None) is None else torch.cat(
        [position_ids(batch.prompt_mask[rows]), batch.positions[rows]], 1).gather(1, source)  # (b, W)
    # Free slots get position 0: a row can be wider than the model's positions (a long multi-turn stream).
    flat_positions = torch.zeros(len(room) * width, dtype=torch.long, device=device).index_put(
        (slots,), positions[real])  # (R * W,)
    input_ids = input_ids.view(len(room), width)  # (R, W)
    # Not the pad id in free slots: models that see it with no attention_mask warn about padding.
    input_ids = torch.where(filled.view_as(input_ids), input_ids, input_ids[:, :1])
    # Response token t of sequence i is predicted at the sequence's position p_i - 1 + t.
    states = (first + prompt_lengths - 1)[:, None] + torch.arange(n_resp, device=device)  # (b, T)
    return PackedSequences(input_ids=input_ids, position_ids=flat_positions.view_as(input_ids),
                           states=states[mask], mask=mask)


def response_logprobs(
    model: Any,
    batch: Sequences,
    temperature: float,
    vocab_size: int,
    output_hidden: bool = False,
    index: torch.Tensor | None = None,
) -> ResponseOutput:
    """Log-probs of each response token in one forward pass over the packed prompt + response sequences.

    Runs under the caller's grad mode: wrap in ``torch.no_grad()`` for reference
    log-probs. ``index`` selects a minibatch of rows. With ``output_hidden``, also the
    last hidden states that predict each token (what a shared value head reads).
    ``model`` is a transformers causal LM (``get_output_embeddings()``) whose attention keeps the
    packed sequences of a row apart: sdpa (the default), eager or flex attention.
    """
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    if attention.startswith("flash"):
        raise ValueError(
            f"the model uses {attention}, which keeps packed sequences apart only in a batch of one row; "
            "load it with attn_implementation='sdpa'."
        )
    rows = slice(None) if index is None else index
    packed = pack_sequences(batch, index)
    # The output layer needs only the N states that predict response tokens, not all R * W slots
    # (a third of the slots hold prompts): a pre-hook hands it just those, and any logit
    # post-processing of the model (softcapping, scaling) still applies to them.
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _, args: (packed.select(args[0])[None],))
    try:
        with autocast(packed.input_ids.device):
            out = model(**packed.inputs(), use_cache=False, output_hidden_states=output_hidden)
    finally:
        hook.remove()
    allowed = None if batch.action_masks is None else batch.action_masks[rows][packed.mask]  # (N, V)
    logp_all = next_token_logprobs(out.logits[0], temperature, vocab_size, allowed)  # (N, V)
    tokens = batch.response_ids[rows][packed.mask]  # (N,)
    logp = packed.unpack(logp_all.gather(-1, tokens[:, None]).squeeze(-1))  # (b, T)
    hidden = packed.unpack(packed.select(out.hidden_states[-1])) if output_hidden else None  # (b, T, H)
    return ResponseOutput(logprobs=logp, hidden=hidden)
