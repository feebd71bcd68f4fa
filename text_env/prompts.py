"""Prompt files: JSONL with one ``{"prompt": str}`` or ``{"prompt": [messages]}`` object a line."""

from __future__ import annotations

import os

from reward_models.chat import check_messages, is_messages
from rlhf_common.io import DataError, describe_keys, read_jsonl
from text_env.task import Prompt


def load_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """The prompts of a JSONL file; a bad row raises :class:`DataError` naming ``file:line``.

    A prompt is a string, or a conversation (a list of ``{"role", "content"}`` messages, TRL's
    conversational prompt) that the :class:`~text_env.task.Task` renders with its tokenizer.
    Other keys on a row are ignored, so a demonstration file (``prompt`` + ``response``)
    also works as a prompt file.
    """
    prompts: list[Prompt] = []
    for line_no, row in read_jsonl(path):
        where = f"{path}:{line_no}"
        if "prompt" not in row:
            raise DataError(f"{where}: missing key 'prompt' (keys present: {describe_keys(row)}).")
        prompt = row["prompt"]
        if is_messages(prompt):
            prompt = check_messages(prompt, where, "prompt")
        elif not isinstance(prompt, str):
            raise DataError(
                f"{where}: 'prompt' must be a string or a list of {{'role','content'}} messages, "
                f"got {type(prompt).__name__}."
            )
        prompts.append(prompt)
    if not prompts:
        raise DataError(f"{path}: no prompts; add lines like {{\"prompt\": \"Once upon a time\"}}.")
    return prompts
