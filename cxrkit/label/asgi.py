"""The ASGI app ``cxrkit label serve`` runs: MONAI Label's FastAPI app behind cxrkit's guard, infer off the loop.

uvicorn imports it by name (``monailabel start_server --uvicorn_app
cxrkit.label.asgi:app``, see :func:`cxrkit.label.server.server_command`). The
guard (:class:`cxrkit.serve.guard.GuardMiddleware`) refuses requests whose
``Host`` is not one of ``$CXRKIT_LABEL_ALLOWED_HOSTS`` (421), browser requests
from another web origin than the server's own or ``$CXRKIT_LABEL_ALLOWED_ORIGINS``
(403; MONAI Label itself allows every origin by CORS) and, when
``$CXRKIT_LABEL_TOKEN`` is set, requests without ``Authorization: Bearer
<token>`` (401), and a request body that takes longer than
``$CXRKIT_LABEL_REQUEST_TIMEOUT`` seconds (408); :mod:`cxrkit.label.timeouts`
closes connections whose request head takes longer. MONAI Label's own
authentication (``MONAI_LABEL_AUTH_ENABLE`` with a Keycloak realm) still
applies behind it when configured.

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
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from monailabel.app import app as monailabel_app

from cxrkit.label import timeouts
from cxrkit.label.server import ALLOWED_HOSTS_ENV, ALLOWED_ORIGINS_ENV, TOKEN_ENV, listed
from cxrkit.serve.batching import QueueSettings
from cxrkit.serve.guard import GuardMiddleware

__all__ = ["app", "Admission", "offload_infer", "INFER_PATH"]

#: MONAI Label's infer route.
INFER_PATH = "/infer/{model}"


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


def offload_infer(fastapi_app: Any, admission: Admission) -> None:
    """Answer ``POST /infer/{model}`` with MONAI Label's own endpoint run in ``admission``'s threads.

    The new route has the original's parameters (form fields, files, MONAI Label's role check), calls MONAI
    Label's ``run_inference`` and is put first, so it answers instead of the original; only where the inference
    runs changes.

    Raises:
        RuntimeError: MONAI Label has no such route (another version): the server must not start with inference
            blocking the event loop unnoticed.
    """
    import anyio
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints import infer as monailabel_infer

    original = next((r for r in monailabel_infer.router.routes if isinstance(r, APIRoute)
                     and r.path == INFER_PATH and "POST" in r.methods), None)
    if original is None:
        raise RuntimeError(f"MONAI Label has no POST {INFER_PATH} route; cxrkit supports monailabel 0.8.5")
    run_inference = monailabel_infer.run_inference
    accepted = set(inspect.signature(run_inference).parameters)

    async def infer(**kwargs: Any) -> Any:
        call = functools.partial(run_inference, **{k: v for k, v in kwargs.items() if k in accepted})
        with admission.admit():
            return await anyio.to_thread.run_sync(call, limiter=admission.limiter)

    infer.__signature__ = inspect.signature(original.endpoint)  # type: ignore[attr-defined]
    infer.__doc__ = original.endpoint.__doc__
    fastapi_app.add_api_route(settings.MONAI_LABEL_API_STR + INFER_PATH, infer, methods=["POST"],
                              name=original.name, summary=original.summary, description=original.description,
                              tags=original.tags, responses=original.responses)
    routes = fastapi_app.router.routes
    routes.insert(0, routes.pop())  # first: it answers, the original is never reached


_settings = QueueSettings.from_env()
_timeout = timeouts.timeout_from_env()
timeouts.install(_timeout)
offload_infer(monailabel_app, Admission(max_pending=_settings.max_queue, threads=max(4, _settings.max_batch)))
_hosts = frozenset(name.lower() for name in listed(os.environ.get(ALLOWED_HOSTS_ENV)))
app = GuardMiddleware(monailabel_app, allowed_hosts=_hosts or None,
                      allowed_origins=listed(os.environ.get(ALLOWED_ORIGINS_ENV)),
                      token=os.environ.get(TOKEN_ENV) or None, body_timeout=_timeout)
