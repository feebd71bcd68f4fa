"""The labeling server under hostile input: random paths, methods and bodies never get a 5xx or lose a label.

Requests are written byte by byte to a raw socket, so paths, headers and bodies can be
anything a client can send. A model of the accepted labels (every 200 from
``/api/label``) is compared with the database after every example.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reward_models.labeling import LabelingServer, LabelStore
from reward_models.labeling import cli as cli_module
from reward_models.labeling import server as server_module
from reward_models.labeling.cli import cli

ITEMS = [
    {"prompt": "<script>alert('p')</script>", "responses": ["<img src=x onerror=alert(1)>", "b", "c"]},
    {"prompt": "Count.", "responses": ["1", "2"], "id": "count"},
    {"prompt": "Colour?", "responses": ["red", "blue", "green", "&lt;"], "id": 7},
]
SIZES = {1: 3, 2: 2, 3: 4}  # item id -> number of responses
LABELERS = ["ann", "bob", " carl ", "d\u00e9sir\u00e9e"]
API_ROUTES = ["/api/next", "/api/label", "/api/skip", "/api/progress", "/api/agreement", "/api/export"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


class Running:
    """A server thread on an ephemeral port with its store; ``request`` sends raw HTTP."""

    def __init__(self, db: Path, token: str | None = None, mode: str = "rank") -> None:
        self.store = LabelStore(db)
        items = db.with_suffix(".jsonl")
        items.write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
        self.store.import_items(items)
        self.server = LabelingServer(self.store, mode, token=token)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.host, self.port = self.server.server_address[:2]

    def request(
        self, method: bytes, target: bytes, body: bytes = b"", headers: dict[bytes, bytes] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = {b"Host": f"127.0.0.1:{self.port}".encode(), b"Content-Length": str(len(body)).encode()}
        hdrs.update(headers or {})
        head = b"".join(k + b": " + v + b"\r\n" for k, v in hdrs.items())
        with socket.create_connection((self.host, self.port), timeout=10) as sock:
            sock.sendall(method + b" " + target + b" HTTP/1.1\r\n" + head + b"\r\n" + body)
            resp = http.client.HTTPResponse(sock, method="HEAD" if method == b"HEAD" else "GET")
            resp.begin()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.store.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path / "labels.sqlite")
    yield r
    r.close()


def stored(store: LabelStore) -> dict[tuple[int, str], list[int]]:
    return {(item.id, who): ranking for item, who, ranking in store.labels()}


# ---- strategies -----------------------------------------------------------------------------
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
item_ids = st.one_of(
    st.sampled_from(list(SIZES)),
    st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]),
    json_value,
)


@st.composite
def label_body(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed labels (so that many succeed), with every field sometimes wrong."""
    wrong = draw(st.lists(st.integers(0, 9), min_size=4, max_size=4))  # each field wrong with p = 0.2
    item = draw(item_ids if wrong[0] < 2 else st.sampled_from(list(SIZES)))
    k = SIZES.get(item, 3) if isinstance(item, int) and not isinstance(item, bool) else 3
    ranking: Any = draw(st.permutations(range(k)))
    if wrong[1] < 2:
        ranking = draw(st.one_of(json_value, st.lists(st.integers(-3, 6), max_size=6)))
    labeler: Any = draw(st.sampled_from(LABELERS) if wrong[2] >= 2 else st.one_of(json_value, st.text(max_size=70)))
    body = {"item_id": item, "labeler": labeler, "ranking": ranking}
    if wrong[3] < 2:
        del body[draw(st.sampled_from(list(body)))]
    return body


bodies = st.one_of(
    label_body().map(lambda b: json.dumps(b).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=80),
    st.sampled_from([b"[" * 50_000, b'{"item_id": ' + b"9" * 5000 + b"}", b'{"labeler": "\\ud800"}', b"\xff\xfe"]),
)
paths = st.one_of(
    st.sampled_from(["/", "/static/app.js", "/static/style.css", *API_ROUTES]),
    st.builds(lambda r, q: f"{r}?{q}", st.sampled_from(API_ROUTES), st.text(max_size=30).map(quote)),
    st.builds(lambda r, name: f"{r}?labeler={quote(name)}", st.sampled_from(API_ROUTES), st.text(max_size=70)),
    st.text(max_size=40).map(lambda t: "/" + quote(t)),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
            max_size=30),
)
methods = st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"]),
                    st.from_regex(r"[A-Z]{1,10}", fullmatch=True))
content_types = st.sampled_from([b"application/json", b"application/json; charset=utf-8", b"text/plain", None])
requests = st.one_of(
    st.tuples(methods, paths, bodies, content_types),  # anything
    st.tuples(st.just("POST"), st.sampled_from(["/api/label", "/api/skip"]),  # an API call, maybe wrong
              label_body().map(lambda b: json.dumps(b).encode()), st.just(b"application/json")),
)


# ---- the fuzz tests -------------------------------------------------------------------------
def test_random_requests_never_get_a_5xx_and_never_lose_a_label(running):
    accepted: dict[tuple[int, str], list[int]] = {}

    @FUZZ
    @given(request=requests)
    def check(request: tuple[str, str, bytes, bytes | None]) -> None:
        method, path, body, ctype = request
        request_line = (method + " " + path + " HTTP/1.1").encode().decode("latin-1")
        # Two words ("GET  HTTP/1.1") is an HTTP/0.9 request, answered by a bare body without status line.
        assume(len(request_line.split()) != 2)
        headers = {b"Content-Type": ctype} if ctype else {}
        status, hdrs, data = running.request(method.encode(), path.encode(), body, headers)
        assert 200 <= status < 500, (status, data[:300])
        if path.split("?")[0] in API_ROUTES and method in ("GET", "POST"):
            assert hdrs["content-type"].startswith(("application/json", "application/x-ndjson")), hdrs
            if status >= 400:
                assert json.loads(data)["error"]
        if path == "/api/label" and method == "POST" and status == 200:
            sent = json.loads(body)
            accepted[(sent["item_id"], sent["labeler"].strip())] = sent["ranking"]
        assert stored(running.store) == accepted

    check()
    assert accepted, "no valid label was ever sent: the strategy is broken"


@settings(FUZZ, max_examples=40)
@given(body=label_body())
def test_a_label_is_stored_exactly_when_the_answer_is_200(body, tmp_path_factory):
    r = Running(tmp_path_factory.mktemp("db") / "labels.sqlite")
    try:
        status, _, data = r.request(b"POST", b"/api/label", json.dumps(body).encode(),
                                    {b"Content-Type": b"application/json"})
        assert status in (200, 400, 404), (status, data)
        labels = stored(r.store)
        if status == 200:
            assert labels == {(body["item_id"], body["labeler"].strip()): body["ranking"]}
        else:
            assert labels == {} and r.store.mode() is None
    finally:
        r.close()


@pytest.mark.parametrize("item_id", [2**63, -(2**63) - 1, 10**30, 2**63 - 1, 0, -5])
def test_out_of_range_item_ids_are_404_not_500(running, item_id):
    for path, body in [("/api/label", {"item_id": item_id, "labeler": "a", "ranking": [0, 1, 2]}),
                       ("/api/skip", {"item_id": item_id, "labeler": "a"})]:
        status, _, data = running.request(b"POST", path.encode(), json.dumps(body).encode(),
                                          {b"Content-Type": b"application/json"})
        assert status == 404 and b"unknown item_id" in data, (status, data)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"[" * 50_000, b"nested too deeply"), (b'{"item_id": ' + b"9" * 5000 + b"}", b"not valid JSON")],
)
def test_json_that_breaks_the_parser_is_400(running, body, fragment):
    status, _, data = running.request(b"POST", b"/api/label", body, {b"Content-Type": b"application/json"})
    assert status == 400 and fragment in data, (status, data)


@pytest.mark.parametrize("method", [b"HEAD", b"OPTIONS", b"TRACE", b"BREW"])
def test_other_methods_are_405(running, method):
    status, _, _ = running.request(method, b"/api/next?labeler=a")
    assert status == 405


def test_a_client_that_stalls_mid_body_gets_408_and_the_server_keeps_serving(running, monkeypatch):
    monkeypatch.setattr(server_module._Handler, "timeout", 0.5)
    with socket.create_connection((running.host, running.port), timeout=10) as sock:
        sock.sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"item_id\": 1")
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 408 and b"timed out" in resp.read()
    body = json.dumps({"item_id": 1, "labeler": "ann", "ranking": [0, 1, 2]}).encode()
    assert running.request(b"POST", b"/api/label", body, {b"Content-Type": b"application/json"})[0] == 200


# ---- binding, token, escaping ---------------------------------------------------------------
def test_binds_loopback_unless_told(tmp_path, monkeypatch):
    items = tmp_path / "c.jsonl"
    items.write_text(json.dumps(ITEMS[0]) + "\n")
    with LabelStore(tmp_path / "l.sqlite") as store:
        store.import_items(items)
        server = LabelingServer(store)
        try:
            assert server.server_address[0] == "127.0.0.1" and server.loopback
        finally:
            server.server_close()
    seen = {}

    def no_server(store, mode, host, port, token):
        seen["host"] = host
        raise OSError(98, "stopped by the test")

    monkeypatch.setattr(cli_module, "LabelingServer", no_server)
    assert cli(["serve", "--items", str(items), "--db", str(tmp_path / "l.sqlite")]) == 1
    assert seen == {"host": "127.0.0.1"}


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_loopback_server_is_unreachable_from_other_interfaces(running):
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(OSError):
        socket.create_connection((address, running.port), timeout=2).close()


@pytest.mark.parametrize("route", API_ROUTES)
def test_token_guards_every_api_route(tmp_path, route):
    r = Running(tmp_path / "labels.sqlite", token="s3cret-t0ken")
    try:
        method = b"POST" if route in ("/api/label", "/api/skip") else b"GET"
        body = json.dumps({"item_id": 1, "labeler": "ann", "ranking": [0, 1, 2]}).encode()
        target = route.encode() + b"?labeler=ann"
        ctype = {b"Content-Type": b"application/json"}
        for token in [None, b"", b"s3cret-t0keN", b"s3cret-t0ken!", b"s3cret"]:
            headers = {**ctype, **({b"X-Token": token} if token is not None else {})}
            status, _, data = r.request(method, target, body, headers)
            assert status == 401, (token, status, data)
        assert stored(r.store) == {}
        assert r.request(method, target, body, {**ctype, b"X-Token": b"s3cret-t0ken"})[0] == 200
        assert r.request(method, target + b"&token=s3cret-t0ken", body, ctype)[0] == 200
    finally:
        r.close()


def test_model_text_only_leaves_the_server_as_json(running):
    status, hdrs, data = running.request(b"GET", b"/api/next?labeler=ann")
    assert status == 200 and hdrs["content-type"] == "application/json"
    assert hdrs["x-content-type-options"] == "nosniff" and "default-src 'none'" in hdrs["content-security-policy"]
    assert json.loads(data)["item"]["prompt"] == ITEMS[0]["prompt"]
    status, hdrs, page = running.request(b"GET", b"/")
    assert status == 200 and b"alert" not in page  # the page is static: data only arrives through fetch()
    status, hdrs, data = running.request(b"GET", b"/api/export")
    assert hdrs["content-type"].startswith("application/x-ndjson")


HTML_SINKS = ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(",
              "srcdoc", "javascript:", "setAttribute(\"on", "createContextualFragment", "DOMParser"]


def test_page_script_puts_text_in_the_dom_only_as_text():
    static = Path(server_module.__file__).parent / "static"
    script = (static / "app.js").read_text()
    found = [sink for sink in HTML_SINKS if sink in script]
    assert found == [], f"app.js uses HTML sinks {found}: model text must only go through textContent"
    assert "textContent" in script
    scripts = re.findall(r"<script[^>]*>", (static / "index.html").read_text())
    assert scripts == ['<script src="/static/app.js" defer>'], scripts  # no inline script for CSP to allow
