"""The ASGI app ``cxrkit label serve`` runs: MONAI Label's FastAPI app behind cxrkit's guard, infer off the loop.

uvicorn imports it by name (``monailabel start_server --uvicorn_app
cxrkit.label.asgi:app``, see :func:`cxrkit.label.server.server_command`). In
order, a request meets:

1. the guard (:class:`cxrkit.serve.guard.GuardMiddleware`): a ``Host`` that is
   not one of ``$CXRKIT_LABEL_ALLOWED_HOSTS`` on the server's own port, nor a
   proxy name of ``$CXRKIT_LABEL_PROXY_HOSTS`` (421); a browser request from
   another web origin than the server's own or ``$CXRKIT_LABEL_ALLOWED_ORIGINS``
   (403; MONAI Label itself allows every origin by CORS); a request without
   ``Authorization: Bearer $CXRKIT_LABEL_TOKEN`` (401; there is always a token,
   made here and logged when none is set); a body over
   ``$CXRKIT_LABEL_MAX_BODY_MB`` (413) or slower than
   ``$CXRKIT_LABEL_REQUEST_TIMEOUT`` seconds (408);
2. the route policy (:class:`cxrkit.label.routes.RoutePolicy`): routes review
   does not need (403 unless ``$CXRKIT_LABEL_ALLOW_ADMIN``), image ids not in
   the datastore (404, the same answer whatever exists on disk), bad tags (400);
3. cxrkit's front routes for infer (:func:`offload_infer`: no uploads, sessions
   or parameters beyond Grad-CAM) and for saving a label
   (:func:`check_label_uploads`: a review label file type);
4. MONAI Label's app (its own Keycloak authentication still applies when
   ``MONAI_LABEL_AUTH_ENABLE`` is configured).

:mod:`cxrkit.label.timeouts` closes connections whose request head is late.

MONAI Label 0.8.5 answers ``POST /infer/{model}`` in an ``async`` endpoint that
runs the whole inference on the event loop, so one request at a time holds up
every other one, ``/info/`` included. :func:`offload_infer` puts a route in
front of it that runs the same MONAI Label code in worker threads (at most
``max_batch`` at once), admits at most ``max_queue`` infer requests (more are
answered ``503`` with ``Retry-After``), and leaves the event loop free. In the
threads each model's :class:`~cxrkit.serve.batching.BatchQueue` batches the
forward passes (``$CXRKIT_INFER_*``, :class:`~cxrkit.serve.batching.QueueSettings`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from monailabel.app import app as monailabel_app

from cxrkit.label import timeouts
from cxrkit.label.routes import ADMIN_ENV, RouteError, RoutePolicy, check_infer_params, check_label_filename
from cxrkit.label.server import (
    ALLOWED_HOSTS_ENV,
    ALLOWED_ORIGINS_ENV,
    DEFAULT_MAX_BODY_MB,
    MAX_BODY_ENV,
    PROXY_HOSTS_ENV,
    listed,
)
from cxrkit.label.tokens import TOKEN_ENV, new_token
from cxrkit.options import flag
from cxrkit.serve.batching import QueueSettings
from cxrkit.serve.guard import GuardMiddleware

__all__ = ["app", "Admission", "KnownImages", "check_label_uploads", "offload_infer", "INFER_PATH", "LABEL_PATH"]

#: MONAI Label's infer route.
INFER_PATH = "/infer/{model}"
#: MONAI Label's route saving a label.
LABEL_PATH = "/datastore/label"


class Admission:
    """At most ``max_pending`` infer requests at once (the rest: 503), run in at most ``threads`` threads.

    Args:
        max_pending: infer requests admitted at once (waiting for a thread or the model included).
        threads: worker threads running admitted requests.
        retry_after: seconds a refused client is told to wait.
    """

    def __init__(self, max_pending: int, threads: int, retry_after: int = 2) -> None:
        import anyio

        self.max_pending = int(max_pending)
        self.limiter = anyio.CapacityLimiter(int(threads))
        self.retry_after = int(retry_after)
        self.pending = 0
        self._lock = threading.Lock()

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request in for the ``with`` block.

        Raises:
            fastapi.HTTPException: 503 with ``Retry-After`` when ``max_pending`` requests are in already.
        """
        from fastapi import HTTPException

        with self._lock:
            if self.pending >= self.max_pending:
                raise HTTPException(
                    status_code=503,
                    detail=f"{self.pending} inference requests are waiting already; retry in {self.retry_after} s",
                    headers={"Retry-After": str(self.retry_after)},
                )
            self.pending += 1
        try:
            yield
        finally:
            with self._lock:
                self.pending -= 1


def _original(router: Any, path: str, method: str) -> Any:
    """MONAI Label's route ``method path`` in ``router``.

    Raises:
        RuntimeError: MONAI Label has no such route (another version): the server must not start with a route
            unchecked or inference blocking the event loop unnoticed.
    """
    from fastapi.routing import APIRoute

    route = next((r for r in router.routes if isinstance(r, APIRoute) and r.path == path and method in r.methods),
                 None)
    if route is None:
        raise RuntimeError(f"MONAI Label has no {method} {path} route; cxrkit supports monailabel 0.8.5")
    return route


def _put_first(fastapi_app: Any, original: Any, prefix: str, path: str, method: str, endpoint: Any) -> None:
    """Serve ``method prefix+path`` with ``endpoint`` (the original route's parameters) before the original."""
    endpoint.__signature__ = inspect.signature(original.endpoint)
    endpoint.__doc__ = original.endpoint.__doc__
    fastapi_app.add_api_route(prefix + path, endpoint, methods=[method], name=original.name,
                              summary=original.summary, description=original.description, tags=original.tags,
                              responses=original.responses)
    routes = fastapi_app.router.routes
    routes.insert(0, routes.pop())  # first: it answers, the original is never reached


def _refused(exc: RouteError) -> Exception:
    from fastapi import HTTPException

    return HTTPException(status_code=exc.status, detail=exc.detail)


def offload_infer(fastapi_app: Any, admission: Admission) -> None:
    """Answer ``POST /infer/{model}`` with MONAI Label's own endpoint run in ``admission``'s threads.

    The new route has the original's parameters (form fields, files, MONAI Label's role check), checks them
    (an image id of the datastore, no upload, no session, only :data:`cxrkit.label.routes.INFER_PARAMS`), calls
    MONAI Label's ``run_inference`` and is put first, so it answers instead of the original; only where the
    inference runs changes.

    Raises:
        RuntimeError: MONAI Label has no such route (another version).
    """
    import anyio
    from monailabel.config import settings
    from monailabel.endpoints import infer as monailabel_infer

    original = _original(monailabel_infer.router, INFER_PATH, "POST")
    run_inference = monailabel_infer.run_inference
    accepted = set(inspect.signature(run_inference).parameters)

    async def infer(**kwargs: Any) -> Any:
        if kwargs.get("file") or kwargs.get("label") or kwargs.get("session_id"):
            raise _refused(RouteError(403, "infer takes the id of a datastore image (?image=ID); uploads and "
                                      "sessions are not accepted on this server"))
        try:
            check_infer_params(kwargs.get("params"))
        except RouteError as exc:
            raise _refused(exc) from None
        call = functools.partial(run_inference, **{k: v for k, v in kwargs.items() if k in accepted})
        with admission.admit():
            return await anyio.to_thread.run_sync(call, limiter=admission.limiter)

    _put_first(fastapi_app, original, settings.MONAI_LABEL_API_STR, INFER_PATH, "POST", infer)


def check_label_uploads(fastapi_app: Any) -> None:
    """Answer ``PUT /datastore/label`` only for a review label file (:func:`cxrkit.label.routes.check_label_filename`),
    then with MONAI Label's own endpoint. The image id and tag are checked before (:class:`RoutePolicy`)."""
    from monailabel.config import settings
    from monailabel.endpoints import datastore as monailabel_datastore

    original = _original(monailabel_datastore.router, LABEL_PATH, "PUT")

    async def save_label(**kwargs: Any) -> Any:
        try:
            check_label_filename(getattr(kwargs.get("label"), "filename", None))
        except RouteError as exc:
            raise _refused(exc) from None
        return await original.endpoint(**kwargs)

    _put_first(fastapi_app, original, settings.MONAI_LABEL_API_STR, LABEL_PATH, "PUT", save_label)


class KnownImages:
    """Whether an image id is in the app's datastore; the id list is re-read at most every ``refresh_s``
    seconds, and on a miss (an image just added)."""

    def __init__(self, refresh_s: float = 2.0) -> None:
        self.refresh_s = float(refresh_s)
        self._ids: frozenset[str] = frozenset()
        self._read = -float("inf")
        self._lock = threading.Lock()

    def _reload(self) -> None:
        from monailabel.interfaces.utils.app import app_instance

        self._ids = frozenset(app_instance().datastore().list_images())
        self._read = time.monotonic()

    def __call__(self, image_id: str) -> bool:
        with self._lock:
            if image_id in self._ids:
                return True
            if time.monotonic() - self._read >= self.refresh_s or not self._ids:
                self._reload()
            return image_id in self._ids


def _api_prefix() -> str:
    from monailabel.config import settings

    return settings.MONAI_LABEL_API_STR


def _token() -> str:
    token = os.environ.get(TOKEN_ENV)
    if not token:  # started without cxrkit label serve: a token all the same, in the server's log
        token = new_token()
        logging.getLogger(__name__).warning("no $%s: this server's token is %s", TOKEN_ENV, token)
    return token


_settings = QueueSettings.from_env()
_timeout = timeouts.timeout_from_env()
timeouts.install(_timeout)
offload_infer(monailabel_app, Admission(max_pending=_settings.max_queue, threads=max(4, _settings.max_batch)))
check_label_uploads(monailabel_app)
_hosts = frozenset(name.lower() for name in listed(os.environ.get(ALLOWED_HOSTS_ENV)))
_max_body_mb = float(os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY_MB)
app = GuardMiddleware(
    RoutePolicy(monailabel_app, KnownImages(), allow_admin=flag(os.environ.get(ADMIN_ENV), ADMIN_ENV), prefix=_api_prefix()),
    allowed_hosts=_hosts or None, proxy_hosts=listed(os.environ.get(PROXY_HOSTS_ENV)), check_port=True,
    allowed_origins=listed(os.environ.get(ALLOWED_ORIGINS_ENV)), token=_token(), body_timeout=_timeout,
    max_body=int(_max_body_mb * 1024 * 1024),
)
