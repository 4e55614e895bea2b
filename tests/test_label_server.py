"""A real MONAI Label server (cxrkit's app) on loopback: /info/, /infer/<model>, bad requests, Grad-CAM.

Skipped when MONAI Label is not installed (``pip install -e ".[label]"``).
The server is started with ``cxrkit label serve`` (``monailabel start_server
... --conf zoo_source github``) in its own process group on a free port, and
always killed at the end.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install -e \".[label]\"")

from cxrkit.cli import main  # noqa: E402
from cxrkit.label.process import free_port  # noqa: E402
from support.label import multipart
from support.paths import shared_data

STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0
REQUEST_DEADLINE_S = 5  # --request_timeout of the server: a request's head, and its body, must arrive by then
TOKEN = "label-test-token"  # the server is started with --token: every request below carries it


def _request(url: str, data: bytes | None = None, headers: dict | None = None,
             token: str | None = TOKEN) -> tuple[int, bytes, str]:
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            return resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("content-type", "")


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """A studies folder of links to real radiographs: PNGs, a coronahack JPEG and the DX DICOM."""
    folder = tmp_path_factory.mktemp("studies")
    radiography = shared_data("radiography", "COVID-19_Radiography_Dataset")
    sources = [
        sorted((radiography / "COVID").glob("*.png"))[0],
        sorted((radiography / "Normal").glob("*.png"))[0],
        sorted(shared_data("coronahack", "Coronahack-Chest-XRay-Dataset", "Coronahack-Chest-XRay-Dataset",
                           "test").glob("*.jpeg"))[0],
        shared_data("dicom", "nih-cxr-dx-monochrome2.dcm"),
    ]
    for src in sources:
        (folder / src.name).symlink_to(src)
    (folder / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(4096))  # listed, unreadable
    return folder


@pytest.fixture(scope="module")
def server(tiny_run, studies, tmp_path_factory):  # noqa: F811 - the imported fixture
    """``cxrkit label serve`` on a free loopback port; yields the base URL; killed in any case."""
    port = free_port()
    work = tmp_path_factory.mktemp("label_app")
    log = (work / "server.log").open("wb")
    cmd = [sys.executable, "-m", "cxrkit", "label", "serve", str(tiny_run), "--studies", str(studies),
           "--port", str(port), "--host", "127.0.0.1", "--app-dir", str(work / "app"), "--token", TOKEN,
           "--request_timeout", str(REQUEST_DEADLINE_S)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MONAI_LABEL_SESSION_PATH": str(work / "sessions")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        info = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                status, body, _ = _request(f"{base}/info/")
                if status == 200:
                    info = json.loads(body)
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        if info is None or not info.get("name", "").startswith("cxrkit"):
            log.flush()
            tail = (work / "server.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"MONAI Label server not ready within {STARTUP_TIMEOUT_S:.0f} s (exit {proc.poll()}):\n{tail}")
        yield base, info
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


def _infer(base: str, model: str, image: str, params: dict | None = None, output: str = "json"):
    body, headers = multipart({"params": json.dumps(params or {})}, {})
    query = urllib.parse.urlencode({"image": image, "output": output})
    return _request(f"{base}/infer/{model}?{query}", data=body, headers=headers)


def test_label_server_classifies_like_cxrkit_predict(server, tiny_run, studies, capsys):  # noqa: F811
    base, info = server
    model = tiny_run.name
    assert list(info["models"]) == [model]
    served = info["models"][model]
    assert served["type"] == "classification" and served["labels"] == {"COVID": 0, "Normal": 1}
    assert served["dimension"] == 2

    files = sorted(p for p in studies.iterdir() if p.is_symlink())  # the server adds its own files beside them
    assert len(files) == 4
    assert main(["predict", str(tiny_run), *map(str, files), "--json", "--device", "cpu"]) == 0
    expected = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["file"] for p in expected] == list(map(str, files))
    for path, local in zip(files, expected):
        image_id = path.name.split(".")[0]  # the file name without extension
        status, body, ctype = _infer(base, model, image_id)
        assert status == 200 and "json" in ctype, body[:500]
        answer = json.loads(body)
        scores = {p["label"]: p["score"] for p in answer["prediction"]}
        assert [p["idx"] for p in answer["prediction"]] == [0, 1]
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert scores == pytest.approx(local["probabilities"], abs=1e-4), path.name
        assert answer["predicted"]["label"] == local["label"]

    # an unknown image, an upload and a corrupt datastore image are the client's mistakes: 4xx, server keeps going
    status, body, _ = _infer(base, model, "no-such-image")
    assert status == 404 and "no such image in the datastore" in json.loads(body)["detail"]
    junk, headers = multipart({"params": "{}"}, {"file": ("upload.png", np.random.default_rng(0).bytes(4096))})
    status, body, _ = _request(f"{base}/infer/{model}?output=json", data=junk, headers=headers)
    assert status == 404  # no ?image=: an upload is never read
    status, body, _ = _request(f"{base}/infer/{model}?image={files[0].stem}&output=json", data=junk, headers=headers)
    assert status == 403 and "uploads" in json.loads(body)["detail"]
    status, body, _ = _infer(base, model, "corrupt")
    assert status == 422 and "cannot be read" in json.loads(body)["detail"]
    assert "/tmp" not in json.loads(body)["detail"] and str(studies) not in json.loads(body)["detail"]
    status, _, _ = _infer(base, "no-such-model", files[0].name.split(".")[0])
    assert status == 404
    status, body, _ = _infer(base, model, files[0].name.split(".")[0])
    assert status == 200 and json.loads(body)["predicted"]["label"] == expected[0]["label"]


def test_label_server_returns_grad_cam_as_label_image(server, tiny_run, studies):  # noqa: F811
    from PIL import Image

    base, _ = server
    dicom = next(studies.glob("*.dcm"))
    status, body, ctype = _infer(base, tiny_run.name, dicom.stem, params={"cam": True}, output="image")
    assert status == 200 and ctype.startswith("image/png"), body[:300]
    cam = Image.open(io.BytesIO(body))
    assert cam.mode == "L" and cam.size == (1024, 1024)  # the original radiograph's size
    status, body, _ = _infer(base, tiny_run.name, dicom.stem, params={"cam": True}, output="json")
    answer = json.loads(body)
    assert answer["cam"]["layer"] == "backbone.layer4" and answer["cam"]["shape"] == [1024, 1024]
    assert answer["cam"]["class"] == answer["predicted"]["label"]


def test_label_server_needs_its_token_and_its_own_host_name(server, tiny_run, studies):  # noqa: F811
    import http.client

    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    status, body, _ = _request(f"{base}/info/", token=None)
    assert status == 401 and "bearer token" in json.loads(body)["detail"]
    assert _request(f"{base}/info/", token="wrong")[0] == 401
    image = next(studies.glob("*.png")).name.split(".")[0]
    status, body, _ = _infer(base, tiny_run.name, image)  # the right token (the default of _request)
    assert status == 200
    body, headers = multipart({"params": "{}"}, {})
    status, _, _ = _request(f"{base}/infer/{tiny_run.name}?image={image}", data=body, headers=headers, token=None)
    assert status == 401
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:  # DNS rebinding: a foreign name for this server gets nothing, token or not
        conn.request("GET", "/datastore/?output=all", headers={"Host": f"evil.example:{port}",
                                                               "Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 421 and image.encode() not in resp.read()
    finally:
        conn.close()
    # a page the reviewer visits, under its true name: MONAI Label's CORS allows every origin; the guard does not
    status, body, _ = _request(f"{base}/datastore/?output=all", headers={"Origin": "http://evil.example"})
    assert status == 403 and image.encode() not in body
    status, body, _ = _request(f"{base}/datastore/?output=all", headers={"Origin": base})
    assert status == 200 and image.encode() in body


def test_label_server_closes_connections_that_send_their_request_slowly(server, tiny_run, studies):  # noqa: F811
    import socket

    base, _ = server
    image = next(studies.glob("*.png")).stem  # an image of the datastore: the route is checked before the body
    port = int(base.rsplit(":", 1)[1])
    # a head that never ends: before, the connection stayed open for ever (uvicorn has no such timeout)
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(b"GET /info/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert sock.recv(1024) == b""  # closed by the server (a hang would raise socket.timeout)
    # a body that stops short: 408, the connection closed
    head = (f"POST /infer/{tiny_run.name}?image={image} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 1000\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(head + b"--b\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within" in answer
    assert _request(f"{base}/info/")[0] == 200  # and it keeps serving


def test_label_server_applies_the_runs_calibration(server, tiny_run, studies, capsys):  # noqa: F811
    """calibration.json in the run folder: the server answers calibrated scores and says so (and predict agrees)."""
    from cxrkit.calibration import Calibration, apply_temperature

    base, _ = server
    image = sorted(p for p in studies.iterdir() if p.suffix == ".png")[0]
    status, body, _ = _infer(base, tiny_run.name, image.stem)
    before = json.loads(body)
    assert status == 200 and before["calibration"]["calibrated"] is False
    file = tiny_run / "calibration.json"
    Calibration(3.0, "validation", 10, 0.9, 0.5, 0.3, 0.05).save(file)
    try:
        status, body, _ = _infer(base, tiny_run.name, image.stem)
        after = json.loads(body)
        assert status == 200 and after["calibration"]["calibrated"] is True
        assert after["calibration"]["temperature"] == 3.0 and "T = 3" in after["calibration"]["text"]
        raw = np.array([[p["score"] for p in before["prediction"]]])
        expected = apply_temperature(raw, 3.0)[0]
        assert [p["score"] for p in after["prediction"]] == pytest.approx(expected.tolist(), abs=1e-4)
        assert after["predicted"]["label"] == before["predicted"]["label"]
        assert main(["predict", str(tiny_run), str(image), "--json", "--device", "cpu"]) == 0
        local = json.loads(capsys.readouterr().out)
        assert local["calibrated"] is True and "fitted on the validation split" in local["calibration"]
        assert list(local["predictions"][0]["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-4)
    finally:
        file.unlink()
