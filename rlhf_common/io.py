"""File helpers every package uses: JSONL reading with line-exact errors, atomic saves, portable paths."""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding the packages (the project root in a checkout)."""


class DataError(ValueError):
    """Bad input data; the message names the file and line and says how to fix it."""


# A JSON escape of a UTF-16 surrogate (U+D800..U+DFFF): json.loads pairs valid ones into
# one character and leaves a lone one in the string, where tokenizers, SQLite and UTF-8
# writers later fail with errors that name neither file nor line.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    r"""Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    Errors (invalid UTF-8, invalid JSON, nesting too deep to parse, a lone UTF-16
    surrogate escape such as ``"\ud800"``, a value that is not an object) raise
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
            except RecursionError:
                raise DataError(f"{path}:{line_no}: JSON nested too deeply to read; flatten the row.") from None
            except ValueError as e:  # e.g. an integer of more than 4300 digits (Python's int_max_str_digits)
                raise DataError(f"{path}:{line_no}: unreadable JSON ({str(e)[:200]}).") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}.")
            if _SURROGATE_ESCAPE.search(line):
                where = _lone_surrogate(obj)
                if where is not None:
                    raise DataError(
                        f"{path}:{line_no}: {where} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
                        "which is not text; fix the escape or write the file as UTF-8 (json.dumps(..., "
                        "ensure_ascii=False))."
                    )
            yield line_no, obj


def _lone_surrogate(obj: Any) -> str | None:
    """Where in ``obj`` a string (key or value) holds a lone surrogate, e.g. ``'responses'[1]``, or None."""
    stack: list[tuple[str, Any]] = [("the row", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((f"a key of {where}", k))
                stack.append((repr(k[:40]) if where == "the row" else f"{where}[{k[:40]!r}]", v))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
    return None


def describe_keys(obj: dict[str, Any], limit: int = 10) -> str:
    """The keys of a row for an error message, kept short however many or long they are."""
    keys = [k if len(k) <= 40 else k[:40] + "..." for k in sorted(obj)[:limit]]
    return f"{keys}" + (f" and {len(obj) - limit} more" if len(obj) > limit else "")


def require_str(obj: dict[str, Any], key: str, where: str) -> str:
    """``obj[key]`` if it is a string, else a :class:`DataError` naming ``where`` (``file:line``)."""
    if key not in obj:
        raise DataError(f"{where}: missing key {key!r} (keys present: {describe_keys(obj)}).")
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
    the complete new one. On error the temporary is removed. A temporary left by a
    writer that was killed (its process is gone) is removed by the next save.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-{_HOST}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        _replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def save_dir_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_dir)`` then swap the folder in: e.g. ``model.save_pretrained``."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        write(tmp)


# Temporaries are named ``.NAME.PID-HOST.random``: a process on another machine sharing the
# folder (NFS) is never mistaken for a dead local one.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _sweep_stale_temporaries(path: Path) -> None:
    """Remove ``.NAME.PID-HOST.*`` temporaries of ``path`` whose writing process no longer exists.

    A writer killed with SIGKILL cannot clean up; without this every kill during a
    checkpoint write would leave a whole checkpoint's worth of disk behind. A folder
    left in ``.NAME.old`` by a kill between the fallback's two renames is put back.
    """
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():  # killed between the two renames of _replace's fallback
        os.replace(old, path)
    if os.name != "posix":  # os.kill(pid, 0) probes a process only on POSIX
        return
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-{_HOST}\.[A-Za-z0-9_]+")
    for entry in path.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a number we cannot check): leave it alone
    return True


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h


@functools.cache
def _renameat2() -> Any:
    """The C library's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # older glibc, musl
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # the kernel or file system cannot exchange
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _replace(src: Path, dst: Path) -> None:
    if src.is_dir() and dst.is_dir() and _exchange(src, dst):
        # One atomic swap: ``dst`` is never missing, whenever the process dies. ``src``
        # now holds the old copy, which atomic_path removes with its temporary folder.
        return
    if src.is_dir() and dst.exists():
        # Without an atomic exchange a folder cannot replace a non-empty one in one step:
        # move the old aside first, so that a crash between the two renames still leaves
        # one complete copy (in ``.NAME.old``).
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def portable_path(value: Any) -> Any:
    """``value`` relative to :data:`PACKAGE_ROOT` when it is an absolute path under it; paths as strings."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value).resolve()
        if path.is_relative_to(PACKAGE_ROOT):
            return path.relative_to(PACKAGE_ROOT).as_posix()
    return value


def portable_config(config: Any) -> dict[str, Any]:
    """A build config as shipped assets record it: no machine-specific paths.

    ``out``, ``work`` and ``work_dir`` (where the build wrote, not how it built) are left
    out, and absolute paths under :data:`PACKAGE_ROOT` become relative to it.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Build:
        ...     data: str = str(PACKAGE_ROOT / "text_env/assets/chess/positions.jsonl")
        ...     out: str = "/tmp/critic"
        >>> portable_config(Build())
        {'data': 'text_env/assets/chess/positions.jsonl'}
    """
    return {k: portable_path(v) for k, v in asdict(config).items() if k not in ("out", "work", "work_dir")}
