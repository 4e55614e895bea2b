"""The clinician review page: see each prediction with its evidence, confirm or correct it, retrain.

* :class:`LabelClient` - the MONAI Label REST API (datastore, info, infer, save label);
* :class:`ReviewApp` - studies, on-demand cached predictions, Grad-CAM, saving reviews as ``final`` labels;
* :class:`ReviewServer` - the local web page (stdlib ``ThreadingHTTPServer``);
* :func:`export_reviews` - the reviews as a CSV for ``cxrkit run training ... --dataset csv``.

Command line: ``cxrkit review --server URL`` and ``cxrkit review export --server URL OUT.csv``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ExportResult",
    "LabelClient",
    "Review",
    "ReviewApp",
    "ReviewError",
    "ReviewServer",
    "Study",
    "export_reviews",
]

_LAZY = {
    "LabelClient": "cxrkit.review.client",
    "ReviewError": "cxrkit.review.client",
    "ReviewApp": "cxrkit.review.app",
    "ReviewServer": "cxrkit.review.server",
    "Review": "cxrkit.review.studies",
    "Study": "cxrkit.review.studies",
    "ExportResult": "cxrkit.review.export",
    "export_reviews": "cxrkit.review.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrkit.review' has no attribute {name!r}")
