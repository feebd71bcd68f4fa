"""Entry points behind ``gym.make("RLHFText-v0")`` and ``gym.make_vec(...)``."""

from __future__ import annotations

from typing import Any

from gymnasium.vector import AutoresetMode

from text_env.env import TextGenerationEnv
from text_env.task import Task
from text_env.vector_env import TextGenerationVectorEnv


def resolve_task(task: Task | None, **task_options: Any) -> Task:
    """The given task, or the embedded default task built with ``task_options``."""
    if task is not None:
        if task_options:
            raise TypeError(
                f"{sorted(task_options)} only configure the default task; set them on your Task instead."
            )
        return task
    from text_env.defaults import default_task

    return default_task(**task_options)


def make_env(task: Task | None = None, render_mode: str | None = None, **task_options: Any) -> TextGenerationEnv:
    """One text environment: ``task``, or the embedded default configured by ``task_options``."""
    return TextGenerationEnv(resolve_task(task, **task_options), render_mode=render_mode)


def make_vector_env(
    num_envs: int,
    task: Task | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
    **task_options: Any,
) -> TextGenerationVectorEnv:
    """A native batch of ``num_envs`` text environments sharing one task."""
    return TextGenerationVectorEnv(
        resolve_task(task, **task_options), num_envs, autoreset_mode=autoreset_mode, render_mode=render_mode
    )
