"""Shared fixtures: fake installed distributions, paths to the real samples."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path under ``../shared/data``; skips the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not found at {path} (see ../shared/data/README.md)")
    return path


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
