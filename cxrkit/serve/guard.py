"""Who may talk to cxrkit's servers, and what their errors may show.

Shared by the review page (:mod:`cxrkit.review.server`) and the MONAI Label
server (:mod:`cxrkit.label.asgi`):

* **Host names** (against DNS rebinding): a hostile web page can make a
  reviewer's browser send requests to ``127.0.0.1`` under its own name
  (``evil.example``); the browser then treats the answers as that page's own.
  A server answers only requests whose ``Host`` header names it as it was
  started: ``localhost``, ``127.0.0.1``, ``::1``, the ``--host`` value, and for
  a wildcard bind (``0.0.0.0``) this computer's host name, fully qualified
  name and addresses (:func:`allowed_host_names`).
* **Origins** (against cross-site requests): a state-changing request whose
  ``Origin`` (or ``Referer`` when there is no ``Origin``) is another site is
  refused (:func:`same_origin`).
  :class:`GuardMiddleware` applies the same rule to every request that
  carries an ``Origin``, reads included: MONAI Label answers every origin's
  CORS request (``Access-Control-Allow-Origin: *`` unless configured), so any
  page a reviewer visits could otherwise read ``http://127.0.0.1:8000`` under
  its true name. Web viewers on another origin are allowed by name.
* **Tokens**: a shared secret compared in constant time (:func:`token_matches`).
* **Paths**: error messages sent to clients never carry this computer's file
  paths (:func:`redact_paths`).
* **Slow bodies**: a request body must arrive within a deadline (``408``), see :func:`body_deadline`.
* **Large bodies**: a request body larger than a limit is refused (``413``), see :func:`body_limit`.
* :class:`GuardMiddleware`: the host, origin, token, body-size and body-deadline checks as ASGI middleware.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import secrets
import socket
from typing import Any, Awaitable, Callable, Iterable, Mapping
from urllib.parse import urlsplit

__all__ = [
    "LOOPBACK_NAMES",
    "GuardMiddleware",
    "BodyTooLarge",
    "RequestTimeout",
    "body_deadline",
    "body_limit",
    "allowed_host_names",
    "host_allowed",
    "is_loopback",
    "is_wildcard",
    "normalise_origin",
    "redact_paths",
    "refuse",
    "same_origin",
    "split_host",
    "token_matches",
]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
# an absolute POSIX path (not the path part of a URL) or a Windows drive path
_PATH = re.compile(r"(?<![\w:/.~-])(?:/[^\s'\"<>:;,()\[\]{}|]+)+|\b[A-Za-z]:\\[^\s'\"<>;,()]+")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this computer."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether ``host`` binds every interface (``0.0.0.0``, ``::``, empty)."""
    return host.strip("[]") in _WILDCARDS


def _this_computer() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:
            pass
    return names


def allowed_host_names(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The host names a server bound to ``bind_host`` answers to (lower case, IPv6 without brackets).

    Args:
        bind_host: the ``--host`` value.
        extra: more names (a reverse proxy's public name).
    """
    names = set(LOOPBACK_NAMES)
    host = bind_host.strip("[]").lower()
    if is_wildcard(host):
        names |= {n.lower() for n in _this_computer()}
    else:
        names.add(host)
    names |= {n.strip("[]").lower() for n in extra if n}
    return frozenset(names)


def split_host(header: str) -> tuple[str, int | None]:
    """``("name", port)`` of a ``Host`` header (``[::1]:80``, ``name:80``, ``name``); port None when absent.

    Raises:
        ValueError: not a host name with an optional numeric port.
    """
    text = header.strip().lower()
    port: str | None = None
    if text.startswith("["):  # [v6] or [v6]:port
        name, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(header)
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        name, port = text.split(":")
    elif ":" in text:  # an IPv6 address needs brackets in a Host header
        raise ValueError(header)
    else:
        name = text
    if not name or (port is not None and not port.isdigit()):
        raise ValueError(header)
    return name, int(port) if port is not None else None


def host_allowed(header: str | None, names: frozenset[str] | set[str], port: int | None = None) -> bool:
    """Whether a ``Host`` header names an allowed host (and ``port``, when given; 80 may be left out)."""
    if not header:
        return False
    try:
        name, given = split_host(header)
    except ValueError:
        return False
    if name not in names:
        return False
    return port is None or given == port or (given is None and port == 80)


def same_origin(source: str | None, host_header: str | None) -> bool:
    """Whether an ``Origin`` / ``Referer`` value names the server the request was sent to (``Host``)."""
    if not source or not host_header:
        return False
    parts = urlsplit(source.strip())
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower()


def normalise_origin(origin: str) -> str:
    """An origin as browsers send it: ``scheme://host[:port]``, lower case, no path or trailing slash.

    Raises:
        ValueError: not an ``http`` / ``https`` origin.
    """
    parts = urlsplit(origin.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{origin!r} is not a web origin (expected http[s]://host[:port])")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    return bool(given) and secrets.compare_digest(str(given).encode(), token.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def redact_paths(text: str) -> str:
    """``text`` with absolute file paths replaced by ``<path>`` (URLs are kept)."""
    return _PATH.sub("<path>", str(text))


Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class RequestTimeout(Exception):
    """The client did not send its request body within the deadline."""


class BodyTooLarge(Exception):
    """The client sent a request body larger than the limit."""


def body_limit(receive: Receive, max_bytes: int) -> Receive:
    """An ASGI ``receive`` that counts the request body and raises once it exceeds ``max_bytes``.

    Raises:
        BodyTooLarge: from the returned function, on the chunk that crosses the limit.
    """
    state = {"seen": 0}

    async def counted() -> Mapping[str, Any]:
        message = await receive()
        if message.get("type") == "http.request":
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > max_bytes:
                raise BodyTooLarge(f"the request body is larger than {max_bytes} bytes")
        return message

    return counted


def body_deadline(receive: Receive, seconds: float) -> Receive:
    """An ASGI ``receive`` whose request body must be complete within ``seconds`` of its first call.

    After the body (and for messages other than ``http.request``, such as the wait
    for a disconnect during a long answer) it is ``receive`` itself.

    Raises:
        RequestTimeout: from the returned function, when the body is late.
    """
    state: dict[str, Any] = {"deadline": None, "done": False}

    async def timed() -> Mapping[str, Any]:
        if state["done"]:
            return await receive()
        now = asyncio.get_running_loop().time()
        if state["deadline"] is None:
            state["deadline"] = now + seconds
        try:
            message = await asyncio.wait_for(receive(), max(0.0, state["deadline"] - now))
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {seconds:g} s") from None
        if message.get("type") != "http.request" or not message.get("more_body", False):
            state["done"] = True
        return message

    return timed


class GuardMiddleware:
    """ASGI middleware: refuse unknown ``Host`` names or ports (421), foreign origins (403), missing tokens (401),
    bodies over a size limit (413) and bodies that arrive too late (408).

    Args:
        app: the ASGI app to protect.
        allowed_hosts: host names to answer (see :func:`allowed_host_names`); None: any.
        allowed_origins: web origins (``https://viewer.example:3000``) besides the server's own whose browser
            requests are answered; a request with any other ``Origin`` header (``null`` included) is refused.
            Requests without ``Origin`` (3D Slicer, scripts, the review page's server) are not affected.
            None: no origin check.
        token: the bearer token every request must carry (``Authorization: Bearer``); None: no token.
            CORS preflight requests (``OPTIONS``) need none: browsers never send credentials with them.
        body_timeout: seconds a request body may take to arrive (``408`` after that); None: no limit.
        max_body: the largest request body in bytes (``413`` above it, from ``Content-Length`` before reading, or
            while reading a body sent without one); None: no limit.
        check_port: also refuse a ``Host`` header whose port is not the one the request arrived on (the ASGI
            ``server`` of the request), as the review page does; names in ``proxy_hosts`` are exempt.
        proxy_hosts: host names of a reverse proxy in front (``--allow_host``): answered on any port, since the
            proxy's port is not this server's.

    Raises:
        ValueError: an entry of ``allowed_origins`` is not an http(s) origin.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], *, allowed_hosts: frozenset[str] | None = None,
                 allowed_origins: Iterable[str] | None = None, token: str | None = None,
                 body_timeout: float | None = None, max_body: int | None = None, check_port: bool = False,
                 proxy_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.body_timeout = None if body_timeout is None else float(body_timeout)
        if max_body is not None and int(max_body) < 1:
            raise ValueError(f"max_body must be a positive number of bytes, got {max_body}")
        self.max_body = None if max_body is None else int(max_body)
        self.check_port = bool(check_port)
        self.proxy_hosts = frozenset(n.strip("[]").lower() for n in proxy_hosts if n)
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = (None if allowed_origins is None
                                else frozenset(normalise_origin(o) for o in allowed_origins))
        self.token = token or None

    def _origin_allowed(self, origin: str | None, host: str | None) -> bool:
        if self.allowed_origins is None or origin is None or same_origin(origin, host):
            return True
        try:
            return normalise_origin(origin) in self.allowed_origins
        except ValueError:  # "null" (sandboxed frames, file:// pages) and garbage
            return False

    def _host_allowed(self, scope: Scope, header: str | None) -> bool:
        if self.allowed_hosts is None:
            return True
        try:
            if header and split_host(header)[0] in self.proxy_hosts:
                return True
        except ValueError:
            return False
        server = scope.get("server") or (None, None)
        port = server[1] if self.check_port and len(server) > 1 else None
        return host_allowed(header, self.allowed_hosts, port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self._host_allowed(scope, headers.get("host")):
            return await refuse(scope, send, 421, "unknown host name or port: this server answers only the "
                                      "names and the port it was started for", {})
        if not self._origin_allowed(headers.get("origin"), headers.get("host")):
            return await refuse(scope, send, 403, "cross-site request refused: the page's origin is not "
                                      "this server (a web viewer on another origin needs `cxrkit label serve "
                                      "--allow_origin ORIGIN`)", {})
        if (self.token and scope.get("method") != "OPTIONS"
                and not token_matches(bearer(headers.get("authorization")), self.token)):
            return await refuse(scope, send, 401, "missing or wrong bearer token (send 'Authorization: "
                                      "Bearer TOKEN'; the review page: --token or $CXRKIT_LABEL_TOKEN)",
                                      {"www-authenticate": "Bearer"})
        if scope["type"] != "http" or (self.body_timeout is None and self.max_body is None):
            return await self.app(scope, receive, send)
        if self.max_body is not None:
            declared = headers.get("content-length", "").strip()
            if declared and (not declared.isdigit() or int(declared) > self.max_body):
                return await refuse(scope, send, 413, f"the request body is larger than {self.max_body} "
                                          "bytes (the server's --max_body_mb)", {"connection": "close"})
            receive = body_limit(receive, self.max_body)
        if self.body_timeout is not None:
            receive = body_deadline(receive, self.body_timeout)
        await self._guard_body(scope, receive, send)

    async def _guard_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; a body that is late (408) or too large (413) replaces the app's own answer to it."""
        state: dict[str, Any] = {"started": False, "refused": None}

        async def checked_receive() -> Mapping[str, Any]:
            try:
                return await receive()
            except (RequestTimeout, BodyTooLarge) as exc:
                state["refused"] = exc
                raise

        async def forward(message: Mapping[str, Any]) -> None:
            if state["refused"] is not None and not state["started"]:
                return  # the app's own answer to the refusal (a 500): the client gets the 408 / 413 below
            state["started"] = state["started"] or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, checked_receive, forward)
        except Exception:
            if state["refused"] is None or state["started"]:
                raise
        refused = state["refused"]
        if refused is not None and not state["started"]:
            status = 408 if isinstance(refused, RequestTimeout) else 413
            await refuse(scope, send, status, str(refused), {"connection": "close"})


async def refuse(scope: Scope, send: Send, status: int, detail: str, extra: Mapping[str, str] | None = None) -> None:
    """Answer an ASGI request ``status`` with ``{"detail": detail}`` (a websocket: close it, code 1008)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
