"""Demonstrations for supervised fine-tuning: tokenising, batching and the response-only loss.

Demonstrations are JSONL rows, either ``{"prompt": str, "response": str}`` or chat
``{"messages": [{"role": str, "content": str}, ...]}`` whose last message is the
assistant's response. The loss covers response tokens only: prompt tokens and padding
get label -100. :class:`LengthGroupedBatches` is the seeded stream of micro-batches that
:func:`agents.sft.train_sft` walks through (a resumed run sees the same batches).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.distributed import DistInfo, all_reduce
from reward_models.chat import check_messages, has_chat_template, split_conversation
from rlhf_common.io import DataError, describe_keys, read_jsonl, require_str

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (prompt and padding); PyTorch's cross-entropy default."""


@dataclass
class Demonstration:
    """One tokenised demonstration: ``input_ids[:prompt_len]`` is the prompt, the rest the response."""

    input_ids: list[int]
    prompt_len: int


def encode_demonstration(
    tokenizer: Any, row: dict[str, Any], where: str, max_length: int, append_eos: bool = True
) -> Demonstration | None:
    """Tokenise one JSONL row; None when even the prompt does not fit in ``max_length``.

    ``where`` (``file:line``) is named in every :class:`DataError`.
    """
    if "messages" in row:
        prompt, response, templated = _chat_parts(tokenizer, row["messages"], where)
        close_with_eos = append_eos and not templated  # a chat template closes the turn itself
        prompt_ids = tokenizer(prompt, add_special_tokens=not templated)["input_ids"]
    elif "prompt" in row or "response" in row:
        prompt, response = require_str(row, "prompt", where), require_str(row, "response", where)
        close_with_eos = append_eos
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        raise DataError(
            f"{where}: a demonstration needs 'prompt' and 'response' strings, or 'messages' "
            f"(a list of {{'role','content'}} ending with the assistant's); keys present: {describe_keys(row)}."
        )
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if close_with_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token; set one or pass append_eos=False.")
        response_ids.append(tokenizer.eos_token_id)
    if not response_ids:
        raise DataError(f"{where}: the response is empty; give a non-empty response.")
    prompt_ids = list(prompt_ids)
    if len(prompt_ids) >= max_length:
        return None
    return Demonstration((prompt_ids + response_ids)[:max_length], len(prompt_ids))


def _chat_parts(tokenizer: Any, messages: Any, where: str) -> tuple[str, str, bool]:
    """Prompt text, response text and whether the tokenizer's chat template rendered them.

    The rendering is :mod:`reward_models.chat`'s, shared with preference data and the env:
    the chat template, else the plain HH-RLHF transcript.
    """
    messages = check_messages(messages, where)
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last message has role {messages[-1]['role']!r}; it must be the "
            "assistant's response, which is what the model learns."
        )
    prompt, response = split_conversation(tokenizer, messages[:-1], messages[-1:], where)
    return prompt, response, has_chat_template(tokenizer)


def load_demonstrations(
    path: str | Path, tokenizer: Any, max_length: int, append_eos: bool = True
) -> list[Demonstration]:
    """All demonstrations of a JSONL file; malformed rows raise :class:`DataError` naming file:line."""
    demos, too_long = [], 0
    for line_no, row in read_jsonl(path):
        demo = encode_demonstration(tokenizer, row, f"{path}:{line_no}", max_length, append_eos)
        if demo is None:
            too_long += 1
        else:
            demos.append(demo)
    if too_long:
        print(f"sft: skipped {too_long} rows of {path} whose prompt fills max_length={max_length}.", file=sys.stderr)
    if not demos:
        raise DataError(f"{path}: no usable demonstrations; add rows or raise max_length.")
    return demos


def collate(demos: Sequence[Demonstration], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    width = max(len(d.input_ids) for d in demos)
    input_ids = torch.full((len(demos), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(demos), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(demos), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for i, d in enumerate(demos):
        n = len(d.input_ids)
        input_ids[i, :n] = torch.tensor(d.input_ids)
        attention_mask[i, :n] = 1
        labels[i, d.prompt_len : n] = input_ids[i, d.prompt_len : n]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled tokens, and how many there are."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    labels = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at position t-1
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate_loss(
    model: Any, demos: Sequence[Demonstration], batch_size: int, pad_token_id: int, info: DistInfo | None = None
) -> float:
    """Mean per-token response loss (nats) of ``model`` on ``demos``, in eval mode.

    Under torchrun (``info``) each rank scores every N-th demonstration and the sums are
    added over ranks, so every rank gets the same number (and takes the same early-stopping decision).
    """
    info = info or DistInfo()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mine = demos[info.rank :: info.world_size]
    total, count = 0.0, 0
    for i in range(0, len(mine), batch_size):
        batch = {k: v.to(device) for k, v in collate(mine[i : i + batch_size], pad_token_id).items()}
        loss, n = token_loss_sum(model, batch)
        total, count = total + float(loss), count + n
    model.train(was_training)
    total, count = all_reduce(torch.tensor([total, count], dtype=torch.float64, device=device), info).tolist()
    return total / max(count, 1)


class LengthGroupedBatches:
    """The endless seeded stream of shuffled epochs, cut into micro-batches.

    Micro-batch ``i`` depends only on (seed, i), so a resumed run sees the same batches.
    With ``group_by_length``, each window of 64 batches is sorted by length before it is cut
    (then the batches are shuffled), so a batch pads to a similar length: on short, varied
    texts this does the same epoch in a fraction of the time.
    """

    def __init__(self, demos: Sequence[Demonstration], batch_size: int, seed: int, group_by_length: bool) -> None:
        self.demos, self.batch_size, self.seed, self.group = demos, batch_size, seed, group_by_length
        self.per_epoch = math.ceil(len(demos) / batch_size)
        self._epoch, self._batches = -1, []

    def __getitem__(self, i: int) -> list[Demonstration]:
        epoch, b = divmod(i, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return [self.demos[j] for j in self._batches[b]]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.demos), generator=gen).tolist()
        if self.group:
            window = 64 * self.batch_size
            order = [
                j
                for w in range(0, len(order), window)
                for j in sorted(order[w : w + window], key=lambda j: len(self.demos[j].input_ids))
            ]
        batches = [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        if self.group:
            batches = [batches[k] for k in torch.randperm(len(batches), generator=gen).tolist()]
        return batches

