"""File helpers shared by every package: JSONL reading with line-exact errors, atomic saves."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file and line and says how to fix it."""


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    Errors (invalid UTF-8, invalid JSON, a value that is not an object) raise
    :class:`DataError` naming ``path:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start}).") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno}).") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}.")
            yield line_no, obj


def require_str(obj: dict[str, Any], key: str, where: str) -> str:
    """``obj[key]`` if it is a string, else a :class:`DataError` naming ``where`` (``file:line``)."""
    if key not in obj:
        raise DataError(f"{where}: missing key {key!r} (keys present: {sorted(obj)}).")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}.")
    return value


def write_jsonl_atomic(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """Write rows as JSONL so that readers see the old file or the whole new one, never half."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write one JSON document atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over ``path`` (file or folder).

    The rename is atomic on POSIX, so a crash leaves either the previous ``path`` or
    the complete new one. On error the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        _replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def save_dir_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_dir)`` then swap the folder in: e.g. ``model.save_pretrained``."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        write(tmp)


def _replace(src: Path, dst: Path) -> None:
    if src.is_dir() and dst.exists():
        # A folder cannot be renamed over a non-empty one: move the old aside first,
        # so that a crash between the two renames still leaves one complete copy.
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
