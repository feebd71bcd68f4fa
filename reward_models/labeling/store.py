"""SQLite storage for human labels: items to rank, one label per (item, labeler), export.

Every label is committed (WAL journal, ``synchronous=FULL``) before
:meth:`LabelStore.add_label` returns, so a crash right after loses nothing.
One connection behind a lock serves all threads of the web server.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reward_models.labeling.agreement import AgreementReport, pairwise_agreement
from reward_models.reliability import ReliabilityReport, estimate_reliability, row_judgements
from rlhf_common.io import DataError, describe_keys, read_jsonl, require_str, write_jsonl_atomic

Mode = Literal["rank", "best"]
MODES: tuple[Mode, ...] = ("rank", "best")
MAX_LABELER_LEN = 64
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,      -- 'id:<the item id in the file>' or 'sha256:<of prompt and responses>'
    prompt TEXT NOT NULL,
    responses TEXT NOT NULL,       -- JSON list of K >= 2 strings
    source TEXT NOT NULL           -- 'file:line' it was first imported from
);
CREATE TABLE IF NOT EXISTS labels (
    item_id INTEGER NOT NULL REFERENCES items(id),
    labeler TEXT NOT NULL,
    ranking TEXT NOT NULL,         -- JSON list of response indices, best first; one index in best mode
    labeled_at REAL NOT NULL,
    PRIMARY KEY (item_id, labeler)
);
CREATE TABLE IF NOT EXISTS skips (
    item_id INTEGER NOT NULL REFERENCES items(id),
    labeler TEXT NOT NULL,
    skipped_at REAL NOT NULL,
    PRIMARY KEY (item_id, labeler)
);
CREATE TEMP TABLE IF NOT EXISTS item_order (item_id INTEGER PRIMARY KEY, position INTEGER NOT NULL);  -- order_items
"""


class LabelError(ValueError):
    """A label or request the store refuses; the message says what to send instead."""


class UnknownItemError(LabelError):
    """The item id is not in the database."""


@dataclass(frozen=True)
class Item:
    """One prompt with the K responses a person ranks."""

    id: int
    prompt: str
    responses: list[str]


@dataclass(frozen=True)
class ImportResult:
    """What :meth:`LabelStore.import_items` did."""

    added: int
    already_present: int
    too_few: list[str]
    """``file:line`` of rows skipped for having fewer than 2 distinct responses."""


def check_labeler(name: object) -> str:
    """The labeler name, stripped; a :class:`LabelError` unless it is 1-64 printable characters."""
    if not isinstance(name, str) or not name.strip():
        raise LabelError("missing 'labeler': give a non-empty name (e.g. ?labeler=alice).")
    name = name.strip()
    if len(name) > MAX_LABELER_LEN or not name.isprintable():
        raise LabelError(f"'labeler' must be at most {MAX_LABELER_LEN} printable characters, got {name[:80]!r}.")
    return name


def check_ranking(ranking: object, k: int, mode: Mode) -> list[int]:
    """``ranking`` as a list of ints if it is a valid label for K responses in ``mode``.

    Rank mode: every index ``0..K-1`` exactly once, best first. Best mode: one index.
    """
    if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
        raise LabelError(f"'ranking' must be a list of response indices, got {ranking!r}.")
    if mode == "rank" and sorted(ranking) != list(range(k)):
        raise LabelError(
            f"'ranking' must list every response index 0..{k - 1} exactly once, best first "
            f"(rank mode, {k} responses); got {ranking}."
        )
    if mode == "best" and (len(ranking) != 1 or not 0 <= ranking[0] < k):
        raise LabelError(
            f"'ranking' must be [index of the best response], an index in 0..{k - 1} (best mode); got {ranking}."
        )
    return list(ranking)


def parse_item(obj: dict[str, Any], where: str) -> tuple[str, str, list[str]]:
    """``(key, prompt, distinct responses)`` of one collection line, or a :class:`DataError` at ``where``.

    Rows are ``{"prompt", "responses": [...]}`` (or ``{"prompt", "response"}``, one
    sample) as :func:`reward_models.preferences.load_collection` reads them.
    Repeated responses are dropped, keeping the first: a ranking orders distinct
    texts, and the reward-model trainer refuses repeats.
    """
    prompt = require_str(obj, "prompt", where)
    if "responses" in obj:
        responses = obj["responses"]
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise DataError(
                f"{where}: 'responses' must be a list of strings (the K responses to rank), "
                f"got {json.dumps(responses)[:200]}."
            )
    elif "response" in obj:
        responses = [require_str(obj, "response", where)]
    else:
        raise DataError(
            f"{where}: an item needs 'responses' (a list of strings to rank); keys present: {describe_keys(obj)}."
        )
    responses = list(dict.fromkeys(responses))
    if "id" in obj:
        item_id = obj["id"]
        if isinstance(item_id, bool) or not isinstance(item_id, str | int):
            raise DataError(f"{where}: 'id' must be a string or integer, got {json.dumps(item_id)[:80]}.")
        key = f"id:{item_id}"
    else:
        key = "sha256:" + hashlib.sha256(json.dumps([prompt, responses]).encode()).hexdigest()
    return key, prompt, responses


def _shown(item_id: str | int) -> str:
    """An item id for a message: its repr, cut short."""
    text = repr(item_id)
    return text if len(text) <= 80 else text[:77] + "..."


class LabelStore:
    """The labeling database at ``path`` (created unless ``create=False``).

    Re-labeling an item replaces the labeler's earlier label for it (the row keeps
    one label per item and labeler). The mode (rank or best) is fixed by the
    first label; labels of the other mode are refused so exports stay uniform.
    """

    def __init__(self, path: str | os.PathLike[str], create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise DataError(
                f"{self.path}: no such labeling database; create it with "
                f"`python -m reward_models.labeling serve --items COLLECTION.jsonl --db {self.path}`."
            )
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Autocommit (isolation_level=None): each statement outside BEGIN commits at once.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise DataError(
                    f"{self.path}: labeling database version {version} is newer than this "
                    f"rlhf-gym understands ({_SCHEMA_VERSION}); upgrade rlhf-gym."
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise DataError(f"{self.path}: not a labeling database ({e}); pass another --db.") from e
        except DataError:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the connection; every label is already committed."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def import_items(self, path: str | os.PathLike[str]) -> ImportResult:
        """Add a collection JSONL (``{"prompt", "responses": [K >= 2 strings], "id"?}`` per line).

        Idempotent: an item already present (same ``id``, or same prompt and
        responses when there is no ``id``) is not added twice. The whole file is
        validated before anything is written; an ``id`` reused with different
        content is an error naming both places. Rows left with fewer than two
        distinct responses (see :func:`parse_item`) have nothing to rank and are
        skipped, and listed in the result.
        """
        parsed: dict[str, tuple[str, str, list[str]]] = {}
        too_few: list[str] = []
        for line_no, obj in read_jsonl(path):
            where = f"{path}:{line_no}"
            key, prompt, responses = parse_item(obj, where)
            if len(responses) < 2:
                too_few.append(where)
                continue
            if key in parsed and parsed[key][1:] != (prompt, responses):
                raise DataError(
                    f"{where}: id {_shown(obj['id'])} was already used at {parsed[key][0]} for a different "
                    "prompt or responses; give each item its own id."
                )
            parsed.setdefault(key, (where, prompt, responses))
        if not parsed:
            raise DataError(
                f"{path}: no row has two distinct responses, so there is nothing to rank; expected lines like "
                '{"prompt": "...", "responses": ["...", "..."]}.'
            )
        added = 0
        with self._transaction() as db:
            for key, (where, prompt, responses) in parsed.items():
                row = db.execute("SELECT prompt, responses, source FROM items WHERE key = ?", (key,)).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO items (key, prompt, responses, source) VALUES (?, ?, ?, ?)",
                        (key, prompt, json.dumps(responses), where),
                    )
                    added += 1
                elif (row[0], json.loads(row[1])) != (prompt, responses):
                    raise DataError(
                        f"{where}: item {_shown(key.removeprefix('id:'))} is already in {self.path} (imported from "
                        f"{row[2]}) with a different prompt or responses; give it a new id or "
                        "use another --db."
                    )
        return ImportResult(added=added, already_present=len(parsed) - added, too_few=too_few)

    def mode(self) -> Mode | None:
        """The mode fixed by the first label, or ``None`` before any label."""
        rows = self._query("SELECT value FROM meta WHERE key = 'mode'")
        return rows[0][0] if rows else None

    def count_items(self) -> int:
        """How many items there are to label."""
        return self._query("SELECT COUNT(*) FROM items")[0][0]

    def item(self, item_id: int) -> Item:
        """The item with this id, or :class:`UnknownItemError`."""
        if not -(2**63) <= item_id < 2**63:  # SQLite's integer range; beyond it sqlite3 raises OverflowError
            raise UnknownItemError(f"unknown item_id {item_id}; ask /api/next for a current item.")
        rows = self._query("SELECT id, prompt, responses FROM items WHERE id = ?", (item_id,))
        if not rows:
            raise UnknownItemError(f"unknown item_id {item_id}; ask /api/next for a current item.")
        return Item(rows[0][0], rows[0][1], json.loads(rows[0][2]))

    def next_item(self, labeler: str) -> tuple[Item, bool] | None:
        """The next item ``labeler`` has not labeled, and whether they skipped it before.

        Items come in import order (or :meth:`order_items`'s); skipped ones come back after all others,
        oldest skip first. ``None`` once the labeler has labeled every item.
        """
        rows = self._query(
            """SELECT i.id, i.prompt, i.responses, s.skipped_at IS NOT NULL FROM items i
               LEFT JOIN skips s ON s.item_id = i.id AND s.labeler = ? LEFT JOIN item_order o ON o.item_id = i.id
               WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.item_id = i.id AND l.labeler = ?)
               ORDER BY s.skipped_at IS NOT NULL, s.skipped_at, o.position, i.id LIMIT 1""",
            (labeler, labeler),
        )
        if not rows:
            return None
        item_id, prompt, responses, skipped = rows[0]
        return Item(item_id, prompt, json.loads(responses)), bool(skipped)

    def order_items(self, order: Callable[[list[Item]], list[int]]) -> None:
        """Serve items in the order ``order(every item)`` returns (item ids, first served first) while open."""
        items = [Item(i, p, json.loads(r)) for i, p, r in self._query("SELECT id, prompt, responses FROM items")]
        with self._transaction() as db:
            db.execute("DELETE FROM item_order")
            db.executemany("INSERT INTO item_order (position, item_id) VALUES (?, ?)", enumerate(order(items)))

    def add_label(self, item_id: int, labeler: str, ranking: object, mode: Mode) -> bool:
        """Validate and commit one label; return whether it replaced an earlier one.

        Raises :class:`UnknownItemError` for a bad id and :class:`LabelError` for a
        bad labeler, a ranking that does not fit the item, or a mode different
        from the database's.
        """
        labeler = check_labeler(labeler)
        ranking = check_ranking(ranking, len(self.item(item_id).responses), mode)
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('mode', ?)", (mode,))
            elif row[0] != mode:
                raise LabelError(
                    f"{self.path} holds {row[0]}-mode labels; label it with --mode {row[0]} or start another --db."
                )
            replaced = (
                db.execute("SELECT 1 FROM labels WHERE item_id = ? AND labeler = ?", (item_id, labeler)).fetchone()
                is not None
            )
            db.execute(
                "INSERT OR REPLACE INTO labels (item_id, labeler, ranking, labeled_at) VALUES (?, ?, ?, ?)",
                (item_id, labeler, json.dumps(ranking), time.time()),
            )
        return replaced

    def skip(self, item_id: int, labeler: str) -> None:
        """Record that ``labeler`` skipped the item: it comes back after the unskipped ones."""
        labeler = check_labeler(labeler)
        self.item(item_id)
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO skips (item_id, labeler, skipped_at) VALUES (?, ?, ?)",
                (item_id, labeler, time.time()),
            )

    def progress(self) -> dict[str, int]:
        """Labels per labeler, sorted by name."""
        rows = self._query("SELECT labeler, COUNT(*) FROM labels GROUP BY labeler ORDER BY labeler")
        return dict(rows)

    def labeled_count(self, labeler: str) -> int:
        """How many items ``labeler`` has labeled."""
        return self._query("SELECT COUNT(*) FROM labels WHERE labeler = ?", (labeler,))[0][0]

    def labels(self) -> list[tuple[Item, str, list[int]]]:
        """Every ``(item, labeler, ranking)``, by item then labeler."""
        rows = self._query(
            """SELECT i.id, i.prompt, i.responses, l.labeler, l.ranking
               FROM labels l JOIN items i ON i.id = l.item_id ORDER BY i.id, l.labeler"""
        )
        return [(Item(i, p, json.loads(r)), who, json.loads(rank)) for i, p, r, who, rank in rows]

    def agreement(self) -> AgreementReport:
        """Pairwise agreement between labelers over items labeled by several of them."""
        return pairwise_agreement((item.id, who, ranking, len(item.responses)) for item, who, ranking in self.labels())

    def reliability(self, bootstrap: int = 100, reverse_adversarial: bool = False, seed: int = 0) -> ReliabilityReport:
        """Each labeler's flip rate from the pairs several labelers ordered (:mod:`reward_models.reliability`)."""
        return estimate_reliability(row_judgements(self.export_rows()), bootstrap, seed, reverse_adversarial)

    def export_rows(self) -> list[dict[str, Any]]:
        """Preference rows the reward-model trainer reads.

        Rank mode: ``{"prompt", "responses": [best .. worst], "labeler"}`` per label.
        Best mode: ``{"prompt", "chosen", "rejected", "labeler"}`` for the best
        against each other response. Responses are distinct (see :func:`parse_item`).
        """
        rows: list[dict[str, Any]] = []
        for item, who, ranking in self.labels():
            texts = item.responses
            if len(ranking) == len(texts):
                rows.append({"prompt": item.prompt, "responses": [texts[i] for i in ranking], "labeler": who})
                continue
            best = ranking[0]
            rows.extend(
                {"prompt": item.prompt, "chosen": texts[best], "rejected": other, "labeler": who}
                for j, other in enumerate(texts)
                if j != best
            )
        return rows

    def export_jsonl(self, out: str | os.PathLike[str]) -> int:
        """Write :meth:`export_rows` to ``out`` atomically; return the row count."""
        rows = self.export_rows()
        write_jsonl_atomic(out, rows)
        return len(rows)
