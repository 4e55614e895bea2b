"""Shared fixtures. Helpers without fixtures are in ``tests/support/`` (no test imports another test module).

Fixtures here: ``fake_dists`` (installed distributions with entry points), ``scratch`` / ``drop_checkpoints`` /
``tiny`` (weight files), ``weight_server`` (a loopback server the weight origins are mirrored to), ``tiny_run``
(a run trained once per session), ``weights_store`` / ``isolated`` (a private weights folder, HOME and feature
cache), ``label_server`` (a real MONAI Label server),
``shortcut_plugin`` / ``shortcut_runs`` (runs trained on synthetic sets with a known answer: the class is a
corner marker, or lives inside the lungs), ``synthetic_dataset`` (12 synthetic 32 px radiographs, a ``csv``
dataset), ``mlflow_server`` (a real MLflow tracking server on 127.0.0.1).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from support.label import LabelServer, make_studies, require_label_python
from support.mlflow import MLflowServer, require_mlflow
from support.paths import REPO, SHARED_DATA, shared_data
from support.shortcuts import plugin_registered, train_small
from support.training import synthetic_csv_dataset, train_tiny_run, write_inat_swav
from support.weights import TINY
from support.weightserver import WeightServer

__all__ = ["REPO", "SHARED_DATA", "shared_data", "FakeDistributions"]


class FakeDistributions:
    """Creates importable ``.dist-info`` distributions with entry points on ``sys.path``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        sys.path.insert(0, str(root))

    def add(self, dist: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> None:
        """Write modules and a ``<dist>-1.0.dist-info`` declaring ``entry_points``.

        Args:
            dist: distribution name.
            entry_points: ``{group: {name: "module:attr"}}``.
            modules: ``{module_name: source}`` written as top-level modules.
        """
        for mod, src in modules.items():
            (self.root / f"{mod}.py").write_text(textwrap.dedent(src))
        info = self.root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {value}" for name, value in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")

    def close(self) -> None:
        if str(self.root) in sys.path:
            sys.path.remove(str(self.root))
        for name in [m for m, mod in sys.modules.items() if str(self.root) in str(getattr(mod, "__file__", ""))]:
            del sys.modules[name]


@pytest.fixture
def fake_dists(tmp_path):
    dists = FakeDistributions(tmp_path / "site")
    yield dists
    dists.close()


# -- weight files and plugins ------------------------------------------------------------------------


def resnet18_weight_file(path: Path, seed: int = 0) -> Path:
    """A torchvision ResNet18 checkpoint (with its 1000-class ``fc``) under ``{"state_dict": ...}``, seeded."""
    import torch
    import torchvision.models as tvm

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": tvm.resnet18(weights=None).state_dict()}, path)
    return path


@pytest.fixture
def weight_plugin():
    """Register ResNet18 weight plugins for one test: ``weight_plugin(name, **WeightSource fields)``."""
    from cxrkit.registry import weights
    from cxrkit.weights import WeightSource

    names: list[str] = []

    def register(name: str, **fields) -> "WeightSource":
        fields = {"architecture": "resnet18", "filenames": ("r18.pth",), "origin": "https://example.org/r18.pth",
                  "description": "test plugin", **fields}
        source = WeightSource(name=name, **fields)
        weights.register(name, source, origin="tests")
        names.append(name)
        return source

    yield register
    for name in names:
        weights.unregister(name)


@pytest.fixture
def weight_store(tmp_path, monkeypatch):
    """An empty weights folder, with HOME and TORCH_HOME away from the real ones."""
    monkeypatch.setenv("CXRKIT_WEIGHTS_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "store"


# ---- weight files ------------------------------------------------------------------------------------------
@pytest.fixture
def scratch(tmp_path):
    """A folder whose (large) files are removed after the test."""
    yield tmp_path
    for f in tmp_path.rglob("*"):
        if f.is_file():
            f.unlink()


@pytest.fixture
def drop_checkpoints(request):
    """Remove the checkpoints a test wrote to ``tmp_path`` (pytest keeps the last runs' folders)."""
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    for f in folder.rglob("*") if folder else ():
        if f.is_file() and f.stat().st_size > 1 << 20:
            f.unlink()


@pytest.fixture
def tiny():
    """A registered ResNet18 plugin (``test_r18``, file ``r18.pth``) for fast negative and CLI tests."""
    from cxrkit.registry import weights
    from cxrkit.weights import WeightSource

    source = WeightSource(name=TINY, architecture="resnet18", filenames=("r18.pth",),
                          origin="https://example.org/r18.pth", description="test plugin")
    weights.register(TINY, source, origin="tests")
    yield source
    weights.unregister(TINY)


@pytest.fixture(scope="session")
def weights_store(tmp_path_factory) -> Path:
    """A weights folder holding a fabricated ``inat_swav`` file in its real layout (and nothing else)."""
    store = tmp_path_factory.mktemp("weights")
    write_inat_swav(store / "inat_swav")
    return store


@pytest.fixture
def isolated(tmp_path, monkeypatch, weights_store) -> Path:
    """Weights only from ``weights_store``; HOME, torch hub and the feature cache inside ``tmp_path``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home" / "torch"))
    monkeypatch.setenv("CXRKIT_WEIGHTS_DIR", str(weights_store))
    monkeypatch.setenv("CXRKIT_FEATURE_CACHE", str(tmp_path / "features"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def weight_server(weight_store, tmp_path, monkeypatch):
    """A loopback server (127.0.0.1) that origins' URLs are mirrored to (``CXRKIT_WEIGHTS_MIRROR``), with an empty
    weights folder, a private config folder (licence records) and hub cache; ``HF_ENDPOINT`` points at it too."""
    monkeypatch.setenv("CXRKIT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with WeightServer() as server:
        monkeypatch.setenv("CXRKIT_WEIGHTS_MIRROR", server.mirror)
        monkeypatch.setenv("HF_ENDPOINT", server.base)
        yield server


# ---- trained models and servers ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The session's 1-epoch 32 px run folder (trained once; shared by predict, export, label and review)."""
    return train_tiny_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def label_server(tmp_path_factory):
    """One MONAI Label server (cxrkit's app, the tiny trained run, 7 real studies) for all review tests:
    ``(server, run folder, studies folder)``; stopped at the end of the session."""
    python = require_label_python()
    run = train_tiny_run(tmp_path_factory.getbasetemp())
    work = tmp_path_factory.mktemp("review-server")
    studies = make_studies(work / "studies")
    server = LabelServer(run, studies, work, python).start()
    yield server, run, studies
    server.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (free port, SQLite backend, artifacts in a temporary folder) for one
    test module; skips without MLflow (the ``tracking`` extra)."""
    require_mlflow()
    server = MLflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


# ---- runs with a known answer (shortcut probes, reports, calibration) ---------------------------------------
@pytest.fixture
def shortcut_plugin():
    """The test-only weight plugin ``shortcut_cnn``, registered for one test (to load the shortcut runs)."""
    with plugin_registered() as name:
        yield name


@pytest.fixture(scope="session")
def shortcut_runs(tmp_path_factory):
    """``shortcut_cnn`` runs trained on the synthetic sets whose class is only a corner marker / only inside the
    lungs: ``{"marker": run_dir, "lungs": run_dir, "data": {"marker": dataset_dir, "lungs": dataset_dir}}``.

    Trained once per test session: xdist workers share the folder under a file lock. Tests that change a run
    folder copy it first.
    """
    import json
    import os

    from filelock import FileLock

    from cxrkit.audit.synthetic import make_shortcut_dataset

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one folder for all workers of THIS session
        base = base.parent
    root = base / "shortcut-runs"
    root.mkdir(exist_ok=True)
    with FileLock(str(root / ".lock")):
        done = root / "done.json"
        if not done.is_file():
            data = {s: make_shortcut_dataset(root / f"data-{s}", s, per_class=40, size=64, seed=1)
                    for s in ("marker", "lungs")}
            runs = {s: train_small(root / "bundles", data[s], root / f"run-{s}") for s in ("marker", "lungs")}
            done.write_text(json.dumps({"runs": {k: str(v) for k, v in runs.items()},
                                        "data": {k: str(v) for k, v in data.items()}}))
        record = json.loads(done.read_text())
    return {**{k: Path(v) for k, v in record["runs"].items()}, "data": {k: Path(v) for k, v in record["data"].items()}}
# ---- servers' token files -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="session")
def runtime_dir(tmp_path_factory):
    """Token files of the label servers the tests start go to a temporary folder (clients find them there)."""
    import os

    from cxrkit.label.tokens import RUNTIME_ENV

    path = tmp_path_factory.mktemp("runtime")
    old = os.environ.get(RUNTIME_ENV)
    os.environ[RUNTIME_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(RUNTIME_ENV, None)
    else:
        os.environ[RUNTIME_ENV] = old


# ---- bundles ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """12 synthetic 32 px radiographs (COVID / Normal) in a ``csv`` dataset folder, written once per session."""
    return synthetic_csv_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(autouse=True, scope="session")
def bundle_cache(tmp_path_factory):
    """Bundles rendered by plugin name (``cxrkit run training NAME``) go to a temporary folder, not ~/.cache."""
    import os

    path = tmp_path_factory.mktemp("bundle-cache")
    old = os.environ.get("CXRKIT_BUNDLE_CACHE")
    os.environ["CXRKIT_BUNDLE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CXRKIT_BUNDLE_CACHE", None)
    else:
        os.environ["CXRKIT_BUNDLE_CACHE"] = old
