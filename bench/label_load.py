"""Load test of the labeling server: many concurrent labelers over loopback, bounded in time.

Run: .venv/bin/python bench/label_load.py [--labelers 50] [--items 20] [--seconds 60]

Starts ``python -m reward_models.labeling serve`` on a free loopback port with a fresh
database of ITEMS prompts (4 responses each); LABELERS threads then each label every
item (``GET /api/next``, ``POST /api/label``) as fast as the server answers, until
they are done or the time bound passes. The server is then killed with SIGKILL (no
chance to flush anything) and the database is read back.

Prints requests per second, latency percentiles, failed requests and lost labels:
labels the server acknowledged with a 200 that are missing from the database or hold
another ranking. Exit status 1 unless every labeler finished, no request failed and
no label was lost.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESPONSES = 4


@dataclass
class LoadResult:
    """What one load test measured."""

    labelers: int
    items: int
    requests: int
    seconds: float
    acknowledged: int
    """Labels answered 200."""
    stored: int
    """Labels in the database after the server was killed."""
    lost: int
    """Acknowledged labels missing from the database or stored with another ranking."""
    failures: Counter[str] = field(default_factory=Counter)
    """Non-200 answers and connection errors, by kind."""
    finished: bool = False
    """Every labeler labeled every item before the time bound."""
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    def report(self) -> str:
        lat = sorted(self.latencies_ms) or [0.0]
        p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        return (
            f"{self.labelers} labelers x {self.items} items over loopback: {self.requests} requests in "
            f"{self.seconds:.2f} s = {self.requests_per_second:.0f} req/s "
            f"(latency p50 {p50:.1f} ms, p99 {p99:.1f} ms)\n"
            f"acknowledged labels {self.acknowledged}, in the database after SIGKILL {self.stored}, "
            f"lost labels {self.lost}\n"
            f"failed requests {sum(self.failures.values())}"
            + (f" {dict(self.failures)}" if self.failures else "")
            + ("" if self.finished else "; NOT FINISHED within the time bound")
        )


def start_server(workdir: Path, items: int) -> tuple[subprocess.Popen[str], int, Path]:
    """The labeling server as a child process on a free port: (process, port, database)."""
    collection = workdir / "items.jsonl"
    collection.write_text(
        "".join(
            json.dumps({"prompt": f"Prompt {i}", "responses": [f"response {i}.{k}" for k in range(RESPONSES)]}) + "\n"
            for i in range(items)
        )
    )
    db = workdir / "labels.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_models.labeling", "serve", "--items", str(collection), "--db", str(db),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"Open http://127\.0\.0\.1:(\d+)/", line)
        if found:
            return proc, int(found.group(1)), db
    proc.kill()
    raise RuntimeError(f"the labeling server did not start: {proc.communicate()[1][-2000:]}")


def run(labelers: int = 50, items: int = 20, seconds: float = 60.0, workdir: Path | None = None) -> LoadResult:
    """Run the load test; see the module docstring."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        proc, port, db = start_server(Path(tmp), items)
        try:
            return _load(proc, port, db, labelers, items, seconds)
        finally:
            proc.kill()
            proc.wait()


def _load(proc: subprocess.Popen[str], port: int, db: Path, labelers: int, items: int, seconds: float) -> LoadResult:
    acked: dict[tuple[int, str], list[int]] = {}
    failures: Counter[str] = Counter()
    latencies: list[float] = []
    done = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    start_gate = threading.Barrier(labelers + 1)

    def request(method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        t0 = time.perf_counter()
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            status, payload = resp.status, json.loads(resp.read())
        finally:
            conn.close()
        with lock:
            latencies.append(1000 * (time.perf_counter() - t0))
        return status, payload

    def labeler(n: int) -> None:
        who, rng = f"labeler-{n:02d}", random.Random(n)
        start_gate.wait()
        try:
            while time.monotonic() < deadline:
                status, nxt = request("GET", f"/api/next?labeler={who}")
                if status != 200:
                    with lock:
                        failures[f"next {status}"] += 1
                    continue
                if nxt["item"] is None:
                    with lock:
                        done[0] += 1
                    return
                item_id, ranking = nxt["item"]["id"], rng.sample(range(RESPONSES), RESPONSES)
                status, _ = request("POST", "/api/label", {"item_id": item_id, "labeler": who, "ranking": ranking})
                with lock:
                    if status == 200:
                        acked[(item_id, who)] = ranking
                    else:
                        failures[f"label {status}"] += 1
        except (OSError, http.client.HTTPException, ValueError) as e:
            with lock:
                failures[type(e).__name__] += 1

    threads = [threading.Thread(target=labeler, args=(n,)) for n in range(labelers)]
    for t in threads:
        t.start()
    start_gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    proc.send_signal(signal.SIGKILL)  # every 200 must already be on disk
    proc.wait()
    with sqlite3.connect(db) as conn:
        stored = {(i, who): json.loads(r) for i, who, r in conn.execute("SELECT item_id, labeler, ranking FROM labels")}
    lost = sum(stored.get(key) != ranking for key, ranking in acked.items())
    return LoadResult(labelers, items, len(latencies), elapsed, len(acked), len(stored), lost, failures,
                      done[0] == labelers, latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelers", type=int, default=50, help="concurrent labelers (default: %(default)s)")
    parser.add_argument("--items", type=int, default=20, help="items each labeler labels (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time bound (default: %(default)s)")
    args = parser.parse_args(argv)
    result = run(args.labelers, args.items, args.seconds)
    print(result.report())
    ok = result.finished and result.lost == 0 and not result.failures
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
