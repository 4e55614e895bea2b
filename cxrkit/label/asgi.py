"""The ASGI app ``cxrkit label serve`` runs: MONAI Label's FastAPI app behind cxrkit's guard.

uvicorn imports it by name (``monailabel start_server --uvicorn_app
cxrkit.label.asgi:app``, see :func:`cxrkit.label.server.server_command`). The
guard (:class:`cxrkit.serve.guard.GuardMiddleware`) refuses requests whose
``Host`` is not one of ``$CXRKIT_LABEL_ALLOWED_HOSTS`` (421) and, when
``$CXRKIT_LABEL_TOKEN`` is set, requests without ``Authorization: Bearer
<token>`` (401). MONAI Label's own authentication (``MONAI_LABEL_AUTH_ENABLE``
with a Keycloak realm) still applies behind it when configured.
"""

from __future__ import annotations

import os

from monailabel.app import app as monailabel_app

from cxrkit.label.server import ALLOWED_HOSTS_ENV, TOKEN_ENV
from cxrkit.serve.guard import GuardMiddleware

__all__ = ["app"]


def _allowed_hosts() -> frozenset[str] | None:
    value = os.environ.get(ALLOWED_HOSTS_ENV, "")
    names = frozenset(n.strip().lower() for n in value.split(",") if n.strip())
    return names or None


app = GuardMiddleware(monailabel_app, allowed_hosts=_allowed_hosts(), token=os.environ.get(TOKEN_ENV) or None)
