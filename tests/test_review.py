"""The review page's logic and HTTP server against a real MONAI Label server serving a tiny trained bundle."""

from __future__ import annotations

import csv
import json
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest

from cxrkit.review.client import LabelClient, ReviewError, _multipart, _parse_multipart
from cxrkit.review.evidence import cam_overlay_png, parse_infer, read_image_bytes, render_png
from cxrkit.review.studies import decode_label_png, encode_label_png, parse_studies
from support.label import free_port
from support.paths import shared_data

# -- pure units --------------------------------------------------------------------------------------


def test_label_png_round_trip_and_range():
    for i in (0, 1, 7, 255):
        assert decode_label_png(encode_label_png(i)) == i
    with pytest.raises(ValueError, match="8-bit"):
        encode_label_png(256)


def test_parse_studies_reads_reviews_and_ignores_foreign_labels():
    store = {"objects": {
        "b10": {"image": {"ext": ".png", "info": {"name": "b10.png"}}, "labels": {}},
        "b2": {"image": {"ext": ".dcm", "info": {"name": "b2.dcm"}},
               "labels": {"final": {"ext": ".png", "info": {"label": "Normal", "label_index": 1, "reviewer": "ann",
                                                             "prediction": "COVID", "probability": 0.7}}}},
        "b3": {"image": {"ext": ".png", "info": {}}, "labels": {"final": {"ext": ".nii.gz", "info": {"ts": 1}}}},
    }}
    studies = parse_studies(store)
    assert [s.id for s in studies] == ["b2", "b3", "b10"]  # natural order
    assert studies[0].review.label == "Normal" and studies[0].review.agrees is False
    assert studies[1].review is None and studies[1].name == "b3.png"  # a segmentation 'final' is no review
    assert [s.status(False) for s in studies] == ["reviewed", "not yet predicted", "not yet predicted"]
    assert studies[2].status(True) == "predicted"
    with pytest.raises(ValueError, match="objects"):
        parse_studies({"total": 3})


def test_parse_infer_formats_and_errors():
    a = parse_infer({"prediction": [{"idx": 1, "label": "B", "score": 0.8}, {"idx": 0, "label": "A", "score": 0.2}]})
    assert a.classes == ["A", "B"] and a.label == "B" and a.probability == pytest.approx(0.8) and a.cam is None
    b = parse_infer({"probabilities": {"A": 0.6, "B": 0.4}, "cam": [[0.0, 2.0], [0.5, 1.0]]})
    assert b.index == 0 and b.cam.max() == 1.0  # clipped to [0, 1]
    png = encode_label_png(255)
    c = parse_infer({"classes": ["A", "B"], "probabilities": [0.1, 0.9], "cam": {"class": "B"}}, cam_png=png)
    assert c.cam.shape == (1, 1) and c.cam[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no class probabilities.*--model"):
        parse_infer({"label": "segmentation.nii.gz"}, "spleen")


def test_answer_says_whether_probabilities_are_calibrated():
    from cxrkit.review.page import _calibration_text

    rows = [{"idx": 0, "label": "A", "score": 0.3}, {"idx": 1, "label": "B", "score": 0.7}]
    text = "calibrated probabilities: temperature scaling, T = 1.7, fitted on the validation split (40 images)"
    calibrated = parse_infer({"prediction": rows, "calibration": {"calibrated": True, "text": text}})
    assert calibrated.calibration == text
    assert _calibration_text(calibrated).startswith("Calibrated probabilities: temperature scaling, T = 1.7")
    plain = parse_infer({"prediction": rows, "calibration": {"calibrated": False, "text": "as trained"}})
    assert plain.calibration is None and "not calibrated" in _calibration_text(plain)


def test_multipart_round_trip():
    body, ctype = _multipart({"params": (None, b'{"a": 1}', "application/json"),
                              "image": ("x.png", b"\x89PNG\r\n", "image/png")})
    parts = _parse_multipart(body, ctype)
    assert json.loads(parts["params"]) == {"a": 1} and parts["image"] == b"\x89PNG\r\n"


def test_render_monochrome1_dicom_and_overlay_size():
    raw = shared_data("dicom", "CR-MONO1-10-chest").read_bytes()  # no preamble, MONOCHROME1
    image = read_image_bytes(raw, "")
    from PIL import Image
    import io

    with Image.open(io.BytesIO(render_png(image, max_side=256))) as png:
        assert png.mode == "L" and max(png.size) == 256
        grey = np.asarray(png)
    assert grey.std() > 10  # a real picture, not a blank
    with Image.open(io.BytesIO(cam_overlay_png(np.linspace(0, 1, 16).reshape(4, 4), size=(40, 30)))) as ov:
        assert ov.mode == "RGBA" and ov.size == (40, 30)
        alpha = np.asarray(ov)[..., 3]
    assert alpha.min() < alpha.max()  # weak evidence is more transparent


def test_client_rejects_bad_urls_and_unreachable_servers():
    with pytest.raises(ReviewError, match="not a MONAI Label URL"):
        LabelClient("127.0.0.1:8000")
    client = LabelClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ReviewError, match="cannot reach the MONAI Label server"):
        client.datastore()


def test_cli_reports_unreachable_server(capsys):
    from cxrkit.cli import main
    assert main(["review", "--server", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "cannot reach the MONAI Label server" in capsys.readouterr().err
    assert main(["review", "export", "out.csv"]) == 1
    assert "--server URL is required" in capsys.readouterr().err


def test_client_forwards_the_bearer_token_and_explains_401(monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Auth(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            ok = self.headers.get("Authorization") == "Bearer s3cret"
            body = b'{"objects": {}}' if ok else b'{"detail": "Not authenticated"}'
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    fake = ThreadingHTTPServer(("127.0.0.1", 0), Auth)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{fake.server_address[1]}"
    try:
        monkeypatch.setenv("CXRKIT_LABEL_TOKEN", "s3cret")
        assert LabelClient(url).datastore() == {"objects": {}}
        with pytest.raises(ReviewError, match="requires its token: pass --token"):
            LabelClient(url, token="wrong").datastore()
        assert seen == ["Bearer s3cret", "Bearer wrong"]
    finally:
        fake.shutdown()
        fake.server_close()


def test_local_grad_cam_when_the_server_sends_none(tiny_run):
    from cxrkit.review.evidence import LocalExplainer

    run = tiny_run
    src = sorted(shared_data("radiography", "COVID-19_Radiography_Dataset", "Viral Pneumonia").glob("*.png"))[0]
    cam = LocalExplainer(run)(src.read_bytes(), ".png", 0)
    assert cam.shape == (256, 256) and 0.0 <= cam.min() <= cam.max() <= 1.0  # mapped back onto the 256 px image


# -- against a real MONAI Label server ----------------------------------------------------------------


@pytest.fixture
def review(label_server):
    from cxrkit.review import ReviewApp, ReviewServer

    server, run, _ = label_server
    app = ReviewApp(LabelClient(server.url), reviewer="dr-test", page_size=4)
    page = ReviewServer(app, port=0).start()
    try:
        yield app, page
    finally:
        page.stop()


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _post(page, study_id: str, body: dict, key: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{page.url}review?id={study_id}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-Review-Key": page.key if key is None else key},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_list_is_paginated_and_makes_no_predictions(review, label_server, monkeypatch):
    app, page = review

    def no_infer(*args, **kwargs):
        raise AssertionError("the list page must not run the model")

    monkeypatch.setattr(app.client, "infer", no_infer)
    status, html, _ = _get(page.url)
    html = html.decode()
    assert status == 200 and "Local-only" in html and "127.0.0.1" in html
    assert "page 1 of 2" in html and html.count("<tr data-study=") == 4  # 7 studies, 4 a page
    assert "not yet predicted" in html and not any(app.is_predicted(s.id) for s in app.studies())
    status, html2, _ = _get(page.url + "?page=2")
    assert html2.decode().count("<tr data-study=") == 3


def test_study_page_image_cam_and_review_saved_through_datastore(review, label_server):
    app, page = review
    server, _, _ = label_server
    sid = app.studies()[0].id
    status, html, _ = _get(f"{page.url}study?id={sid}")
    html = html.decode()
    assert status == 200 and 'id=prediction' in html and "%" in html and f'data-key="{page.key}"' in html
    answer = app.answer(app.study(sid)[0])
    assert answer.cam is not None  # cxrkit's app sends Grad-CAM as the label image
    for route in ("image", "cam"):
        status, png, ctype = _get(f"{page.url}{route}?id={sid}")
        assert status == 200 and ctype == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n"
    status, dcm_png, _ = _get(f"{page.url}image?id=dx-sample")  # DICOM rendered server-side
    assert status == 200 and dcm_png[:4] == b"\x89PNG"

    wrong = 1 - answer.index
    assert _post(page, sid, {"label_index": wrong}, key="forged")[0] == 403
    assert _post(page, sid, {"label_index": 9})[0] == 400
    assert _post(page, sid, {"label_index": "1"})[0] == 400
    status, body = _post(page, sid, {"label_index": wrong})
    assert status == 200 and body["review"]["label"] == answer.classes[wrong]
    label = LabelClient(server.url).datastore()["objects"][sid]["labels"]["final"]
    assert label["ext"] == ".png"
    info = label["info"]
    assert info["label"] == answer.classes[wrong] and info["label_index"] == wrong and info["reviewer"] == "dr-test"
    assert info["prediction"] == answer.label and info["model"] == app.model and "reviewed_at" in info
    _, html, _ = _get(page.url)
    assert "reviewed" in html.decode() and "dr-test" in html.decode()
    assert _get(f"{page.url}study?id=nope")[0] == 404


def test_export_reads_as_csv_dataset_and_survives_restart(review, label_server, tmp_path):
    from cxrkit.data import load_dataset
    from cxrkit.review.export import export_reviews

    app, page = review
    server, _, studies = label_server
    ids = [s.id for s in app.studies() if s.ext == ".png"][:2]
    for i, sid in enumerate(ids):
        assert _post(page, sid, {"label_index": i})[0] == 200
    # reviews live in the datastore: a freshly opened LocalDatastore (what a restarted server builds) has them
    code = ("import json, sys; from monailabel.datastore.local import LocalDatastore; "
            "d = LocalDatastore(sys.argv[1], extensions=['*.png', '*.dcm']).json(); "
            "print(json.dumps({k: v['labels'].get('final', {}).get('info') for k, v in d['objects'].items()}))")
    fresh = subprocess.run([server.python, "-c", code, str(studies)], capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    reopened = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert [reopened[sid]["label_index"] for sid in ids] == [0, 1]
    client = LabelClient(server.url)
    result = export_reviews(client, tmp_path / "out" / "reviews.csv")
    rows = list(csv.DictReader(open(result.csv)))
    by_study = {r["study"]: r for r in rows}
    assert set(ids) <= set(by_study) and result.downloaded == len(rows)
    assert all((result.csv.parent / r["image"]).is_file() for r in rows)
    spec = load_dataset("csv", result.csv)
    assert len(spec.items) == len(rows) and set(spec.classes) == {r["label"] for r in rows}
    local = export_reviews(client, tmp_path / "local.csv", studies_dir=studies)
    assert local.downloaded == 0
    assert all(r["image"].startswith(str(studies)) for r in csv.DictReader(open(local.csv)))
    with pytest.raises(ReviewError, match="not a folder"):
        export_reviews(client, tmp_path / "x.csv", studies_dir=tmp_path / "missing")


def test_cli_serves_the_page_on_loopback(label_server):
    import os
    import signal
    import sys
    from pathlib import Path

    server, _, _ = label_server
    cmd = [str(Path(sys.executable).with_name("cxrkit")), "review", "--server", server.url, "--port", "0",
           "--reviewer", "dr-cli"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    import threading

    watchdog = threading.Timer(90, lambda: os.killpg(os.getpgid(proc.pid), signal.SIGKILL))
    watchdog.start()  # bounded wait: readline returns at the latest when the watchdog kills the process
    try:
        first = proc.stdout.readline()
        assert "local only" in first and "http://127.0.0.1:" in first, first
        url = first.split()[2]
        status, html, _ = _get(url)
        assert status == 200 and "Local-only" in html.decode()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
        proc.wait(timeout=20)
