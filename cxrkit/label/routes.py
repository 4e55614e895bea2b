"""Which of MONAI Label's routes the clinicians' server opens, and what their ids and tags may be.

MONAI Label's app exposes every route of its router: model upload and delete,
training, active learning, scoring, datastore uploads and deletes, logs,
sessions, batch inference, and more in each new version. Review needs five
(:data:`REVIEW_ROUTES`): the server's ``/info/``, the datastore listing, one
image's download, ``POST /infer/{model}`` on a datastore image and saving a
review label. :class:`RoutePolicy` answers every other request ``403``, unless
the server was started with ``--allow_admin`` (and even then only with the
token, which :class:`cxrkit.serve.guard.GuardMiddleware` checks first). The
policy is an allow-list: a route a MONAI Label upgrade adds is refused until
it is named here. :func:`app_routes` lists the routes of the installed
version (the tests request each one).

On the open routes, ids, tags and parameters are data, checked before MONAI
Label sees them:

* ``image`` must be the id of an image in the datastore (:func:`valid_image_id`
  first: no ``/``, ``\\``, NUL or control characters, no ``.``/``..``); any
  other value gets the same ``404`` whatever exists on disk;
* ``tag`` matches :data:`TAG_PATTERN`;
* a query parameter given twice is refused (``400``);
* infer requests carry no upload or session and only :data:`INFER_PARAMS`
  (:func:`check_infer_params`): MONAI Label would otherwise take ``image``,
  ``save_label`` or ``label_tag`` from the client's ``params``;
* a review label file has one of :data:`LABEL_SUFFIXES`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import parse_qsl

from cxrkit.serve.guard import Receive, Scope, Send, refuse

__all__ = [
    "ADMIN_ENV",
    "INFER_PARAMS",
    "LABEL_SUFFIXES",
    "REVIEW_ROUTES",
    "RouteError",
    "RoutePolicy",
    "TAG_PATTERN",
    "app_routes",
    "check_infer_params",
    "check_label_filename",
    "review_route",
    "valid_image_id",
]

#: environment variable: ``1`` opens every route of MONAI Label (``cxrkit label serve --allow_admin``).
ADMIN_ENV = "CXRKIT_LABEL_ALLOW_ADMIN"
#: the open routes: ``(method, path)``; ``{model}`` is one path segment.
REVIEW_ROUTES = (
    ("GET", "/info/"),
    ("GET", "/datastore/"),
    ("GET", "/datastore/image"),
    ("POST", "/infer/{model}"),
    ("PUT", "/datastore/label"),
)
#: the query parameters that name a datastore image, per open route.
_IMAGE_PARAM = {"/datastore/image": "image", "/infer/{model}": "image", "/datastore/label": "image"}
#: the tags a review label may be saved under.
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
#: the infer parameters a client may send (``params`` JSON keys): cxrkit's Grad-CAM switch.
INFER_PARAMS = frozenset({"cam"})
#: file types a review label may have (the review page sends a PNG).
LABEL_SUFFIXES = (".png", ".json", ".nii.gz", ".nii")
_MAX_ID = 255
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")
_NOT_FOUND = "no such image in the datastore; GET /datastore/?output=all lists them"


class RouteError(ValueError):
    """A request the clinicians' server refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = int(status)
        self.detail = detail


def valid_image_id(value: str) -> bool:
    """Whether ``value`` has the form of a datastore image id (a file name without extension, no path)."""
    return (0 < len(value) <= _MAX_ID and value not in (".", "..") and not value.startswith(".")
            and not _UNSAFE_ID.search(value))


def _template(path: str, prefix: str) -> str | None:
    """The review route ``path`` belongs to (``/infer/x`` -> ``/infer/{model}``), or None."""
    if prefix and not path.startswith(prefix):
        return None
    rest = path[len(prefix):]
    if rest.startswith("/infer/") and rest.count("/") == 2 and len(rest) > len("/infer/"):
        return "/infer/{model}"
    return rest


def review_route(method: str, path: str, prefix: str = "") -> str | None:
    """The open route ``(method, path)`` is, as its template; None for every other request.

    ``HEAD`` and ``OPTIONS`` (CORS preflight) count as the route's own method only for ``GET`` routes and for
    preflights of any open route.
    """
    template = _template(path, prefix)
    for allowed, route in REVIEW_ROUTES:
        if route == template and (method == allowed or method == "OPTIONS" or (method, allowed) == ("HEAD", "GET")):
            return route
    return None


def check_infer_params(params: str | None) -> dict[str, Any]:
    """The ``params`` form field of an infer request, parsed and checked against :data:`INFER_PARAMS`.

    Raises:
        RouteError: 400 when it is not a JSON object or names another key.
    """
    try:
        value = json.loads(params) if params else {}
    except ValueError:
        raise RouteError(400, "params must be a JSON object, e.g. {\"cam\": true}") from None
    if not isinstance(value, dict):
        raise RouteError(400, "params must be a JSON object, e.g. {\"cam\": true}")
    unknown = sorted(str(k) for k in value if k not in INFER_PARAMS)
    if unknown:
        raise RouteError(400, f"infer params {', '.join(unknown)} are not accepted here; allowed: "
                         f"{', '.join(sorted(INFER_PARAMS))}")
    return value


def check_label_filename(filename: str | None) -> str:
    """The file type of an uploaded review label (one of :data:`LABEL_SUFFIXES`).

    Raises:
        RouteError: 400 for any other name.
    """
    name = (filename or "").lower()
    for suffix in LABEL_SUFFIXES:
        if name.endswith(suffix) and "/" not in name and "\\" not in name:
            return suffix
    raise RouteError(400, f"a review label must be a {', '.join(LABEL_SUFFIXES)} file with a plain file name")


def app_routes(app: Any) -> list[tuple[str, frozenset[str]]]:
    """Every route of a Starlette / FastAPI app: ``(path, methods)``; a mount is ``(prefix + "/{path}", {})``.

    Walks included routers of any FastAPI version (``route.original_router`` with its include prefix in newer
    ones, flattened ``APIRoute`` objects in older ones).
    """
    found: list[tuple[str, frozenset[str]]] = []

    def walk(routes: Iterable[Any], prefix: str) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                context = getattr(route, "include_context", None)
                walk(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
            elif getattr(route, "methods", None):
                found.append((prefix + route.path, frozenset(route.methods)))
            elif hasattr(route, "path"):  # a Mount, or a route that takes every method
                found.append((prefix + route.path.rstrip("/") + "/{path}", frozenset()))

    walk(getattr(app, "routes", []), "")
    return found


class RoutePolicy:
    """ASGI middleware: only :data:`REVIEW_ROUTES`, with their ids and tags checked, unless ``allow_admin``.

    Args:
        app: MONAI Label's ASGI app.
        known_image: whether an image id is in the datastore (called only for ids of a valid form).
        allow_admin: open every route (``--allow_admin``); ids and tags of the review routes are still checked.
        prefix: MONAI Label's API prefix (``MONAI_LABEL_API_STR``, empty by default).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], known_image: Callable[[str], bool], *,
                 allow_admin: bool = False, prefix: str = "") -> None:
        if not callable(known_image):
            raise TypeError("known_image must be a function of an image id")
        self.app = app
        self.known_image = known_image
        self.allow_admin = bool(allow_admin)
        self.prefix = prefix.rstrip("/")

    def check(self, method: str, path: str, query: str) -> None:
        """Refuse a request the clinicians' server does not answer.

        Raises:
            RouteError: 403 for a route review does not need (without ``allow_admin``), 400 for a repeated query
                parameter or a bad tag, 404 for an image id that is not in the datastore.
        """
        route = review_route(method, path, self.prefix)
        if route is None:
            if self.allow_admin:
                return
            raise RouteError(403, f"{method} {path} is not open on this server: it serves review only (list, "
                             "show, infer, save a review). Start it with --allow_admin to open MONAI Label's "
                             "other routes to token holders")
        pairs = parse_qsl(query, keep_blank_values=True)
        names = [name for name, _ in pairs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise RouteError(400, f"query parameter {', '.join(repeated)} given more than once")
        values = dict(pairs)
        key = _IMAGE_PARAM.get(route)
        if key is not None and method != "OPTIONS":
            image = values.get(key, "")
            if not (valid_image_id(image) and self.known_image(image)):
                raise RouteError(404, _NOT_FOUND)
        if route == "/datastore/label" and method == "PUT" and not TAG_PATTERN.fullmatch(values.get("tag", "")):
            raise RouteError(400, f"tag must match {TAG_PATTERN.pattern} (e.g. final)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        try:
            self.check(scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET", scope["path"],
                       scope.get("query_string", b"").decode("latin-1"))
        except RouteError as exc:
            return await refuse(scope, send, exc.status, exc.detail)
        await self.app(scope, receive, send)

