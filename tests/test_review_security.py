"""The review page against hostile clients: DNS rebinding, cross-site posts, slow clients, leaky errors, tokens.

The page runs against an in-memory stand-in for the MONAI Label server (the
full flow against a real one is in ``test_review.py``), on 127.0.0.1 and a free
port. Requests are written with :mod:`http.client` or raw sockets so that every
header (``Host``, ``Origin``, ``Content-Length``) is exactly what a hostile
client would send.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading

import numpy as np
import pytest
from PIL import Image

from cxrkit.review import ReviewApp, ReviewServer


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class FakeLabel:
    """What ReviewApp asks MONAI Label, answered from memory: a good study and a corrupt one."""

    url = "http://127.0.0.1:9"

    def __init__(self) -> None:
        self.saved: list[tuple] = []

    def info(self):
        return {"models": {"m": {"type": "classification"}}}

    def datastore(self):
        study = {"image": {"ext": ".png", "info": {"name": "ok.png"}}, "labels": {}}
        broken = {"image": {"ext": ".png", "info": {"name": "broken.png"}}, "labels": {}}
        return {"objects": {"ok": study, "broken": broken}}

    def image(self, image_id):
        return _png() if image_id == "ok" else b"\x00not a png at all" * 10

    def infer(self, model, image_id, params=None):
        return {"prediction": [{"idx": 0, "label": "A", "score": 0.3}, {"idx": 1, "label": "B", "score": 0.7}]}, None

    def save_label(self, image_id, data, filename, params, tag=None):
        self.saved.append((image_id, params["label"]))


@pytest.fixture
def page():
    label = FakeLabel()
    server = ReviewServer(ReviewApp(label, reviewer="dr-test"), port=0, request_timeout=1.0, max_connections=8)
    server.label = label
    server.start()
    try:
        yield server
    finally:
        server.stop()


def request(server, method, path, headers=None, body=None, host=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{server.port}")
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def post_review(server, index=1, **headers):
    body = json.dumps({"label_index": index}).encode()
    return request(server, "POST", "/review?id=ok", {"X-Review-Key": server.key, "Content-Type":
                                                     "application/json", **headers}, body)


def test_foreign_host_names_get_nothing_not_even_the_write_key(page):
    for path in ("/", "/study?id=ok", "/image?id=ok", "/healthz"):
        status, body, _ = request(page, "GET", path, host=f"evil.example:{page.port}")
        assert status == 421, (path, status)
        assert page.key.encode() not in body and b"<tr" not in body and not body.startswith(b"\x89PNG")
    assert request(page, "GET", "/", host=f"127.0.0.1:{page.port + 1}")[0] == 421  # right name, wrong port
    assert request(page, "GET", "/", host="")[0] == 421
    status, body, _ = request(page, "GET", "/study?id=ok")  # the page's own name still works
    assert status == 200 and page.key.encode() in body
    for host in (f"localhost:{page.port}", f"LOCALHOST:{page.port}"):
        assert request(page, "GET", "/healthz", host=host)[0] == 200
    body = json.dumps({"label_index": 1}).encode()
    status, _, _ = request(page, "POST", "/review?id=ok", {"X-Review-Key": page.key}, body,
                           host=f"evil.example:{page.port}")
    assert status == 421 and page.label.saved == []


def test_cross_site_posts_are_refused_even_with_the_key(page):
    own = f"http://127.0.0.1:{page.port}"
    status, body, _ = post_review(page, Origin="http://evil.example")
    assert status == 403 and b"cross-site" in body
    assert post_review(page, Referer="http://evil.example/attack.html")[0] == 403
    assert post_review(page, Origin="null")[0] == 403
    assert page.label.saved == []
    status, body, _ = post_review(page, Origin=own)
    assert status == 200 and json.loads(body)["review"]["label"] == "B"
    assert post_review(page, Referer=own + "/study?id=ok")[0] == 200
    assert request(page, "DELETE", "/review?id=ok", {"Origin": "http://evil.example"})[0] == 403
    assert request(page, "PUT", "/review?id=ok", {"Origin": own}, b"{}")[0] == 405


def test_bad_content_lengths_are_answered_at_once(page):
    key = {"X-Review-Key": page.key}
    assert request(page, "POST", "/review?id=ok", {**key, "Content-Length": "-1"}, b"")[0] == 400
    assert request(page, "POST", "/review?id=ok", {**key, "Content-Length": "abc"}, b"")[0] == 400
    assert request(page, "POST", "/review?id=ok", {**key, "Content-Length": str(1 << 20)}, b"")[0] == 413
    conn = http.client.HTTPConnection("127.0.0.1", page.port, timeout=20)
    conn.putrequest("POST", "/review?id=ok", skip_host=True)
    conn.putheader("Host", f"127.0.0.1:{page.port}")
    conn.putheader("X-Review-Key", page.key)
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()


def _silent_connection(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(b"POST /review?id=ok HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port)  # never finishes the headers
    return sock


def test_silent_clients_are_dropped_and_cannot_pile_up_threads(page):
    before = threading.active_count()
    socks = [_silent_connection(page.port) for _ in range(5)]
    try:
        for sock in socks:  # the server closes each one after its 1 s timeout (recv would wait 20 s otherwise)
            assert sock.recv(1024) == b""
    finally:
        for sock in socks:
            sock.close()
    for _ in range(100):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.05)
    assert threading.active_count() <= before
    assert request(page, "GET", "/healthz")[0] == 200


def test_connections_beyond_the_limit_are_told_to_come_back():
    server = ReviewServer(ReviewApp(FakeLabel()), port=0, request_timeout=60.0, max_connections=3).start()
    socks = [_silent_connection(server.port) for _ in range(3)]
    try:
        answers = []
        for _ in range(100):  # until the server has accepted the three silent ones
            status, body, headers = request(server, "GET", "/healthz")
            answers.append(status)
            if status == 503:
                break
            threading.Event().wait(0.05)
        assert answers[-1] == 503 and headers["Retry-After"] == "5" and b"too many open connections" in body
    finally:
        for sock in socks:
            sock.close()
    for _ in range(100):  # the slots are free again once the server sees the closed sockets
        if request(server, "GET", "/healthz")[0] == 200:
            break
        threading.Event().wait(0.05)
    assert request(server, "GET", "/healthz")[0] == 200
    server.stop()


def test_a_corrupt_study_is_a_422_without_server_paths(page):
    for path in ("/image?id=broken", "/study?id=broken"):
        status, body, _ = request(page, "GET", path)
        if path.startswith("/study"):
            assert status == 200  # the study page renders; its image request is the one that fails
            continue
        text = body.decode()
        assert status == 422 and "broken.png" in text and "cannot be read" in text
        assert "/tmp" not in text and "cxrkit-review-" not in text


def test_unexpected_errors_never_show_paths(page, monkeypatch):
    def explode(study):
        raise OSError(f"[Errno 13] Permission denied: '/srv/hospital/studies/{study.id}.png'")

    monkeypatch.setattr(page.app, "image_png", explode)
    status, body, _ = request(page, "GET", "/image?id=ok")
    assert status == 500 and b"Permission denied" in body and b"/srv" not in body and b"<path>" in body


def test_a_page_token_is_required_when_set():
    label = FakeLabel()
    server = ReviewServer(ReviewApp(label), port=0, token="s3cret-token", request_timeout=1.0).start()
    try:
        assert server.url.endswith("/?token=s3cret-token")
        status, body, _ = request(server, "GET", "/study?id=ok")
        assert status == 401 and server.key.encode() not in body
        assert request(server, "GET", "/?token=wrong")[0] == 401
        status, body, headers = request(server, "GET", "/?token=s3cret-token")
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert request(server, "GET", "/study?id=ok", {"Cookie": cookie})[0] == 200
        assert request(server, "GET", "/image?id=ok", {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert request(server, "GET", "/healthz")[0] == 200  # liveness needs no token
        assert post_review(server)[0] == 401
        assert post_review(server, Cookie=cookie)[0] == 200
    finally:
        server.stop()


def test_the_cli_serves_beyond_this_computer_only_when_told(capsys):
    from cxrkit.cli import main

    assert main(["review", "--server", "http://127.0.0.1:9", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 would let other computers open the review page" in err and "--allow_remote" in err
    assert "every study's radiograph" in err
