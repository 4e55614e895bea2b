"""The clinicians' server against a hostile local process: no model swapped, no file written or read outside the
studies, no process started, a token on every request, bodies bounded, and SIGTERM leaves nothing running.

One real ``cxrkit label serve`` (loopback, no ``--token``: it makes one and writes its token file,
``--max_body_mb 1``) serves the tiny run on a studies folder inside a sandbox folder; every request of issue 20 is
sent to it. The last test stops it with SIGTERM. The route policy itself is also tested in process (``--allow_admin``).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install -e \".[label]\"")
psutil = pytest.importorskip("psutil", reason="psutil (a MONAI Label dependency) counts the server's processes")

from cxrkit.label.process import free_port  # noqa: E402
from cxrkit.label.routes import REVIEW_ROUTES, RoutePolicy, app_routes, review_route  # noqa: E402
from cxrkit.label.tokens import token_file  # noqa: E402
from cxrkit.serve.guard import GuardMiddleware  # noqa: E402
from support.label import call, make_studies, multipart  # noqa: E402

STARTUP_TIMEOUT_S = 120.0


def _files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links not followed) with its sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def locked(tiny_run, tmp_path_factory):
    """``cxrkit label serve`` as a clinician starts it: ``(base URL, token, process, sandbox, studies, model)``."""
    sandbox = tmp_path_factory.mktemp("sandbox")
    studies = make_studies(sandbox / "data" / "studies", per_class=2)
    (sandbox / "scratch").mkdir()
    port = free_port()
    log = (sandbox / "server.log").open("wb")
    env = {k: v for k, v in os.environ.items() if k != "CXRKIT_LABEL_TOKEN"}
    env.update(PYTHONUNBUFFERED="1", MONAI_LABEL_SESSION_PATH=str(sandbox / "app" / "sessions"))
    cmd = [sys.executable, "-m", "cxrkit", "label", "serve", str(tiny_run), "--studies", str(studies),
           "--port", str(port), "--app_dir", str(sandbox / "app"), "--max_body_mb", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, token = time.monotonic() + STARTUP_TIMEOUT_S, None
        while time.monotonic() < deadline and proc.poll() is None:
            if token is None and token_file(port).is_file():
                token = json.loads(token_file(port).read_text())["token"]
            try:
                if token and call(f"{base}/info/", token=token, timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            log.flush()
            pytest.fail(f"server not ready (exit {proc.poll()}):\n{(sandbox / 'server.log').read_text()[-3000:]}")
        yield base, token, proc, sandbox, studies, tiny_run.name
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(15)
        log.close()


def test_the_token_is_made_printed_once_and_kept_for_this_user_only(locked):
    base, token, proc, sandbox, _, _ = locked
    port = int(base.rsplit(":", 1)[1])
    assert (token_file(port).stat().st_mode & 0o777) == 0o600
    assert (sandbox / "server.log").read_text().count(token) == 1
    for method, path in [("GET", "/info/"), ("GET", "/datastore/?output=all"), ("PUT", "/datastore/label")]:
        status, body, headers = call(base + path, method, data=b"" if method != "GET" else None)
        assert status == 401 and "bearer token" in json.loads(body)["detail"], (method, path)
    assert call(f"{base}/info/", token="not-" + token)[0] == 401


def test_every_route_review_does_not_need_is_refused(locked):
    """The routes come from the installed MONAI Label's app, so an upgrade's new route is checked too."""
    from monailabel.app import app as monailabel_app

    base, token, *_ = locked
    routes = app_routes(monailabel_app)
    assert len(routes) > 40 and ("/model/{model}", frozenset({"DELETE"})) in routes
    checked = 0
    for path, methods in routes:
        url = base + path.replace("{", "").replace("}", "").replace(":path", "")
        for method in sorted(methods - {"HEAD", "OPTIONS"}) or ["GET", "POST"]:
            if review_route(method, path) is not None:
                continue
            status, body, _ = call(url, method, data=b"" if method != "GET" else None, token=token)
            assert status == 403 and "--allow_admin" in json.loads(body)["detail"], (method, path, status)
            checked += 1
    assert checked > 40


def test_no_model_is_swapped_no_file_written_and_no_process_started(locked, tiny_run):
    base, token, proc, sandbox, studies, model = locked
    model_file = tiny_run / "models" / "model.pt"
    before_model = hashlib.sha256(model_file.read_bytes()).hexdigest()
    before_files = _files(sandbox)
    before_children = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    image = sorted(studies.glob("*.png"))[0].stem
    payload, headers = multipart({}, {"file": ("x.py", b"import os  # would run at every interpreter start\n")})
    attacks = [
        ("PUT", "/datastore/image?image=..%2F..%2Fscratch%2Fsitecustomize", payload, 403),
        ("PUT", "/datastore/?image=..%2F..%2Fscratch%2Fsitecustomize", payload, 403),
        ("DELETE", f"/model/{model}", None, 403),
        ("PUT", f"/model/{model}", multipart({}, {"file": ("other.pth", b"not a model")})[0], 403),
        ("POST", f"/train/{model}", b"{}", 403),
        ("POST", "/activelearning/random", b"{}", 403),
        ("PUT", f"/datastore/label?image={image}&tag=..%2F..%2F..%2Fescaped_tag",
         multipart({"params": "{}"}, {"label": ("label.png", b"x")})[0], 400),
        ("PUT", "/datastore/label?image=..%2F..%2Fscratch%2Fx&tag=final",
         multipart({"params": "{}"}, {"label": ("label.png", b"x")})[0], 404),
        ("PUT", f"/datastore/label?image={image}&tag=final",
         multipart({"params": "{}"}, {"label": ("sitecustomize.py", b"x")})[0], 400),
        ("PUT", f"/datastore/label?image={image}&image=other&tag=final",
         multipart({"params": "{}"}, {"label": ("label.png", b"x")})[0], 400),
    ]
    for method, path, data, expected in attacks:
        send = {**headers} if data is not None else {}
        status, body, _ = call(base + path, method, data=data if data is not None else None, headers=send,
                               token=token)
        assert status == expected, (method, path, status, body[:200])
    time.sleep(1.0)  # a training or a write would have started by now
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == before_model
    after = _files(sandbox)
    added = sorted(set(after) - set(before_files))
    assert not [name for name in added if not name.startswith("app/")], added  # the app's own logs only
    assert not any("sitecustomize" in name or "escaped" in name for name in after)
    assert {p.pid for p in psutil.Process(proc.pid).children(recursive=True)} <= before_children


def test_infer_opens_datastore_images_only_and_answers_alike_whatever_exists(locked, tiny_run):
    base, token, _, sandbox, studies, model = locked
    real_elsewhere = sorted((tiny_run.parent).rglob("*.png"))[:1] or [Path(__file__)]
    answers = set()
    for image in ["/etc/shadow", "/etc/passwd", "/no/such/file.png", str(real_elsewhere[0]), "../../etc/passwd",
                  "..", "a\\b", "x\x00y", "no-such-image"]:
        query = urllib.parse.urlencode({"image": image, "output": "json"})
        body, headers = multipart({"params": "{}"}, {})
        status, answer, _ = call(f"{base}/infer/{model}?{query}", "POST", body, headers, token=token)
        answers.add((status, answer))
    assert len(answers) == 1 and next(iter(answers))[0] == 404
    image = sorted(studies.glob("*.png"))[0].stem
    for params in ({"image": "/etc/passwd"}, {"save_label": True, "label_tag": "../x"}, {"device": "cuda"}):
        body, headers = multipart({"params": json.dumps(params)}, {})
        status, answer, _ = call(f"{base}/infer/{model}?image={image}&output=json", "POST", body, headers,
                                 token=token)
        assert status == 400 and "not accepted" in json.loads(answer)["detail"], params
    body, headers = multipart({"params": json.dumps({"cam": False})}, {})
    status, answer, _ = call(f"{base}/infer/{model}?image={image}&output=json", "POST", body, headers, token=token)
    assert status == 200 and json.loads(answer)["predicted"]["label"] in ("COVID", "Normal")


def _send_raw(port: int, head: str, chunks: list[bytes]) -> bytes:
    """Send a request head, then body chunks until the server answers (a refused body is not read, and the server
    closes the connection after answering); the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0.05)[0]:  # answered already: stop sending
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:  # closed with our unread bytes in its buffer: the answer came first
            pass
        return answer


def test_bodies_over_the_limit_get_413(locked):
    base, token, _, _, studies, _ = locked
    port = int(base.rsplit(":", 1)[1])
    image = sorted(studies.glob("*.png"))[0].stem
    head = (f"PUT /datastore/label?image={image}&tag=final HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary=b\r\n")
    chunk = b"x" * 65536
    # declared too large: refused before a byte of the body is read
    answer = _send_raw(port, head + f"Content-Length: {200 * 1024 * 1024}\r\n\r\n", [])
    assert answer.startswith(b"HTTP/1.1 413") and b"larger than 1048576 bytes" in answer
    # sent in chunks, without Content-Length: counted as it arrives
    part = b'--b\r\nContent-Disposition: form-data; name="label"; filename="label.png"\r\n\r\n'
    answer = _send_raw(port, head + "Transfer-Encoding: chunked\r\n\r\n",
                       [b"%x\r\n%s\r\n" % (len(c), c) for c in [part] + [chunk] * 40])
    assert answer.startswith(b"HTTP/1.1 413")
    assert call(f"{base}/info/", token=token)[0] == 200


def test_a_host_with_another_port_is_refused(locked):
    base, token, *_ = locked
    port = int(base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for host, expected in [(f"127.0.0.1:{port + 1}", 421), (f"localhost:{port}", 200), ("127.0.0.1", 421)]:
            conn.request("GET", "/info/", headers={"Host": host, "Authorization": f"Bearer {token}"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == expected, host
    finally:
        conn.close()


def test_the_review_page_works_with_the_token_it_was_handed(locked):
    """``cxrkit review`` of the same user finds the token: list, show, infer with Grad-CAM, save a review."""
    from cxrkit.review.app import ReviewApp
    from cxrkit.review.client import LabelClient

    base, token, _, _, studies, model = locked
    client = LabelClient(base)
    assert client.token == token
    app = ReviewApp(client, reviewer="dr-lockdown")
    study = next(s for s in app.studies() if s.ext == ".png")
    assert app.image_png(study)[:4] == b"\x89PNG"
    answer = app.answer(study)
    assert answer.label in ("COVID", "Normal") and app.cam_png(study)[:4] == b"\x89PNG"
    review = app.save_review(study, answer.classes.index("Normal"))
    assert review.label == "Normal" and (studies / "labels" / "final" / f"{study.id}.png").is_file()
    assert client.datastore()["objects"][study.id]["labels"]["final"]["info"]["label"] == "Normal"


def test_sigterm_stops_the_whole_server(locked):
    """Last in this module: it stops the module's server."""
    base, token, proc, *_ = locked
    port = int(base.rsplit(":", 1)[1])
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "MONAI Label runs as a child of cxrkit label serve"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert not token_file(port).exists()


# ---- the policy in process ----------------------------------------------------------------------------------
async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _asgi(app, method: str, path: str, query: str = "", headers: dict | None = None) -> int:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


def test_the_policy_opens_review_routes_and_admin_ones_only_with_allow_admin_and_the_token():
    known = {"COVID-1", "Viral Pneumonia-3"}.__contains__
    closed = RoutePolicy(_ok, known)
    assert [_asgi(closed, m, p.replace("{model}", "run"), "image=COVID-1&tag=final") for m, p in REVIEW_ROUTES] == \
        [200] * len(REVIEW_ROUTES)
    assert _asgi(closed, "GET", "/datastore/image", "image=Viral+Pneumonia-3") == 200
    assert _asgi(closed, "DELETE", "/model/run") == 403
    assert _asgi(closed, "POST", "/infer/run/extra", "image=COVID-1") == 403
    assert _asgi(closed, "PUT", "/datastore/label", "image=COVID-1&tag=a/b") == 400
    for image in ["../COVID-1", "/etc/passwd", "COVID-2", ".hidden", ""]:
        assert _asgi(closed, "GET", "/datastore/image", f"image={urllib.parse.quote(image)}") == 404
    admin = GuardMiddleware(RoutePolicy(_ok, known, allow_admin=True), token="t0k")
    assert _asgi(admin, "DELETE", "/model/run") == 401
    assert _asgi(admin, "DELETE", "/model/run", headers={"Authorization": "Bearer t0k"}) == 200
    assert _asgi(admin, "GET", "/datastore/image", "image=..%2Fx", headers={"Authorization": "Bearer t0k"}) == 404
