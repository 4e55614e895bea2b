"""Install where users are: Python 3.10 to 3.13, any torch in the supported range, exact pins only in constraints.txt.

pip keeps an installed distribution that satisfies a requirement, so a GPU user's own CUDA torch
survives ``pip install cxrkit`` exactly when cxrkit's requirement on torch admits its version.
These tests read that from the metadata (``pyproject.toml``, and the installed distribution's
``Requires-Dist`` when it was installed from this checkout); ``.ci/wheel`` shows pip doing it on
Python 3.12 with an installed torch 2.11. The code itself is checked for the oldest Python
declared with vermin and compiled by every other Python found here.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
import torch
import torchvision
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from support.paths import REPO

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
#: versions that must install beside cxrkit: the oldest tested, the GPU machine's, this machine's
TORCH = ("2.9.1", "2.11.0", "2.14.1")
TORCHVISION = ("0.24.1", "0.26.0", "0.29.1")
PINNED = {"torch": "2.14.1", "torchvision": "0.29.1", "monailabel": "0.8.5", "pydicom": "2.4.4",
          "dicomweb-client": "0.59.3", "pynetdicom": "2.1.1", "timm": "1.0.31", "safetensors": "0.8.0",
          "huggingface_hub": "2.5.0", "transformers": "5.25.0", "open_clip_torch": "3.3.0",
          "mlflow": "3.18.0", "pandas": "3.0.6"}


def _pyproject(path: Path) -> dict:
    try:
        import tomllib  # novermin - tomli on Python 3.10
    except ImportError:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _public(version: str) -> str:
    return Version(version).public  # 2.11.0+cu130 -> 2.11.0


def _check_metadata(requires_python: str, requirements: list[str]) -> None:
    """The rules for cxrkit's metadata, whether read from pyproject.toml or from an installed distribution."""
    python = SpecifierSet(requires_python)
    assert all(python.contains(v) for v in PYTHONS), f"requires-python {requires_python} excludes one of {PYTHONS}"
    assert not python.contains("3.9")
    reqs = [Requirement(r) for r in requirements]
    pinned = [str(r) for r in reqs if any(s.operator in ("==", "===") for s in r.specifier)]
    assert pinned == [], f"exact pins belong in constraints.txt, not in the metadata: {pinned}"
    by_name = {r.name: r for r in reqs if r.marker is None}
    for name, wanted, installed in (("torch", TORCH, torch.__version__),
                                    ("torchvision", TORCHVISION, torchvision.__version__)):
        spec = by_name[name].specifier
        for version in (*wanted, _public(installed)):
            assert spec.contains(version), f"{name}{spec} refuses {version}: pip would replace that torch"
    assert not by_name["torch"].specifier.contains("2.8.0")  # below what is tested
    label = [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": "label"})]
    assert {r.name for r in label} == {"monailabel", "pydicom", "dicomweb-client", "pynetdicom"}
    assert not next(r for r in label if r.name == "pydicom").specifier.contains("3.0.0")  # server fails with 3


def test_pyproject_declares_ranges_and_every_supported_python():
    project = _pyproject(REPO / "pyproject.toml")["project"]
    requirements = list(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        requirements += [f"{r}; extra == '{extra}'" for r in reqs]
    _check_metadata(project["requires-python"], requirements)
    declared = {c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.search(r"Python :: 3\.\d+$", c)}
    assert declared == set(PYTHONS)
    plugin = _pyproject(REPO / "plugins" / "cxrkit-xrv" / "pyproject.toml")["project"]
    assert all(SpecifierSet(plugin["requires-python"]).contains(v) for v in PYTHONS)
    assert not any("==" in r for r in plugin["dependencies"])


def _installed_distribution() -> metadata.Distribution | None:
    """cxrkit as pip installed it in this environment's site-packages, when built from this checkout.

    A wheel counts (its metadata is what users get), an editable install only when it is of this
    checkout; an ``egg-info`` left in a source tree is not an installation.
    """
    site = sysconfig.get_paths()["purelib"]
    dist = next(iter(metadata.distributions(name="cxrkit", path=[site])), None)
    if dist is None:
        return None
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct.get("dir_info", {}).get("editable"):
        return dist if Path(direct["url"].removeprefix("file://")).resolve() == REPO.resolve() else None
    return dist


def test_installed_metadata_keeps_an_installed_torch():
    dist = _installed_distribution()
    if dist is None:
        pytest.skip("cxrkit is not installed in this environment from this checkout (an editable install of "
                    "another checkout, or none): its metadata is not this one's")
    _check_metadata(dist.metadata["Requires-Python"], dist.requires or [])


def test_constraints_hold_the_exact_pins_and_readme_and_ci_use_them():
    lines = [ln.split("#")[0].strip() for ln in (REPO / "constraints.txt").read_text().splitlines()]
    pins = {}
    for line in filter(None, lines):
        req = Requirement(line)
        assert not req.extras, f"constraints.txt: {line}: pip refuses extras in a constraints file"
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints.txt: {line}: pin an exact version"
        pins[req.name] = spec.version
    assert pins == PINNED
    readme = (REPO / "README.md").read_text()
    setup = next(ln for ln in readme.splitlines() if ln.startswith("python3.11 -m venv .venv"))
    ci = (REPO / ".ci" / "run").read_text()
    for command in (c.strip() for c in re.findall(r"pip install [^&\n]*", setup)):
        assert "-c constraints.txt" in command, f"README set-up: {command}"
        assert command in ci, f".ci/run does not install as README says: {command}"
    for extra in ("label", "tracking"):
        command = f'pip install -c constraints.txt -e ".[{extra}]"'
        assert command in readme and command in ci, command


def _interpreters() -> dict[str, str]:
    """``{"3.10": path, ...}`` for the Pythons other than this one that run here."""
    candidates = sorted(glob.glob(os.path.join(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")),
                                               "versions", "3.1*", "bin", "python3")))
    candidates += [p for v in PYTHONS if (p := shutil.which(f"python{v}"))]
    found: dict[str, str] = {}
    for path in candidates:
        try:
            out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        version = out.stdout.strip()
        if out.returncode == 0 and version in PYTHONS and version != "%d.%d" % sys.version_info[:2]:
            found.setdefault(version, path)
    return found


SOURCES = ["cxrkit", "plugins", "tests"]


def test_code_needs_no_python_newer_than_3_10():
    pytest.importorskip("vermin", reason="pip install vermin (in the dev extra)")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "--no-tips", "--violations",
         "--target=3.10-", "--eval-annotations", *SOURCES],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"code that needs a newer Python than 3.10:\n{proc.stdout}{proc.stderr}"
    assert "Target versions not met" not in proc.stdout


def test_code_compiles_on_every_other_supported_python():
    found = _interpreters()
    if not found:
        pytest.skip(f"no other Python of {PYTHONS} here (pyenv or python3.X on PATH)")
    script = (
        "import pathlib, sys, warnings\n"
        "warnings.simplefilter('error')\n"  # a SyntaxWarning today is a SyntaxError tomorrow
        "bad = []\n"
        "for root in sys.argv[1:]:\n"
        "    for f in sorted(pathlib.Path(root).rglob('*.py')):\n"
        "        try:\n"
        "            compile(f.read_text(encoding='utf-8'), str(f), 'exec', dont_inherit=True)\n"
        "        except (SyntaxError, SyntaxWarning) as e:\n"
        "            bad.append(f'{f}: {e}')\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    for version, path in sorted(found.items()):
        proc = subprocess.run([path, "-c", script, *SOURCES], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"Python {version} ({path}):\n{proc.stdout}{proc.stderr}"
