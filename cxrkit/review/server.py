"""The review web server: stdlib ``ThreadingHTTPServer`` in front of :class:`~cxrkit.review.app.ReviewApp`.

Routes: ``/`` (study list, ``?page=N``), ``/study?id=ID``, ``/image?id=ID``
(PNG), ``/cam?id=ID`` (transparent Grad-CAM PNG), ``POST /review?id=ID``
(``{"label_index": i}``; needs the page's ``X-Review-Key`` header so other web
sites cannot post reviews), ``/healthz``. It binds to 127.0.0.1 unless told otherwise.

What every request must pass (see :mod:`cxrkit.serve.guard`):

* its ``Host`` header names the server as started (``localhost``, ``127.0.0.1``,
  ``::1``, the bound host) with the right port, else 421: a DNS-rebinding page
  never sees the study list, an image or the write key;
* a ``POST``/``PUT``/``DELETE`` whose ``Origin`` (or ``Referer``) is another site: 403;
* with a page token (required beyond this computer): the token, from
  ``Authorization: Bearer``, the ``cxrkit_review_token`` cookie, or ``?token=`` in
  the URL (which sets the cookie), else 401;
* a socket timeout (default 30 s) for reading a request and an upper bound on
  open connections (default 64; beyond it 503), so idle or slow clients cannot
  pile up threads; a ``POST`` body needs a ``Content-Length`` of 0-64 KiB (411, 400, 413).

Error messages never carry a server path.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
from dataclasses import asdict
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import parse_qs, urlsplit

from cxrkit.data.errors import BadImageError
from cxrkit.review.app import ReviewApp
from cxrkit.review.client import ReviewError
from cxrkit.review.page import error_page, json_dumps, list_page, study_page
from cxrkit.serve.guard import (
    allowed_host_names,
    bearer,
    host_allowed,
    is_loopback,
    redact_paths,
    same_origin,
    token_matches,
)

__all__ = ["ReviewServer", "is_loopback", "MAX_BODY", "TOKEN_COOKIE"]

logger = logging.getLogger(__name__)

#: largest accepted POST body in bytes.
MAX_BODY = 64 * 1024
#: cookie that carries the page token once the page was opened with ``?token=``.
TOKEN_COOKIE = "cxrkit_review_token"
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
         b"Content-Length: 39\r\nConnection: close\r\n\r\ntoo many open connections; retry later\n")


class _Handler(BaseHTTPRequestHandler):
    server: "ReviewServer"
    server_version = "cxrkit-review"
    _set_cookie: str | None = None

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # StreamRequestHandler applies it to the socket
        super().setup()

    def log_message(self, fmt: str, *args: Any) -> None:  # study ids stay out of the log
        logger.debug("%s %s", getattr(self, "command", "-"), urlsplit(getattr(self, "path", "")).path)

    # -- replies -----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=300" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        if self._set_cookie:
            self.send_header("Set-Cookie", self._set_cookie)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/html; charset=utf-8")

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json_dumps(obj), "application/json")

    def _error(self, status: int, message: str, as_json: bool, page: bool = True) -> None:
        """Answer an error; ``page=False`` sends plain text (refusals show nothing of the page)."""
        if as_json:
            self._json(status, {"error": message})
        elif page:
            self._html(status, error_page(message, self.server.address, self.server.local))
        else:
            self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    def _study_id(self, query: dict[str, list[str]]) -> str:
        ids = query.get("id") or [""]
        return ids[0]

    # -- who may ask ---------------------------------------------------------------------------------
    def _cookie_token(self) -> str | None:
        try:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(TOKEN_COOKIE)
        except CookieError:
            return None
        return morsel.value if morsel is not None else None

    def _allowed(self, as_json: bool, writes: bool = False) -> bool:
        """Host name, origin (for writes) and token checks; answers the refusal itself and returns False."""
        server = self.server
        host = self.headers.get("Host")
        if not host_allowed(host, server.allowed_hosts, server.port):
            self._error(421, "unknown host name: this page answers only the names it was started for "
                        "(open it as http://127.0.0.1:PORT/ or with the --host name)", as_json, page=False)
            return False
        if writes:
            source = self.headers.get("Origin") or self.headers.get("Referer")
            if source is not None and not same_origin(source, host):
                self._error(403, "cross-site request refused: the Origin is not this page", True, page=False)
                return False
        token = server.token
        if token is None or urlsplit(self.path).path == "/healthz":
            return True
        query_token = (parse_qs(urlsplit(self.path).query).get("token") or [None])[0]
        if token_matches(query_token, token):
            self._set_cookie = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
            return True
        if token_matches(bearer(self.headers.get("Authorization")), token) or token_matches(
                self._cookie_token(), token):
            return True
        self._error(401, "this review page needs its token: open the URL with ?token=... that `cxrkit review` "
                    "printed (or send Authorization: Bearer TOKEN)", as_json, page=False)
        return False

    # -- routes ------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        route = parts.path
        app = self.server.app
        as_json = route in ("/image", "/cam", "/healthz")
        if not self._allowed(as_json):
            return None
        try:
            if route == "/healthz":
                return self._json(200, {"ok": True})
            if route == "/":
                page = int((query.get("page") or ["1"])[0]) if (query.get("page") or ["1"])[0].isdigit() else 1
                studies = app.studies()
                predicted = {s.id for s in studies if app.is_predicted(s.id)}
                model = app.known_model
                return self._html(200, list_page(studies, predicted, page, app.page_size, app.client.url, model,
                                                 self.server.address, self.server.local))
            if route in ("/study", "/image", "/cam"):
                study_id = self._study_id(query)
                try:
                    study, prev, nxt = app.study(study_id)
                except KeyError:
                    return self._error(404, f"no study {study_id!r} in the datastore", as_json)
                if route == "/image":
                    return self._send(200, app.image_png(study), "image/png", cache=True)
                if route == "/cam":
                    png = app.cam_png(study)
                    if png is None:
                        return self._error(404, "the server returned no Grad-CAM map; pass --run RUN_DIR", True)
                    return self._send(200, png, "image/png", cache=True)
                answer = app.answer(study)
                html = study_page(study, prev, nxt, answer, self.server.key, self.server.address, self.server.local,
                                  study.status(True))
                return self._html(200, html)
            return self._error(404, f"no page {route}", as_json)
        except ReviewError as exc:
            logger.warning("a MONAI Label call failed; the page shows why")  # the detail may name a study
            return self._error(502, redact_paths(str(exc)), as_json)
        except BadImageError as exc:  # the study's file, not the server, is at fault
            return self._error(422, redact_paths(f"the study's image {exc.path} cannot be read: {exc.reason}"), as_json)
        except Exception as exc:  # noqa: BLE001 - one bad study must not stop the server
            logger.error("review page failed: %s", type(exc).__name__, exc_info=logger.isEnabledFor(logging.DEBUG))
            return self._error(500, redact_paths(f"{type(exc).__name__}: {exc}"), as_json)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _refuse_method(self) -> None:
        if self._allowed(True, writes=True):
            self._error(405, f"{self.command} is not supported here", True)

    do_PUT = do_DELETE = do_PATCH = _refuse_method  # noqa: N815 - http.server naming

    def _body(self) -> bytes | None:
        """The request body, or None after answering 411 / 400 / 413 for a missing, bad or oversized length."""
        text = self.headers.get("Content-Length")
        if text is None:
            self._error(411, "a Content-Length header is required", True)
            return None
        if not text.strip().isdigit():
            self._error(400, "Content-Length must be a non-negative integer", True)
            return None
        length = int(text)
        if length > MAX_BODY:
            self._error(413, f"the body may hold at most {MAX_BODY} bytes", True)
            return None
        return self.rfile.read(length)

    def do_POST(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        if not self._allowed(True, writes=True):
            return None
        if parts.path != "/review":
            return self._error(404, f"no endpoint {parts.path}", True)
        if not secrets.compare_digest(self.headers.get("X-Review-Key", ""), self.server.key):
            return self._error(403, "missing or wrong X-Review-Key: reload the review page", True)
        raw = self._body()
        if raw is None:
            return None
        try:
            body = json.loads(raw or b"{}")
            index = body.get("label_index")
            if not isinstance(index, int) or isinstance(index, bool):
                return self._error(400, "send {\"label_index\": <class index>}", True)
        except (ValueError, AttributeError):
            return self._error(400, "the body must be JSON: {\"label_index\": <class index>}", True)
        app = self.server.app
        try:
            study, _, _ = app.study(self._study_id(parse_qs(parts.query)))
            classes = app.answer(study).classes
            if not 0 <= index < len(classes):
                return self._error(400, f"class index {index} is not one of 0..{len(classes) - 1}", True)
            review = app.save_review(study, index)
        except KeyError:
            return self._error(404, "no such study in the datastore", True)
        except ReviewError as exc:  # the MONAI Label server failed or refused
            logger.warning("a MONAI Label call failed; the page shows why")  # the detail may name a study
            return self._error(502, redact_paths(str(exc)), True)
        except Exception as exc:  # noqa: BLE001 - answer, never drop the connection
            logger.error("saving a review failed: %s", type(exc).__name__, exc_info=logger.isEnabledFor(logging.DEBUG))
            return self._error(500, redact_paths(f"{type(exc).__name__}: {exc}"), True)
        return self._json(200, {"ok": True, "review": asdict(review)})


class ReviewServer(ThreadingHTTPServer):
    """The review page's HTTP server.

    Args:
        app: the review logic.
        host: interface to bind (default loopback only).
        port: port (0: any free port; see :attr:`url`).
        token: a page token every request must carry (``?token=`` once, then a cookie; or
            ``Authorization: Bearer``); None: no token (fine on loopback).
        request_timeout: seconds a connection may stay silent while a request is read.
        max_connections: connections served at once; more are answered 503 at once.
        allowed_hosts: more host names to answer to (e.g. a reverse proxy's), besides
            ``localhost``, ``127.0.0.1``, ``::1`` and ``host``.

    Example:
        >>> server = ReviewServer(ReviewApp(LabelClient("http://127.0.0.1:8000")))  # doctest: +SKIP
        >>> server.serve_forever()  # doctest: +SKIP
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: ReviewApp, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                 request_timeout: float = 30.0, max_connections: int = 64,
                 allowed_hosts: Iterable[str] = ()) -> None:
        if ":" in host.strip("[]"):
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), int(port)), _Handler)
        self.app = app
        self.key = secrets.token_urlsafe(24)
        self.token = token or None
        self.local = is_loopback(host)
        self.request_timeout = float(request_timeout)
        self.allowed_hosts = allowed_host_names(host, allowed_hosts)
        self._slots = threading.BoundedSemaphore(int(max_connections))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.server_address[1])

    @property
    def address(self) -> str:
        """``host:port`` actually bound."""
        host, port = self.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        """The page's URL (with ``?token=`` when the page has a token)."""
        return f"http://{self.address}/" + (f"?token={self.token}" if self.token else "")

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread, or answer 503 at once when ``max_connections`` are open."""
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> "ReviewServer":
        """Serve in a background thread (for tests and notebooks); stop with :meth:`stop`."""
        self._thread = threading.Thread(target=self.serve_forever, name="cxrkit-review", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()
