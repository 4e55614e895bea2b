"""Where the repository and the real sample data are."""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["REPO", "SHARED_DATA", "RADIOGRAPHY", "shared_data"]

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
#: the radiography sample's dataset folder, under SHARED_DATA.
RADIOGRAPHY = ("radiography", "COVID-19_Radiography_Dataset")


def shared_data(*parts: str) -> Path:
    """Path under ``../shared/data``; skips the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not found at {path} (see ../shared/data/README.md)")
    return path
