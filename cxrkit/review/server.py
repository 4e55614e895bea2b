"""The review web server: stdlib ``ThreadingHTTPServer`` in front of :class:`~cxrkit.review.app.ReviewApp`.

Routes: ``/`` (study list, ``?page=N``), ``/study?id=ID``, ``/image?id=ID``
(PNG), ``/cam?id=ID`` (transparent Grad-CAM PNG), ``POST /review?id=ID``
(``{"label_index": i}``; needs the page's ``X-Review-Key`` header so other web
sites cannot post reviews), ``/healthz``. It binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cxrkit.review.app import ReviewApp
from cxrkit.review.client import ReviewError
from cxrkit.review.page import error_page, json_dumps, list_page, study_page

__all__ = ["ReviewServer", "is_loopback"]

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this computer."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: "ReviewServer"
    server_version = "cxrkit-review"

    def log_message(self, fmt: str, *args: Any) -> None:  # study ids stay out of the log
        logger.debug("%s %s", self.command, urlsplit(self.path).path)

    # -- replies -----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=300" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/html; charset=utf-8")

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json_dumps(obj), "application/json")

    def _error(self, status: int, message: str, as_json: bool) -> None:
        if as_json:
            self._json(status, {"error": message})
        else:
            self._html(status, error_page(message, self.server.address, self.server.local))

    def _study_id(self, query: dict[str, list[str]]) -> str:
        ids = query.get("id") or [""]
        return ids[0]

    # -- routes ------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        route = parts.path
        app = self.server.app
        as_json = route in ("/image", "/cam", "/healthz")
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
            return self._error(502, str(exc), as_json)
        except Exception as exc:  # noqa: BLE001 - one bad study must not stop the server
            logger.error("review page failed: %s", type(exc).__name__, exc_info=logger.isEnabledFor(logging.DEBUG))
            return self._error(500, f"{type(exc).__name__}: {exc}", as_json)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_POST(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        if parts.path != "/review":
            return self._error(404, f"no endpoint {parts.path}", True)
        if not secrets.compare_digest(self.headers.get("X-Review-Key", ""), self.server.key):
            return self._error(403, "missing or wrong X-Review-Key: reload the review page", True)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
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
            return self._error(502, str(exc), True)
        return self._json(200, {"ok": True, "review": asdict(review)})


class ReviewServer(ThreadingHTTPServer):
    """The review page's HTTP server.

    Args:
        app: the review logic.
        host: interface to bind (default loopback only).
        port: port (0: any free port; see :attr:`url`).

    Example:
        >>> server = ReviewServer(ReviewApp(LabelClient("http://127.0.0.1:8000")))  # doctest: +SKIP
        >>> server.serve_forever()  # doctest: +SKIP
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: ReviewApp, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, int(port)), _Handler)
        self.app = app
        self.key = secrets.token_urlsafe(24)
        self.local = is_loopback(host)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port`` actually bound."""
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        """The page's URL."""
        return f"http://{self.address}/"

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
