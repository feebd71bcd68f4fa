"""The labeling store, server and CLI, against real servers on 127.0.0.1 and real files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pytest

from reward_models.labeling import LabelingServer, LabelStore, pairwise_agreement
from reward_models.labeling.cli import cli
from reward_models.labeling.server import is_loopback
from reward_models.preferences import Comparison, load_preferences
from rlhf_common.io import DataError

ITEMS = [
    {"prompt": "Say hi.", "responses": ["hi", "hello", "hey there"]},
    {"prompt": "Count to two.", "responses": ["1 2", "one two", "2 1"], "id": "count"},
    {"prompt": "Name a colour.", "responses": ["red", "blue", "green"], "id": 7},
]
REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def call(
    base: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP request; returns (status, decoded JSON body)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(base + path.lstrip("/"), data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except HTTPError as e:
        return e.code, json.loads(e.read())


def label(base: str, item_id: int, labeler: str, ranking: list[int], **kw: Any) -> tuple[int, Any]:
    return call(base, "/api/label", {"item_id": item_id, "labeler": labeler, "ranking": ranking}, **kw)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[str, LabelStore]]]:
    """Start in-process servers on ephemeral ports: ``serve(mode=..., token=...) -> (url, store)``."""
    with ExitStack() as stack:

        def start(
            items: list[dict[str, Any]] = ITEMS,
            mode: str = "rank",
            token: str | None = None,
            db: Path | None = None,
        ) -> tuple[str, LabelStore]:
            store = stack.enter_context(LabelStore(db or tmp_path / "labels.sqlite"))
            store.import_items(write_jsonl(tmp_path / "collection.jsonl", items))
            server = LabelingServer(store, mode, "127.0.0.1", 0, token)
            thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
            thread.start()
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            return server.url, store

        yield start


# -- collection import -----------------------------------------------------------------------


def test_import_is_idempotent(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", ITEMS)
    with LabelStore(tmp_path / "db.sqlite") as store:
        first = store.import_items(path)
        again = store.import_items(path)
        assert (first.added, first.already_present) == (3, 0)
        assert (again.added, again.already_present) == (0, 3)
        assert store.count_items() == 3
        grown = write_jsonl(tmp_path / "more.jsonl", ITEMS + [{"prompt": "New?", "responses": ["a", "b"]}])
        assert store.import_items(grown).added == 1
        changed = write_jsonl(tmp_path / "changed.jsonl", [{**ITEMS[1], "prompt": "Count to three."}])
        message = r"changed\.jsonl:1: item 'count' is already in .*imported from .*c\.jsonl:2"
        with pytest.raises(DataError, match=message):
            store.import_items(changed)
        assert store.count_items() == 4


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"responses": ["a", "b"]}, "missing key 'prompt'"),
        ({"prompt": "p", "answers": ["a", "b"]}, "needs 'responses'"),
        ({"prompt": "p", "responses": ["a", 3]}, "'responses' must be a list of strings"),
        ({"prompt": "p", "responses": "ab"}, "'responses' must be a list of strings"),
        ({"prompt": "p", "response": 3}, "'response' must be a string"),
        ({"prompt": "p", "responses": ["a", "b"], "id": [1]}, "'id' must be a string or integer"),
        ({"prompt": "other", "responses": ["a", "b"], "id": "x"}, r"id 'x' was already used at .*:1"),
    ],
)
def test_bad_collection_line_names_file_and_line(tmp_path: Path, line: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "responses": ["a", "b"], "id": "x"}, line])
    with LabelStore(tmp_path / "db.sqlite") as store:
        with pytest.raises(DataError, match=message) as err:
            store.import_items(path)
        assert f"{path}:2:" in str(err.value)
        assert store.count_items() == 0  # the whole file is checked before anything is written


def test_repeated_responses_are_dropped_and_unrankable_rows_skipped(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p", "responses": ["a", "b", "a", "c"]},
        {"prompt": "q", "responses": ["same", "same"]},
        {"prompt": "r", "response": "one sample"},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    with LabelStore(tmp_path / "db.sqlite") as store:
        result = store.import_items(path)
        assert (result.added, result.too_few) == (1, [f"{path}:2", f"{path}:3"])
        assert store.item(1).responses == ["a", "b", "c"]
        with pytest.raises(DataError, match="no row has two distinct responses"):
            store.import_items(write_jsonl(tmp_path / "none.jsonl", rows[1:]))


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.sqlite"
    bad.write_text("not sqlite at all, " * 100)
    with pytest.raises(DataError, match="not a labeling database"):
        LabelStore(bad)
    with pytest.raises(DataError, match="no such labeling database"):
        LabelStore(tmp_path / "missing.sqlite", create=False)


# -- HTTP API --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "fragment"),
    [
        ("/api/label", {"body": {"item_id": 999, "labeler": "a", "ranking": [0, 1, 2]}}, 404, "unknown item_id 999"),
        ("/api/label", {"body": {"item_id": "1", "labeler": "a", "ranking": [0, 1, 2]}}, 400, "'item_id' must be"),
        ("/api/label", {"body": {"item_id": True, "labeler": "a", "ranking": [0, 1, 2]}}, 400, "'item_id' must be"),
        ("/api/label", {"raw": b'{"item_id": 1, "labeler": '}, 400, "not valid JSON"),
        ("/api/label", {"raw": b"\xff\xfe"}, 400, "not valid JSON"),
        ("/api/label", {"raw": b"[1, 2]"}, 400, "must be a JSON object"),
        ("/api/label", {"body": {"item_id": 1, "labeler": "a", "ranking": [0, 1]}}, 400, "exactly once"),
        ("/api/label", {"body": {"item_id": 1, "labeler": "a", "ranking": [0, 0, 1]}}, 400, "exactly once"),
        ("/api/label", {"body": {"item_id": 1, "labeler": "a", "ranking": [0, 1, 3]}}, 400, "exactly once"),
        ("/api/label", {"body": {"item_id": 1, "labeler": "a", "ranking": "0,1,2"}}, 400, "list of response"),
        ("/api/label", {"body": {"item_id": 1, "labeler": "a", "ranking": [0, 1.0, 2]}}, 400, "list of response"),
        ("/api/label", {"body": {"item_id": 1, "ranking": [0, 1, 2]}}, 400, "missing 'labeler'"),
        ("/api/label", {"body": {"item_id": 1, "labeler": "  ", "ranking": [0, 1, 2]}}, 400, "missing 'labeler'"),
        ("/api/label", {"body": {"item_id": 1, "labeler": "x" * 65, "ranking": [0, 1, 2]}}, 400, "at most 64"),
        (
            "/api/label",
            {"body": {"item_id": 1, "labeler": "a", "ranking": [0, 1, 2]}, "headers": {"Content-Type": "text/plain"}},
            415,
            "Content-Type",
        ),
        ("/api/label", {"raw": b"{" + b" " * 70_000 + b"}"}, 413, "at most"),
        ("/api/label", {"method": "GET"}, 405, "only answers POST"),
        ("/api/skip", {"body": {"item_id": 42, "labeler": "a"}}, 404, "unknown item_id"),
        ("/api/next", {}, 400, "missing 'labeler'"),
        ("/api/next?labeler=", {}, 400, "missing 'labeler'"),
        ("/api/nope", {}, 404, "no such page"),
        ("/api/next?labeler=a", {"method": "DELETE"}, 405, "GET or POST"),
        ("/", {"headers": {"Host": "attacker.example:80"}}, 403, "refused"),
    ],
)
def test_bad_requests_get_4xx_json(serve, path: str, kwargs: dict, status: int, fragment: str) -> None:
    url, store = serve()
    got, body = call(url, path, **kwargs)
    assert got == status, body
    assert fragment in body["error"]
    assert store.labels() == []


def test_best_mode_validates_one_index(serve) -> None:
    url, store = serve(mode="best")
    assert label(url, 1, "a", [0, 1, 2])[0] == 400
    assert label(url, 1, "a", [3])[0] == 400
    assert label(url, 1, "a", [-1])[0] == 400
    assert label(url, 1, "a", [2]) == (200, {"ok": True, "replaced": False, "labeled": 1, "total": 3})
    assert store.mode() == "best"


def test_token_is_required_on_api_calls(serve) -> None:
    url, _ = serve(token="s3cret")
    assert call(url, "/api/next?labeler=a")[0] == 401
    assert call(url, "/api/next?labeler=a", headers={"X-Token": "wrong"})[0] == 401
    assert call(url, "/api/next?labeler=a&token=s3cret")[0] == 200
    assert call(url, "/api/next?labeler=a", headers={"X-Token": "s3cret"})[0] == 200
    assert label(url, 1, "a", [0, 1, 2])[0] == 401
    assert label(url, 1, "a", [0, 1, 2], headers={"X-Token": "s3cret"})[0] == 200
    with urllib.request.urlopen(url, timeout=10) as resp:  # the page itself holds no data
        assert resp.status == 200


def test_page_is_served_with_strict_headers(serve) -> None:
    url, _ = serve()
    for path, ctype in [("", "text/html"), ("static/app.js", "text/javascript"), ("static/style.css", "text/css")]:
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith(ctype)
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
            assert b"innerHTML" not in resp.read()


def test_resume_progress_skip_and_relabel(serve, tmp_path: Path) -> None:
    url, store = serve()
    assert call(url, "/api/next?labeler=ann")[1]["item"]["id"] == 1
    assert label(url, 1, "ann", [2, 0, 1])[1] == {"ok": True, "replaced": False, "labeled": 1, "total": 3}
    assert call(url, "/api/skip", {"item_id": 2, "labeler": "ann"}) == (200, {"ok": True})
    nxt = call(url, "/api/next?labeler=ann")[1]
    assert (nxt["item"]["id"], nxt["item"]["skipped_before"], nxt["labeled"]) == (3, False, 1)
    assert label(url, 3, "ann", [0, 1, 2])[0] == 200
    # A labeler who stops and comes back (here: to a new server on the same database) resumes.
    store.close()
    url2, _ = serve(db=tmp_path / "labels.sqlite")
    nxt = call(url2, "/api/next?labeler=ann")[1]
    assert (nxt["item"]["id"], nxt["item"]["skipped_before"], nxt["labeled"], nxt["total"]) == (2, True, 2, 3)
    assert call(url2, "/api/next?labeler=bob")[1]["item"]["id"] == 1  # each labeler sees every item
    progress = call(url2, "/api/progress")[1]
    assert (progress["total"], progress["labelers"], progress["reliability"]["overlapping_pairs"]) == (3, {"ann": 2}, 0)
    assert label(url2, 2, "ann", [1, 0, 2])[0] == 200
    done = call(url2, "/api/next?labeler=ann")[1]
    assert (done["item"], done["labeled"], done["total"]) == (None, 3, 3)
    # Labeling an item again replaces the earlier label.
    assert label(url2, 1, "ann", [0, 1, 2])[1]["replaced"] is True
    progress = call(url2, "/api/progress?labeler=ann")[1]
    assert (progress["labeled"], progress["labelers"]) == (3, {"ann": 3})


def test_database_mode_is_fixed_by_first_label(serve, tmp_path: Path) -> None:
    url, store = serve(mode="rank")
    assert label(url, 1, "a", [0, 1, 2])[0] == 200
    with pytest.raises(DataError, match="holds rank-mode labels; serve it with --mode rank"):
        LabelingServer(store, "best")


# -- agreement and export ----------------------------------------------------------------------


def test_pairwise_agreement_hand_computed() -> None:
    report = pairwise_agreement(
        [
            # item 1, full rankings: (0>1) and (0>2) agree, (1>2) vs (2>1) not: 2 of 3
            (1, "a", [0, 1, 2], 3),
            (1, "b", [0, 2, 1], 3),
            (1, "c", [0, 1, 2], 3),
            # item 2, only a and b: reversed rankings agree on nothing
            (2, "a", [0, 1], 2),
            (2, "b", [1, 0], 2),
            # item 3, one labeler: not compared
            (3, "a", [1, 0], 2),
        ]
    )
    got = {p.labelers: (p.items, p.compared, p.agreed, p.identical) for p in report.pairs}
    assert got == {("a", "b"): (2, 4, 2, 0), ("a", "c"): (1, 3, 3, 1), ("b", "c"): (1, 3, 2, 0)}
    assert (report.overall.compared, report.overall.agreed) == (10, 7)
    assert report.overall.rate == pytest.approx(0.7)
    # Best-only labels: same pick shares K-1 = 3 agreeing pairs; different picks share one pair.
    best = pairwise_agreement([(1, "a", [2], 4), (1, "b", [2], 4), (2, "a", [0], 4), (2, "b", [1], 4)])
    assert best.overall.to_dict() == {
        "labelers": ["*", "*"],
        "items": 2,
        "compared": 4,
        "agreed": 3,
        "identical": 1,
        "rate": 0.75,
    }
    assert pairwise_agreement([(1, "a", [0, 1], 2)]).overall.rate is None


def test_export_rank_mode_and_agreement_cli(serve, tmp_path: Path, capsys) -> None:
    url, _ = serve()
    for who, ranking in [("ann", [2, 0, 1]), ("bob", [2, 1, 0])]:
        assert label(url, 1, who, ranking)[0] == 200
    assert label(url, 2, "ann", [1, 0, 2])[0] == 200
    out = tmp_path / "prefs.jsonl"
    out.write_text("old contents\n")
    assert cli(["export", "--db", str(tmp_path / "labels.sqlite"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"prompt": "Say hi.", "responses": ["hey there", "hi", "hello"], "labeler": "ann"},
        {"prompt": "Say hi.", "responses": ["hey there", "hello", "hi"], "labeler": "bob"},
        {"prompt": "Count to two.", "responses": ["one two", "1 2", "2 1"], "labeler": "ann"},
    ]
    with urllib.request.urlopen(url + "api/export", timeout=10) as resp:
        assert resp.read().decode() == out.read_text()
    assert [r.responses for r in load_preferences(out)] == [tuple(row["responses"]) for row in rows]
    assert [p["rate"] for p in call(url, "/api/agreement")[1]["pairs"]] == [pytest.approx(2 / 3)]
    capsys.readouterr()
    assert cli(["agreement", "--db", str(tmp_path / "labels.sqlite")]) == 0
    table = capsys.readouterr().out
    assert "ann ~ bob" in table and "0.667" in table
    assert cli(["agreement", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "no such labeling database" in capsys.readouterr().err


def test_export_best_mode_pairs(serve, tmp_path: Path) -> None:
    items = [{"prompt": "Pick.", "responses": ["good", "bad", "good", "meh"]}]
    url, store = serve(items=items, mode="best")
    assert label(url, 1, "ann", [0])[0] == 200
    assert label(url, 1, "bob", [2])[0] == 200  # responses are ["good", "bad", "meh"]: repeats dropped
    assert store.export_rows() == [
        {"prompt": "Pick.", "chosen": "good", "rejected": "bad", "labeler": "ann"},
        {"prompt": "Pick.", "chosen": "good", "rejected": "meh", "labeler": "ann"},
        {"prompt": "Pick.", "chosen": "meh", "rejected": "good", "labeler": "bob"},
        {"prompt": "Pick.", "chosen": "meh", "rejected": "bad", "labeler": "bob"},
    ]
    out = tmp_path / "pairs.jsonl"
    assert store.export_jsonl(out) == 4
    assert load_preferences(out) == [  # what the reward-model trainer reads
        Comparison("Pick.", "good", "bad"),
        Comparison("Pick.", "good", "meh"),
        Comparison("Pick.", "meh", "good"),
        Comparison("Pick.", "meh", "bad"),
    ]


# -- load and crashes ---------------------------------------------------------------------------


def test_twenty_concurrent_labelers_lose_nothing(serve) -> None:
    items = [{"prompt": f"p{i}", "responses": ["a", "b", "c", "d"]} for i in range(10)]
    url, store = serve(items=items)
    statuses: list[int] = []

    def work(n: int) -> int:
        labeler, done = f"labeler-{n}", 0
        while True:
            status, nxt = call(url, f"/api/next?labeler={labeler}")
            statuses.append(status)
            if nxt["item"] is None:
                return done
            ranking = [(n + j) % 4 for j in range(4)]
            status, _ = label(url, nxt["item"]["id"], labeler, ranking)
            statuses.append(status)
            done += status == 200

    start = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        submitted = sum(pool.map(work, range(20)))
    elapsed = time.perf_counter() - start
    print(f"\n20 labelers: {len(statuses)} requests in {elapsed:.2f} s = {len(statuses) / elapsed:.0f} req/s")
    assert set(statuses) == {200}
    assert submitted == 200
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT labeler) FROM labels").fetchone() == (200, 20)


def start_server_process(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str, Path, list[str]]:
    """``python -m reward_models.labeling serve`` as a child: (process, url, db, stdout lines so far)."""
    db = tmp_path / "labels.sqlite"
    items = write_jsonl(tmp_path / "collection.jsonl", ITEMS)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reward_models.labeling",
            "serve",
            "--items",
            str(items),
            "--db",
            str(db),
            "--port",
            "0",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        for line in list(lines):
            if "Open http://" in line:
                url = line.split("Open ", 1)[1].split()[0].split("?")[0]
                return proc, url.replace("0.0.0.0", "127.0.0.1"), db, lines
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"labeling server did not start: {proc.communicate()[1]}")


def test_sigkill_right_after_200_loses_no_label(tmp_path: Path) -> None:
    proc, url, db, _ = start_server_process(tmp_path)
    try:
        sent = [(item, who) for who in ("ann", "bob") for item in (1, 2, 3)]
        for item, who in sent:
            assert label(url, item, who, [0, 2, 1])[0] == 200
        proc.send_signal(signal.SIGKILL)  # no chance to flush anything after the last 200
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        rows = conn.execute("SELECT item_id, labeler, ranking FROM labels ORDER BY labeler, item_id").fetchall()
    assert rows == [(item, who, "[0, 2, 1]") for item, who in sent]


def test_sigterm_stops_gracefully_and_warns_off_loopback(tmp_path: Path) -> None:
    proc, url, db, out = start_server_process(tmp_path, "--host", "0.0.0.0", "--token", "t0k")
    try:
        assert label(url, 1, "ann", [1, 0, 2], headers={"X-Token": "t0k"})[0] == 200
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert "warning: --host 0.0.0.0 is reachable from other machines" in err
    deadline = time.monotonic() + 5  # the reader thread may still be taking the last line
    while not any("every submitted label is in" in line for line in out) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "every submitted label is in" in out[-1], out
    with LabelStore(db, create=False) as store:
        assert [(i.id, who, r) for i, who, r in store.labels()] == [(1, "ann", [1, 0, 2])]


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")
