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
