"""Serving trained cxrkit bundles to clinicians through MONAI Label.

* ``cxrkit/label/app/`` is a MONAI Label app (``main.py`` with a
  ``MONAILabelApp`` subclass, ``lib/`` with the classification inference task)
  serving run folders as classification models, with Grad-CAM on request;
* :mod:`cxrkit.label.server` builds and runs the ``monailabel start_server``
  command line (``cxrkit label serve RUN_DIR --studies DIR``).

MONAI Label is an optional dependency (``pip install -e ".[label]"``); this
package imports it only inside the app.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_DIR", "app_dir"]

#: the MONAI Label app shipped with cxrkit.
APP_DIR = Path(__file__).resolve().parent / "app"


def app_dir() -> Path:
    """The folder of cxrkit's MONAI Label app (``main.py`` and ``lib/``)."""
    return APP_DIR
