"""A small HTTP client for the MONAI Label REST API (datastore, info, infer), on the standard library.

Only what the review page needs: list the datastore, download an image, run a
classification infer task and save a label with its ``params`` through
``PUT /datastore/label``. The bearer token (``--token``, ``$CXRKIT_LABEL_TOKEN``, or
for a server this user started on this computer its token file,
:func:`cxrkit.label.tokens.find_token`) is sent with every request.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any, Mapping
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode, urlsplit
from urllib.request import Request, urlopen

from cxrkit.label.tokens import TOKEN_ENV, find_token

__all__ = ["LabelClient", "ReviewError", "TOKEN_ENV"]

logger = logging.getLogger(__name__)


class ReviewError(RuntimeError):
    """A MONAI Label server or a review input cannot be used; the message says what to do."""


class LabelClient:
    """Talks to one MONAI Label server.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        token: bearer token (default ``$CXRKIT_LABEL_TOKEN``, else the token file of a local server started by this
            user, else none).
        timeout: seconds per request (infer calls get ``infer_timeout``).
        infer_timeout: seconds for one infer call.

    Raises:
        ReviewError: ``url`` is not an http(s) URL.
    """

    def __init__(
        self, url: str, token: str | None = None, timeout: float = 30.0, infer_timeout: float = 300.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ReviewError(f"--server {url!r} is not a MONAI Label URL; pass e.g. http://127.0.0.1:8000")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or find_token(self.url)
        self.timeout = float(timeout)
        self.infer_timeout = float(infer_timeout)

    # -- transport -------------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> tuple[bytes, str]:
        url = f"{self.url}{path}" + (f"?{urlencode(query)}" if query else "")
        where = f"{self.url}{path}"  # messages leave out the query: image ids may name patients
        headers = {"Accept": "*/*"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        request = Request(url, data=body, headers=headers, method=method)
        try:
            with urlopen(request, timeout=timeout or self.timeout) as response:  # noqa: S310 - http(s) checked
                return response.read(), response.headers.get("Content-Type", "")
        except HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            if exc.code == 401:
                raise ReviewError(
                    f"{method} {where}: HTTP {exc.code}; the MONAI Label server requires its token: pass --token (or "
                    f"set ${TOKEN_ENV}) with the token `cxrkit label serve` printed at start ({detail[:120]})"
                ) from None
            raise ReviewError(f"{method} {where}: HTTP {exc.code}: {detail}") from None
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ReviewError(
                f"cannot reach the MONAI Label server at {self.url} ({reason}); start it with "
                "`cxrkit label serve RUN_DIR --studies DIR` or fix --server"
            ) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        raw, _ = self._request(method, path, **kwargs)
        try:
            return json.loads(raw)
        except ValueError:
            raise ReviewError(f"{self.url}{path}: the answer is not JSON: {raw[:200]!r}") from None

    # -- API ---------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """``GET /info/``: the app's name, labels and models."""
        return self._json("GET", "/info/")

    def datastore(self) -> dict[str, Any]:
        """``GET /datastore/?output=all``: every image with its labels and their info."""
        return self._json("GET", "/datastore/", query={"output": "all"})

    def image(self, image_id: str) -> bytes:
        """``GET /datastore/image?image=ID``: the image file's bytes."""
        return self._request("GET", "/datastore/image", query={"image": image_id})[0]

    def infer(
        self, model: str, image_id: str, params: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], bytes | None]:
        """``POST /infer/<model>?image=ID`` with ``params``.

        MONAI Label answers with the result JSON alone, or (when the task wrote a
        label file, e.g. a Grad-CAM map) with a multipart body of ``params`` and ``image``.

        Returns:
            ``(result JSON, label file bytes or None)``.

        Raises:
            ReviewError: the call fails or the answer is not a JSON object.
        """
        body, ctype = _multipart({"params": (None, json.dumps(dict(params or {})).encode(), "application/json")})
        where = f"{self.url}/infer/{model}"
        raw, answer_type = self._request(
            "POST", f"/infer/{quote(model, safe='')}", query={"image": image_id},
            body=body, content_type=ctype, timeout=self.infer_timeout,
        )
        label: bytes | None = None
        if answer_type.startswith("multipart/"):
            parts = _parse_multipart(raw, answer_type)
            text, label = parts.get("params"), parts.get("image")
        else:
            text = raw
        try:
            answer = json.loads(text or b"null")
        except ValueError:
            raise ReviewError(f"{where}: the answer is not JSON: {(text or b'')[:200]!r}") from None
        if not isinstance(answer, dict):
            raise ReviewError(f"{where}: expected a JSON object, got {type(answer).__name__}")
        return answer, label

    def save_label(
        self, image_id: str, label: bytes, filename: str, params: Mapping[str, Any], tag: str = "final"
    ) -> dict[str, Any]:
        """``PUT /datastore/label?image=ID&tag=TAG``: the label file plus ``params`` (stored as label info)."""
        body, ctype = _multipart({
            "params": (None, json.dumps(dict(params)).encode(), "application/json"),
            "label": (filename, label, "application/octet-stream"),
        })
        return self._json(
            "PUT", "/datastore/label", query={"image": image_id, "tag": tag}, body=body, content_type=ctype
        )


def _multipart(fields: Mapping[str, tuple[str | None, bytes, str]]) -> tuple[bytes, str]:
    """Encode ``name -> (filename, data, content type)`` as ``multipart/form-data``."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, (filename, data, ctype) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks += [
            f"--{boundary}\r\n".encode(),
            f"Content-Disposition: {disposition}\r\n".encode(),
            f"Content-Type: {ctype}\r\n\r\n".encode(),
            data,
            b"\r\n",
        ]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The parts of a ``multipart/form-data`` body, by field name."""
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    )
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            parts[str(name)] = part.get_payload(decode=True) or b""
    return parts
