"""Entry points behind ``gym.make("RLHFText-v0")`` and ``gym.make_vec(...)``."""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any

from gymnasium.vector import AutoresetMode

from text_env.env import TextGenerationEnv
from text_env.task import Task
from text_env.vector_env import TextGenerationVectorEnv


def one_torch_thread() -> None:
    """Run torch on one CPU thread in this process, if torch is loaded: what a forked child needs.

    PyTorch's Linux CPU wheels parallelise with GNU OpenMP (libgomp), whose thread pool does not
    survive ``fork()``: a child forked after the parent ran a parallel region (any model forward
    on 2+ threads) waits forever in its own first one, for pool threads that exist only in the
    parent (py-spy on a hung async worker: ``LayerNorm`` -> ``libgomp``, 0 CPU, futex). On one
    thread a region runs without the pool. See pytorch/pytorch#17199 and #41197, and GCC bug 60035
    (https://gcc.gnu.org/bugzilla/show_bug.cgi?id=60035); torch's DataLoader workers also run on
    one thread (torch/utils/data/_utils/worker.py). A torch not yet loaded has no pool to lose.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def prepare_worker() -> None:
    """In a multiprocessing worker, run torch on one thread before any model loads or runs.

    A worker forked from a parent that used torch but never imported text_env missed the fork
    hook (text_env/__init__.py); every registered env factory calls this first.
    """
    if multiprocessing.parent_process() is not None:
        one_torch_thread()


def resolve_task(task: Task | None, **task_options: Any) -> Task:
    """The given task, or the embedded default task built with ``task_options``."""
    prepare_worker()
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
