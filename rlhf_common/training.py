"""The one training infrastructure: run folder, resume check, logger, checkpoints, NaN guard, progress.

Every trainer in the package (the RL agents, SFT, reward-model training, the asset builds
and the pipeline) keeps its runs with these pieces, so they all resume, log and refuse bad
numbers the same way:

- :func:`claim_run_folder` records a run's settings on first use and refuses to resume it
  with settings that would change its result (:func:`check_same_config`);
- :class:`RunLogger` writes one CSV row (and TensorBoard scalars) per step, dropping rows a
  killed run logged after the checkpoint it resumes from;
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read a checkpoint folder
  atomically (model files, ``trainer_state.pt`` tensors loaded with ``weights_only=True``,
  ``state.json``), with :func:`rng_state` / :func:`set_rng_state` for the random streams;
- :func:`check_finite` stops training on a NaN or inf before it reaches a weight;
- :func:`progress_bar` and :func:`quiet_transformers` keep one bar on screen.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rlhf_common.io import atomic_path, save_dir_atomic, write_json_atomic

STATE_FILE = "state.json"
"""A checkpoint's JSON part: config, counters and algorithm state."""
TENSORS_FILE = "trainer_state.pt"
"""A checkpoint's tensor part: optimiser, scheduler and RNG states (``torch.save``, read with ``weights_only``)."""


# ---- run folder and resume check ------------------------------------------------------------
def config_dict(config: Any) -> dict[str, Any]:
    """``config`` (a dataclass or a dict) as it is stored in JSON: nested dataclasses as dicts, tuples as lists."""
    return json.loads(json.dumps(asdict(config) if is_dataclass(config) else dict(config)))


def check_same_config(saved: dict[str, Any], config: Any, free: Collection[str], where: str | os.PathLike[str],
                      fix: str) -> None:
    """Refuse to continue a run saved with other settings than ``config`` (fields in ``free`` may differ).

    The message names every changed ``--flag`` with its old and new value, where the run
    is, and ``fix`` (what to do instead).
    """
    now = config_dict(config)
    changed = sorted(k for k in set(now) | set(saved) if k not in free and saved.get(k) != now.get(k))
    if changed:
        detail = "; ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ValueError(f"{where} holds a run with other settings ({detail}); {fix}")


def claim_run_folder(folder: str | os.PathLike[str], config: Any, free: Collection[str] = (),
                     name: str = "config.json", fix: str = "rerun with the same settings to resume it, "
                     "or pass another output folder for a new run.") -> Path:
    """Create ``folder`` and record ``config`` in ``folder/name``; refuse one holding a run with other settings."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / name
    if marker.is_file():
        check_same_config(json.loads(marker.read_text(encoding="utf-8")), config, free, folder, fix)
    else:
        write_json_atomic(marker, config_dict(config))
    return folder


# ---- logging --------------------------------------------------------------------------------
class RunLogger:
    """Writes one row of metrics per step to ``log_dir/filename`` (CSV) and to TensorBoard.

    ``resume_step``: continuing a run from a checkpoint taken at that step, rows logged
    after it (by the killed run) are dropped from the CSV and purged from TensorBoard, so
    curves have no duplicated steps; without it a fresh run replaces an old table.
    ``tensorboard``: True needs the ``tensorboard`` package, None uses it when installed,
    False writes the CSV only; ``tb_dir`` is the TensorBoard folder (default ``log_dir``). Values
    are numbers or short strings (strings skip TensorBoard).
    """

    def __init__(self, log_dir: str | os.PathLike[str], resume_step: int | None = None,
                 filename: str = "progress.csv", tensorboard: bool | None = None, tb_prefix: str = "",
                 tb_dir: str | os.PathLike[str] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.log_dir / filename
        self.tb_prefix = tb_prefix
        self._fields: list[str] = []
        self._rows: list[dict[str, str]] = []
        if resume_step is not None and self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                reader = csv.DictReader(f)
                self._fields = list(reader.fieldnames or [])
                self._rows = [r for r in reader if int(r["step"]) <= resume_step]
            self._rewrite()
        elif self.csv_path.exists():
            self.csv_path.unlink()
        tb_folder = self.log_dir if tb_dir is None else Path(tb_dir)
        self.writer = None if tensorboard is False else _summary_writer(tb_folder, resume_step, tensorboard)

    def log(self, step: int, metrics: dict[str, float | str]) -> None:
        """Record one step's values under ``step``."""
        for key, value in metrics.items():
            if self.writer is not None and not isinstance(value, str) and math.isfinite(value):
                self.writer.add_scalar(self.tb_prefix + key, value, step)
        row = {"step": str(step), **{k: _cell(v) for k, v in metrics.items()}}
        new = [k for k in row if k not in self._fields]
        self._rows.append(row)
        if new:  # a metric appeared (e.g. gold_score): rewrite the table with the wider header
            self._fields += new
            self._rewrite()
        else:
            with self.csv_path.open("a", newline="") as f:
                csv.DictWriter(f, self._fields).writerow(row)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()

    def _rewrite(self) -> None:
        with atomic_path(self.csv_path) as tmp, tmp.open("w", newline="") as f:  # a crash keeps the old log whole
            w = csv.DictWriter(f, self._fields, restval="")
            w.writeheader()
            w.writerows(self._rows)


def _cell(value: float | str) -> str:
    """A CSV cell: text as it is, whole numbers (counters) with every digit, other numbers to 6 significant digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{value:.6g}"


def _summary_writer(log_dir: Path, resume_step: int | None, required: bool | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # imported here: it is slow to import
    except ImportError:
        if required:
            raise ImportError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from None
        return None
    return SummaryWriter(str(log_dir), purge_step=None if resume_step is None else resume_step + 1)


def read_log(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a :class:`RunLogger` CSV (empty when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---- checkpoints ----------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Torch's global random streams (CPU, and every CUDA device when present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any], tensors: dict[str, Any],
                    write_models: Callable[[Path], None] | None = None) -> None:
    """Write a checkpoint folder atomically: a kill at any moment leaves the previous one or this one whole.

    ``write_models(folder)`` writes the model files (Hugging Face folders, safetensors);
    ``tensors`` (optimiser, scheduler, RNG states) go to ``trainer_state.pt`` and ``state``
    (config, counters) to ``state.json``.
    """

    def write(folder: Path) -> None:
        if write_models is not None:
            write_models(folder)
        torch.save(tensors, folder / TENSORS_FILE)
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    with quiet_transformers():  # no "Writing model shards" bar under the training bar
        save_dir_atomic(path, write)


def has_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds a complete checkpoint written by :func:`save_checkpoint`."""
    return (Path(path) / STATE_FILE).is_file()


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, tensors)`` of a checkpoint folder; tensors load with ``weights_only=True`` (no pickled code)."""
    path = Path(path)
    if not has_checkpoint(path):
        raise FileNotFoundError(f"{path / STATE_FILE} is missing: {path} is not a checkpoint folder.")
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    tensors_file = path / TENSORS_FILE
    tensors = torch.load(tensors_file, map_location=map_location, weights_only=True) if tensors_file.is_file() else {}
    return state, tensors


# ---- NaN guard, progress, quiet loading -----------------------------------------------------
def check_finite(value: torch.Tensor | float, what: str, where: str, checkpoint: str | os.PathLike[str] | None = None,
                 fix: str = "lower the learning rate or check the reward model and data.") -> None:
    """Stop with :class:`FloatingPointError` when ``value`` holds a NaN or inf, before anything applies it.

    ``where`` says when (``"iteration 12"``, ``"step 300"``); the message names the last good
    ``checkpoint`` when one has been written, and ``fix``.
    """
    finite = bool(torch.isfinite(value).all()) if isinstance(value, torch.Tensor) else math.isfinite(value)
    if finite:
        return
    shown = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
    saved = checkpoint is not None and has_checkpoint(checkpoint)
    kept = f" The last good checkpoint is {checkpoint}." if saved else ""
    raise FloatingPointError(f"{where}: {what} is {shown}; training stopped before applying it.{kept} Fix: {fix}")


def progress_bar(total: int | None, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
                 iterable: Iterable[Any] | None = None) -> Any:
    """The one kind of progress bar every trainer and builder shows (tqdm); wraps ``iterable`` when given."""
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=not enabled)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' loading/saving progress bars inside the block (they clutter the training bar)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def set_torch_threads(num_threads: int | None = None) -> int:
    """Set torch's CPU threads: ``num_threads``, or by default all cores on an idle machine and 1 on a busy one.

    Tiny models gain little from a second thread, and threads that wait for a core held by
    another process cost far more: on a shared 2-core machine at load 8, sampling ran 10x
    slower with 2 threads than with 1. "Busy" is what other processes compute right now
    (:func:`busy_cores`), not the load average: that decays over minutes, so right after
    ``make test`` it still reads 2 on an idle machine. Returns the number set.
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    elif busy_cores() >= 0.5:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def busy_cores(interval: float = 0.5) -> float:
    """How many cores other processes keep busy, measured over ``interval`` seconds while this one sleeps.

    Read from the kernel's CPU counters (``/proc/stat``: all time but idle and I/O wait); where
    there is none (macOS, Windows), the 1-minute load average stands in.
    """
    def counters() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    before = counters()
    if before is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(interval)
    after = counters()
    assert after is not None
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total * (os.cpu_count() or 1) if total > 0 else 0.0
