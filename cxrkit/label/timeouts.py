"""Request timeouts for the MONAI Label server, which uvicorn (under MONAI Label) does not have.

uvicorn closes a keep-alive connection that stays idle after a response (5 s),
but a client that connects and then sends its request slowly (a byte now and
then, or headers that never end) holds the connection, and a worker's share of
``limit_concurrency``, for ever. Two limits close that gap:

* :func:`install`: a connection must deliver a whole request head (request line
  and headers) within ``seconds`` of connecting or of its previous response;
  otherwise it is closed. It wraps ``connection_made``, ``on_response_complete``
  and ``connection_lost`` of uvicorn's HTTP protocol classes (h11 and httptools,
  whichever uvicorn uses), and only ever closes a connection whose last request
  is answered in full and which has not started a new one.
* a request body must arrive within ``seconds`` too
  (:class:`cxrkit.serve.guard.GuardMiddleware` with ``body_timeout``, answering ``408``).

Both are configured by ``$CXRKIT_LABEL_REQUEST_TIMEOUT`` (seconds, default 30;
:data:`TIMEOUT_ENV`), which ``cxrkit label serve --request_timeout`` sets.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
from typing import Any, Mapping

__all__ = ["DEFAULT_TIMEOUT", "TIMEOUT_ENV", "install", "timeout_from_env"]

logger = logging.getLogger(__name__)

#: seconds a request head (and, separately, a request body) may take to arrive.
DEFAULT_TIMEOUT = 30.0
#: the environment variable the server reads its timeout from.
TIMEOUT_ENV = "CXRKIT_LABEL_REQUEST_TIMEOUT"
#: uvicorn's HTTP protocol classes (module, class); those not importable are left alone.
_PROTOCOLS = (
    ("uvicorn.protocols.http.h11_impl", "H11Protocol"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
)


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    """The timeout in ``$CXRKIT_LABEL_REQUEST_TIMEOUT`` (default :data:`DEFAULT_TIMEOUT`).

    Raises:
        ValueError: not a positive number (naming the variable).
    """
    raw = (os.environ if env is None else env).get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"${TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return seconds


def _expire(protocol: Any, seen: Any) -> None:
    transport = getattr(protocol, "transport", None)
    if transport is None or transport.is_closing():
        return
    cycle = getattr(protocol, "cycle", None)
    if cycle is seen and (cycle is None or getattr(cycle, "response_complete", False)):
        logger.info("closed a connection that sent no whole request within %.0f s", protocol._cxrkit_timeout)
        transport.close()


def _arm(protocol: Any) -> None:
    timer = getattr(protocol, "_cxrkit_timer", None)
    if timer is not None:
        timer.cancel()
    loop = getattr(protocol, "loop", None) or asyncio.get_event_loop()
    protocol._cxrkit_timer = loop.call_later(protocol._cxrkit_timeout, _expire, protocol, protocol.cycle)


def _patch(cls: type) -> None:
    made, complete, lost = cls.connection_made, cls.on_response_complete, cls.connection_lost

    @functools.wraps(made)
    def connection_made(self: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
        made(self, transport, *args, **kwargs)
        _arm(self)

    @functools.wraps(complete)
    def on_response_complete(self: Any, *args: Any, **kwargs: Any) -> None:
        complete(self, *args, **kwargs)
        if not self.transport.is_closing():
            _arm(self)

    @functools.wraps(lost)
    def connection_lost(self: Any, *args: Any, **kwargs: Any) -> None:
        timer = getattr(self, "_cxrkit_timer", None)
        if timer is not None:
            timer.cancel()
        lost(self, *args, **kwargs)

    cls.connection_made, cls.on_response_complete, cls.connection_lost = (
        connection_made, on_response_complete, connection_lost)


def install(seconds: float) -> list[str]:
    """Give uvicorn's HTTP protocols a request-head timeout of ``seconds``; returns the classes patched.

    Calling it again changes the timeout (the classes are patched once).
    """
    patched = []
    for module_name, class_name in _PROTOCOLS:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        if not all(hasattr(cls, name) for name in ("connection_made", "on_response_complete", "connection_lost")):
            logger.warning("uvicorn's %s has changed: no request timeout on its connections", class_name)
            continue
        if "_cxrkit_timeout" not in vars(cls):
            _patch(cls)
        cls._cxrkit_timeout = float(seconds)
        patched.append(class_name)
    if not patched:
        logger.warning("uvicorn's HTTP protocol classes were not found: connections get no request timeout")
    return patched
