"""A loopback HTTP server (127.0.0.1 only) that serves weight files the way their origins do, and misbehaves on demand.

Direct links are served in the mirror layout of ``CXRKIT_WEIGHTS_MIRROR``: ``/<host>/<path>`` (see
``cxrkit.weights.fetchspec.mirrored``). A route can answer normally (with ``Range`` support, as the origins do), cut
the connection halfway, fail with a status a few times, answer a 200 HTML page, redirect, or stall. The hub routes
answer ``HEAD``/``GET /{repo}/resolve/{revision}/{filename}`` with the headers ``huggingface_hub`` reads
(``X-Repo-Commit``, ``ETag`` / ``X-Linked-Etag`` = the file's sha256, ``X-Linked-Size``, ``Content-Length``).
Every request is recorded (method, path, headers) so tests can assert what a client really asked.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that hangs up is part of the tests
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Route:
    """How one path answers.

    Attributes:
        body: the file's bytes.
        cut_first: on the first full GET, send the headers of the whole file but only half the bytes, then close.
        fail: ``(status, times)``: answer ``status`` this many times first.
        html: answer 200 with an HTML page instead of ``body``.
        redirect: answer 302 to this path.
        stall: wait this long (seconds, or until the server stops) before answering.
        range_ok: honour ``Range`` (206); ``False`` answers 200 with the whole file, as some servers do.
        hub_commit: answer as the hub's resolve endpoint, with this commit in ``X-Repo-Commit``.
        hub_etag: the sha256 the hub answers in ``X-Linked-Etag`` (default: the body's own).
        hub_gated: answer 401 ``X-Error-Code: GatedRepo`` unless the request carries ``Authorization: Bearer <this>``.
    """

    body: bytes = b""
    cut_first: bool = False
    fail: tuple[int, int] = (0, 0)
    html: bool = False
    redirect: str = ""
    stall: float = 0.0
    range_ok: bool = True
    hub_commit: str = ""
    hub_etag: str = ""
    hub_gated: str = ""
    served: int = field(default=0, init=False)


class WeightServer:
    """``with WeightServer() as server: server.add(url, Route(...)); server.mirror`` (the mirror base URL)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str, Message]] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def mirror(self) -> str:
        """The value for ``CXRKIT_WEIGHTS_MIRROR``."""
        return self.base + "/mirror"

    def add(self, url: str, route: Route) -> Route:
        """Serve ``route`` for the published ``url`` (a real origin URL, mapped into the mirror layout)."""
        parts = urlsplit(url)
        self.routes["/mirror/" + parts.netloc + parts.path] = route
        return route

    def add_path(self, path: str, route: Route) -> Route:
        self.routes[path] = route
        return route

    def add_hub(self, repo: str, commit: str, filename: str, body: bytes) -> Route:
        """A hub file: ``/{repo}/resolve/{commit}/{filename}``."""
        return self.add_path(f"/{repo}/resolve/{commit}/{filename}", Route(body=body, hub_commit=commit))

    def seen(self, path_part: str, method: str = "GET") -> list[Message]:
        """Headers of every ``method`` request whose path contains ``path_part``."""
        return [h for m, p, h in self.requests if m == method and path_part in p]

    def __enter__(self) -> "WeightServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head and body:
                    self.wfile.write(body)

            def _answer(self, head: bool) -> None:
                path = urlsplit(self.path).path
                with server.lock:
                    server.requests.append((self.command, path, self.headers))  # case-insensitive
                    route = server.routes.get(path)
                if route is None:  # the hub says which kind of "not found" it is
                    extra = {"X-Error-Code": "EntryNotFound"} if "/resolve/" in path else {}
                    self._send(404, {"Content-Length": "9", "Content-Type": "text/plain", **extra}, b"not found", head)
                    return
                if route.hub_gated and self.headers.get("Authorization") != f"Bearer {route.hub_gated}":
                    self._send(401, {"X-Error-Code": "GatedRepo", "Content-Length": "5",
                                     "X-Error-Message": "Access to this repo is restricted"}, b"gated", head)
                    return
                if route.stall:
                    server.stop_event.wait(route.stall)
                    if server.stop_event.is_set():
                        return
                status, times = route.fail
                if status and route.served < times:
                    route.served += 1
                    self._send(status, {"Content-Length": "5"}, b"error", head)
                    return
                if route.redirect:
                    self._send(302, {"Location": route.redirect, "Content-Length": "0"}, head=head)
                    return
                if route.html:
                    page = b"<!DOCTYPE html><html><body>Sorry, the file is unavailable.</body></html>"
                    self._send(200, {"Content-Type": "text/html; charset=utf-8", "Content-Length": str(len(page))},
                               page, head)
                    return
                body = route.body
                headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
                if route.hub_commit:
                    sha = route.hub_etag or hashlib.sha256(body).hexdigest()
                    headers.update({"X-Repo-Commit": route.hub_commit, "ETag": f'"{sha}"',
                                    "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(body))})
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match and route.range_ok and not head:
                    start = int(match.group(1))
                    if start >= len(body):
                        self._send(416, {"Content-Length": "0", "Content-Range": f"bytes */{len(body)}"})
                        return
                    part = body[start:]
                    headers.update({"Content-Length": str(len(part)),
                                    "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
                    self._send(206, headers, part)
                    return
                headers["Content-Length"] = str(len(body))
                if route.cut_first and not head and route.served == 0:
                    route.served += 1
                    self._send(200, headers, body[: len(body) // 2])
                    self.close_connection = True
                    return
                route.served += 1
                self._send(200, headers, body, head)

        return Handler
