"""One run logger for every agent: TensorBoard scalars and a CSV table, one row per iteration."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from reward_models.io import atomic_path


class RunLogger:
    """Writes ``metrics`` dicts to ``log_dir/progress.csv`` and TensorBoard event files.

    ``resume_step``: continuing a run from a checkpoint taken at that step, rows logged
    after it (by the killed run) are dropped from the CSV and purged from TensorBoard,
    so curves have no duplicated steps.
    """

    def __init__(self, log_dir: str | os.PathLike[str], resume_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.log_dir / "progress.csv"
        self._fields: list[str] = []
        self._rows: list[dict[str, str]] = []
        if resume_step is not None and self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                reader = csv.DictReader(f)
                self._fields = list(reader.fieldnames or [])
                self._rows = [r for r in reader if int(r["step"]) <= resume_step]
            self._rewrite()
        elif self.csv_path.exists():
            self.csv_path.unlink()  # a fresh run replaces an old table
        from torch.utils.tensorboard import SummaryWriter  # imported here: it is slow to import

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record one iteration's scalars under ``step``."""
        for key, value in metrics.items():
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        row = {"step": str(step), **{k: f"{v:.6g}" for k, v in metrics.items()}}
        new = [k for k in row if k not in self._fields]
        self._rows.append(row)
        if new:  # a metric appeared (e.g. gold_score): rewrite the table with the wider header
            self._fields += new
            self._rewrite()
        else:
            with self.csv_path.open("a", newline="") as f:
                csv.DictWriter(f, self._fields).writerow(row)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        self.writer.close()

    def _rewrite(self) -> None:
        with atomic_path(self.csv_path) as tmp, tmp.open("w", newline="") as f:  # a crash keeps the old log whole
            w = csv.DictWriter(f, self._fields)
            w.writeheader()
            w.writerows(self._rows)
