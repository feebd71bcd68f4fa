"""The embedded default task behind ``gym.make("RLHFText-v0")`` with no arguments."""

from __future__ import annotations

from typing import Any

from text_env.task import Task


def default_task(**options: Any) -> Task:
    """The default task; its assets are built by ``rlhf-gym build-defaults``."""
    raise FileNotFoundError(
        "RLHFText-v0 has no embedded default assets in this install; pass task=Task(...) to gym.make."
    )
