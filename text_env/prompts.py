"""Prompt files: JSONL with one ``{"prompt": str}`` object a line."""

from __future__ import annotations

import os

from rlhf_common.io import DataError, read_jsonl, require_str


def load_prompts(path: str | os.PathLike[str]) -> list[str]:
    """The prompts of a JSONL file; a bad row raises :class:`DataError` naming ``file:line``.

    Other keys on a row are ignored, so a demonstration file (``prompt`` + ``response``)
    also works as a prompt file.
    """
    prompts = [require_str(row, "prompt", f"{path}:{line_no}") for line_no, row in read_jsonl(path)]
    if not prompts:
        raise DataError(f"{path}: no prompts; add lines like {{\"prompt\": \"Once upon a time\"}}.")
    return prompts
