"""The labeling web server: one static page and a small JSON API, standard library only.

API (JSON; with a token set, send it as ``X-Token`` header or ``?token=``):

- ``GET /api/next?labeler=NAME``: the next item NAME has not labeled, with progress.
- ``POST /api/label`` ``{"item_id", "labeler", "ranking": [indices, best first]}``
  (best mode: ``[best index]``); committed to SQLite before the 200 is sent.
  Labeling an item again replaces the earlier label (``"replaced": true``).
- ``POST /api/skip`` ``{"item_id", "labeler"}``: the item comes back after the others.
- ``GET /api/progress[?labeler=NAME]`` (labels per labeler and each one's estimated flip rate,
  :mod:`reward_models.reliability`), ``GET /api/agreement``.
- ``GET /api/export``: the preference JSONL (see :meth:`LabelStore.export_rows`).

Bad requests get a 4xx with ``{"error": "..."}``. Model text is only ever placed
with ``textContent`` by the page, and a strict Content-Security-Policy forbids
inline script as a second line of defence.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import socketserver
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from reward_models.labeling.store import (
    MODES,
    LabelError,
    LabelStore,
    Mode,
    UnknownItemError,
    check_labeler,
)
from rlhf_common.io import DataError

MAX_BODY_BYTES = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page URL may carry ?token=
    "Cache-Control": "no-store",
}
_STATIC = {  # URL path: (file in the package's static/ folder, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class ApiError(Exception):
    """An HTTP error answer: status code and a message saying what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LabelingServer(ThreadingHTTPServer):
    """Serves the labeling page and API for ``store`` at ``host:port`` (0 = a free port).

    Call :meth:`serve_forever`; :meth:`shutdown` from another thread stops it and
    :meth:`server_close` then waits for requests in flight (a label being
    committed finishes). ``token``, when set, is required on every API call.
    """

    daemon_threads = False  # so server_close() joins request threads
    block_on_close = True
    request_queue_size = 128  # 20+ labelers connecting at once must not see refusals

    def __init__(
        self,
        store: LabelStore,
        mode: Mode = "rank",
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        recorded = store.mode()
        if recorded not in (None, mode):
            raise DataError(
                f"{store.path} holds {recorded}-mode labels; serve it with --mode {recorded} or pass another --db."
            )
        if store.count_items() == 0:
            raise DataError(f"{store.path} has no items; pass --items COLLECTION.jsonl.")
        self.store, self.mode, self.token = store, mode, token or None
        self.loopback = is_loopback(host)
        self.pages = {path: (_read_static(name), ctype) for path, (name, ctype) in _STATIC.items()}
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host, which can stall start-up."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000/``."""
        host = self.server_name
        return f"http://[{host}]:{self.server_port}/" if ":" in host else f"http://{host}:{self.server_port}/"

    def page_url(self, labeler: str | None = None) -> str:
        """The page URL to open, with the labeler and token filled in when given."""
        params = {"labeler": labeler, "token": self.token}
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items() if v)
        return self.url + (f"?{query}" if query else "")


def _read_static(name: str) -> bytes:
    path = resources.files("reward_models.labeling") / "static" / name
    try:
        return path.read_bytes()
    except FileNotFoundError:  # a broken install, not a user error: keep it apart from OSErrors of bind()
        raise RuntimeError(
            f"{path}: the labeling page is missing from the installed package; reinstall "
            "rlhf-gym (package data reward_models/labeling/static/*)."
        ) from None


def _item_id(body: dict[str, Any]) -> int:
    value = body.get("item_id")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'item_id' must be the integer id of an item from /api/next, got {value!r}.")
    return value


class _Handler(BaseHTTPRequestHandler):
    server: LabelingServer
    timeout = 30  # seconds a client may stall mid-request before its thread gives up

    def version_string(self) -> str:
        return "rlhf-gym-labeling"

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._send_json(405, {"error": "use GET or POST."})

    do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = do_PUT

    def _handle(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            self._check_host()
            if url.path in self.server.pages:
                if method != "GET":
                    raise ApiError(405, f"{url.path} only answers GET.")
                self._send(200, *self.server.pages[url.path])
                return
            route = self._ROUTES.get(url.path)
            if route is None:
                raise ApiError(404, f"no such page {url.path!r}; the API is under /api/ (see /).")
            if route[0] != method:
                raise ApiError(405, f"{url.path} only answers {route[0]}.")
            self._check_token(query)
            result = route[1](self, query, self._read_json() if method == "POST" else {})
            if isinstance(result, bytes):
                self._send(200, result, "application/x-ndjson; charset=utf-8")
            else:
                self._send_json(200, result)
        except ApiError as e:
            self._send_json(e.status, {"error": str(e)})
        except UnknownItemError as e:
            self._send_json(404, {"error": str(e)})
        except LabelError as e:
            self._send_json(400, {"error": str(e)})
        except Exception as e:  # a bug or a disk error: answer, log, keep serving
            self.log_error("internal error on %s %s: %s", method, self.path, traceback.format_exc())
            self._send_json(500, {"error": f"internal error ({type(e).__name__}); see the server log."})

    def _check_host(self) -> None:
        # A web page on another site could rename itself to 127.0.0.1 (DNS rebinding)
        # and read the API; when bound to loopback only loopback names are accepted.
        host = self.headers.get("Host")
        if not self.server.loopback or host is None:
            return
        name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if name not in _LOOPBACK_NAMES:
            raise ApiError(403, f"Host {host!r} refused: open the page as {self.server.url}.")

    def _check_token(self, query: dict[str, str]) -> None:
        if self.server.token is None:
            return
        given = self.headers.get("X-Token") or query.get("token", "")
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            raise ApiError(
                401,
                "missing or wrong token: open the page URL with ?token=... as printed "
                "by the server, or send the X-Token header.",
            )

    def _read_json(self) -> dict[str, Any]:
        if self.headers.get_content_type() != "application/json":
            raise ApiError(415, "send the body as JSON with 'Content-Type: application/json'.")
        declared = self.headers.get("Content-Length", "")
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError(411, "a JSON body with a Content-Length header is required.")
        length = int(declared)
        if length > MAX_BODY_BYTES:
            raise ApiError(413, f"body of {length} bytes; at most {MAX_BODY_BYTES} are accepted.")
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            raise ApiError(408, f"timed out after {self.timeout} s waiting for the {length}-byte body.") from None
        try:
            body = json.loads(raw)
        except RecursionError:
            raise ApiError(400, "body is JSON nested too deeply to read.") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
            raise ApiError(400, f"body is not valid JSON ({str(e)[:200]}).") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"body must be a JSON object, got {type(body).__name__}.")
        return body

    # -- API routes: (query, body) -> JSON object, or bytes sent as JSONL ---------------

    def _next(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        labeler = check_labeler(query.get("labeler"))
        store = self.server.store
        result: dict[str, Any] = {
            "labeler": labeler,
            "mode": self.server.mode,
            "item": None,  # None: this labeler has labeled every item
            "labeled": store.labeled_count(labeler),
            "total": store.count_items(),
        }
        found = store.next_item(labeler)
        if found is not None:
            item, skipped_before = found
            result["item"] = {
                "id": item.id,
                "prompt": item.prompt,
                "responses": item.responses,
                "skipped_before": skipped_before,
            }
        return result

    def _label(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        labeler = check_labeler(body.get("labeler"))
        store = self.server.store
        replaced = store.add_label(_item_id(body), labeler, body.get("ranking"), self.server.mode)
        return {"ok": True, "replaced": replaced, "labeled": store.labeled_count(labeler), "total": store.count_items()}

    def _skip(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        self.server.store.skip(_item_id(body), check_labeler(body.get("labeler")))
        return {"ok": True}

    def _progress(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        store = self.server.store
        result: dict[str, Any] = {"total": store.count_items(), "labelers": store.progress(),
                                  "reliability": store.reliability().to_dict()}
        if "labeler" in query:
            labeler = check_labeler(query["labeler"])
            result.update(labeler=labeler, labeled=store.labeled_count(labeler))
        return result

    def _agreement(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        return self.server.store.agreement().to_dict()

    def _export(self, query: dict[str, str], body: dict[str, Any]) -> bytes:
        rows = self.server.store.export_rows()
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()

    _ROUTES: dict[str, tuple[str, Callable[..., dict[str, Any] | bytes]]] = {
        "/api/next": ("GET", _next),
        "/api/label": ("POST", _label),
        "/api/skip": ("POST", _skip),
        "/api/progress": ("GET", _progress),
        "/api/agreement": ("GET", _agreement),
        "/api/export": ("GET", _export),
    }

    # -- responses ------------------------------------------------------------------------

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, obj: dict[str, Any]) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON instead of http.server's HTML for protocol errors (bad request line, ...).

        An unknown method is the client's mistake, so it gets 405 rather than http.server's 501.
        """
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, "use GET or POST."
        self._send_json(int(code), {"error": message or HTTPStatus(code).phrase})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log only failed requests; a busy labeling session would flood the terminal."""
        if isinstance(code, int) and code >= 400:
            super().log_request(code, size)
