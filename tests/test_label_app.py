"""The MONAI Label app's bundle selection and the ``cxrkit label serve`` command line (no server started)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from support.paths import RADIOGRAPHY, shared_data

from cxrkit.cli import main
from cxrkit.label import APP_DIR
from cxrkit.label.app.lib.bundles import BundleConfigError, find_bundles, model_name
from cxrkit.label.server import DATASTORE_EXTENSIONS, LabelServerError, prepare_app, server_command, server_env


def _fake_run(folder: Path) -> Path:
    """A folder with the files that make a run servable (contents are not read here)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    for name in ("configs/inference.yaml", "configs/metadata.json", "models/model.pt"):
        (folder / name).write_text("{}")
    return folder


def test_monai_label_finds_the_app_class_in_main_py():
    """MONAI Label loads ``main.py`` from the app folder and takes the class whose direct base is MONAILabelApp."""
    pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install -e \".[label]\"")
    from monailabel.interfaces.app import MONAILabelApp
    from monailabel.utils.others.class_utils import get_class_of_subclass_from_file

    app_class = get_class_of_subclass_from_file("main", str(APP_DIR / "main.py"), "MONAILabelApp")
    assert app_class is not None and app_class.__name__ == "CXRKitApp" and MONAILabelApp in app_class.__bases__
    assert app_class.init_trainers(object.__new__(app_class)) == {}  # it serves; training is `cxrkit run`


def test_infer_task_is_a_classification_task_answering_like_the_predictor(tiny_run):
    """The task of a run folder: a classification task (no restore to the image grid), the run's classes, and
    MONAI Label's classification answer with the predicted class."""
    pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install -e \".[label]\"")
    from monailabel.interfaces.tasks.infer_v2 import InferType

    from cxrkit.label.app.lib.infers import CXRClassificationInfer

    task = CXRClassificationInfer(str(tiny_run), {})
    assert task.is_valid() and task.type == InferType.CLASSIFICATION and task.add_post_restore is False
    assert task.labels == {"COVID": 0, "Normal": 1} and task.info()["cxrkit"]["classes"] == ["COVID", "Normal"]
    image = sorted(shared_data(*RADIOGRAPHY, "Normal").glob("*.png"))[0]
    _, answer = task({"image": str(image), "device": "cpu"})
    scores = [p["score"] for p in answer["prediction"]]
    assert [p["label"] for p in answer["prediction"]] == ["COVID", "Normal"]
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert answer["predicted"]["idx"] == int(np.argmax(scores))
    with pytest.raises(Exception, match="--cam must be true or false"):  # a bad parameter is named, not ignored
        task({"image": str(image), "device": "cpu", "cam": "maybe"})


def test_find_bundles_from_conf(tmp_path):
    app = tmp_path / "app"
    named = _fake_run(app / "model" / "covid")
    run = _fake_run(tmp_path / "runs" / "inat_swav-20240101-120000")
    found = find_bundles(app, {"models": "covid", "bundles": str(run), "zoo_source": "github"})
    assert found == {"covid": named.resolve(), "inat_swav-20240101-120000": run.resolve()}
    assert find_bundles(app, {"models": "all"}) == {"covid": named.resolve()}
    assert model_name(Path("/x/my run (copy)")) == "my_run_copy"

    with pytest.raises(BundleConfigError, match="no model to serve.*--conf bundles RUN_DIR.*there: covid"):
        find_bundles(app, {})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleConfigError, match=r"--conf bundles: .*empty: not a trained cxrkit bundle"):
        find_bundles(app, {"bundles": str(empty)})
    other = _fake_run(tmp_path / "other" / "covid")
    with pytest.raises(BundleConfigError, match="two models are named 'covid'"):
        find_bundles(app, {"models": "covid", "bundles": str(other)})


def test_server_command_is_offline_and_loopback(tmp_path):
    run = _fake_run(tmp_path / "run")
    studies = tmp_path / "studies"
    studies.mkdir()
    app = prepare_app(tmp_path / "work")
    assert (app / "main.py").read_text() == (APP_DIR / "main.py").read_text()
    assert (app / "lib" / "infers.py").is_file() and (app / "model").is_dir()
    cmd = server_command([run], studies, app, port=8123)
    assert cmd[:4] == [sys.executable, "-m", "monailabel.main", "start_server"]
    pairs = list(zip(cmd, cmd[1:]))
    assert ("--host", "127.0.0.1") in pairs and ("--port", "8123") in pairs and ("--app", str(app)) in pairs
    conf = [tuple(cmd[i + 1 : i + 3]) for i, c in enumerate(cmd) if c == "--conf"]
    assert ("zoo_source", "github") in conf and ("bundles", str(run.resolve())) in conf
    env = server_env(app, base={"MONAI_LABEL_SESSION_PATH": "/keep"})
    assert json.loads(env["MONAI_LABEL_DATASTORE_FILE_EXT"]) == list(DATASTORE_EXTENSIONS)
    assert {"*.png", "*.jpg", "*.jpeg", "*.dcm"} <= set(DATASTORE_EXTENSIONS)
    assert env["MONAI_LABEL_SESSION_PATH"] == "/keep"  # the user's settings win
    with pytest.raises(LabelServerError, match="no such folder"):
        server_command([run], tmp_path / "missing", app)
    with pytest.raises(LabelServerError, match="no such run folder"):
        server_command([tmp_path / "nope"], studies, app)
    with pytest.raises(LabelServerError, match="--port must be"):
        server_command([run], studies, app, port=70000)


def test_label_cli_dry_run_and_app(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    studies = tmp_path / "studies"
    studies.mkdir()
    rc = main(["label", "serve", str(run), "--studies", str(studies), "--app-dir", str(tmp_path / "work"),
               "--port", "8124", "--dry-run"])  # the hyphenated spellings still work
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert out[0].startswith("# `serve` first copies the app") and not (tmp_path / "work").exists()
    assert out[1].startswith("export MONAI_LABEL_DATASTORE_FILE_EXT=")
    cmd = shlex.split(out[-1])
    assert cmd[1:4] == ["-m", "monailabel.main", "start_server"] and "zoo_source" in cmd
    assert main(["label", "app"]) == 0
    assert capsys.readouterr().out.strip() == str(APP_DIR)
    assert main(["label", "serve", str(run), "--studies", str(tmp_path / "missing"), "--dry-run"]) == 1
    assert "--studies" in capsys.readouterr().err


def test_serving_beyond_this_computer_needs_allow_remote_and_says_what_it_exposes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CXRKIT_LABEL_TOKEN", raising=False)
    run = _fake_run(tmp_path / "run")
    studies = tmp_path / "studies"
    studies.mkdir()
    base = ["label", "serve", str(run), "--studies", str(studies), "--app-dir", str(tmp_path / "work"), "--dry-run"]
    assert main([*base, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 would let other computers reach" in err and "every radiograph" in err
    assert "--allow_remote" in err and "--token" in err
    assert main([*base, "--host", "0.0.0.0", "--allow-remote", "--token", "s3cret"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "export CXRKIT_LABEL_TOKEN='<your token>'" in out
    hosts = next(line for line in out.splitlines() if line.startswith("export CXRKIT_LABEL_ALLOWED_HOSTS="))
    assert "127.0.0.1" in hosts and "localhost" in hosts
    cmd = shlex.split(out.strip().splitlines()[-1])
    assert ("--uvicorn_app", "cxrkit.label.asgi:app") in list(zip(cmd, cmd[1:]))
    assert ("--host", "0.0.0.0") in list(zip(cmd, cmd[1:]))
    from cxrkit.label.server import ExposureError, exposure, serve

    with pytest.raises(ExposureError):
        serve([run], studies, host="192.0.2.1")
    text = exposure("0.0.0.0", 8000, studies, ["run"])
    assert "every computer that can reach this one" in text and "Bearer" in text and "no model upload" in text
    assert "model upload and delete" in exposure("127.0.0.1", 8000, studies, ["run"], allow_admin=True)


def _asgi_call(app, method="GET", path="/info/", **headers):
    """``(status, body)`` of one HTTP request to an ASGI ``app`` (header names as keyword arguments)."""
    import asyncio

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_guard_middleware_refuses_foreign_hosts_and_missing_tokens():
    from cxrkit.serve.guard import GuardMiddleware, allowed_host_names

    calls = []

    async def inner(scope, receive, send):
        calls.append(scope["path"])
        await _ok(scope, receive, send)

    guard = GuardMiddleware(inner, allowed_hosts=allowed_host_names("127.0.0.1"), token="t0k")

    def call(method="GET", **headers):
        return _asgi_call(guard, method, **headers)

    assert call(Host="evil.example:8000", Authorization="Bearer t0k")[0] == 421
    status, body = call(Host="127.0.0.1:8000")
    assert status == 401 and b"bearer token" in body
    assert call(Host="127.0.0.1:8000", Authorization="Bearer nope")[0] == 401
    assert call(Host="localhost:8000", Authorization="Bearer t0k") == (200, b"ok")
    assert call("OPTIONS", Host="127.0.0.1:8000")[0] == 200  # CORS preflights carry no credentials
    assert calls == ["/info/", "/info/"]


def test_guard_middleware_answers_browsers_only_from_its_own_or_named_origins():
    from cxrkit.serve.guard import GuardMiddleware, allowed_host_names

    guard = GuardMiddleware(_ok, allowed_hosts=allowed_host_names("127.0.0.1"),
                            allowed_origins=["https://Viewer.example:3000/"])

    def status(method="GET", **headers):
        return _asgi_call(guard, method, "/datastore/", **headers)[0]

    host = "127.0.0.1:8000"
    assert status(Host=host) == 200  # no Origin: Slicer, scripts, the review page's server
    assert status(Host=host, Origin="http://127.0.0.1:8000") == 200  # its own page
    assert status(Host=host, Origin="http://evil.example") == 403  # a page the reviewer visits reads nothing
    assert status("POST", Host=host, Origin="http://evil.example") == 403
    assert status("OPTIONS", Host=host, Origin="http://evil.example") == 403
    assert status(Host=host, Origin="null") == 403  # sandboxed frames, file:// pages
    assert status(Host=host, Origin="https://viewer.example:3000") == 200  # named with --allow_origin
    assert status(Host=host, Origin="http://viewer.example:3000") == 403  # another scheme is another origin
    assert GuardMiddleware(_ok).allowed_origins is None
    with pytest.raises(ValueError, match="not a web origin"):
        GuardMiddleware(_ok, allowed_origins=["viewer.example"])


def test_label_serve_passes_allowed_origins_and_refuses_a_malformed_one(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    studies = tmp_path / "studies"
    studies.mkdir()
    base = ["label", "serve", str(run), "--studies", str(studies), "--app_dir", str(tmp_path / "work"), "--dry_run"]
    assert main([*base, "--allow-origin", "https://Viewer.example:3000", "--allow_origin", "http://b.example"]) == 0
    out = capsys.readouterr().out
    assert "export CXRKIT_LABEL_ALLOWED_ORIGINS=https://viewer.example:3000,http://b.example" in out
    assert main([*base, "--allow-host", "xray.hospital.example"]) == 0
    hosts = next(line for line in capsys.readouterr().out.splitlines() if "CXRKIT_LABEL_PROXY_HOSTS=" in line)
    assert "xray.hospital.example" in hosts.split("=", 1)[1].split(",")
    assert main([*base, "--allow_origin", "viewer.example"]) == 1
    err = capsys.readouterr().err
    assert "--allow_origin" in err and "not a web origin" in err
