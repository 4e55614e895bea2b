"""Reports from run folders: the study's tables and figures with bootstrap confidence intervals.

* :func:`write_report` - one run folder -> ``report.md`` + PNGs + self-contained ``report.html``;
* :func:`write_comparison` - several run folders on one split (or k folds) -> one comparison report;
* :mod:`cxrkit.report.metrics` / :mod:`cxrkit.report.bootstrap` - the numbers (:mod:`cxrkit.metrics`; percentile bootstrap).

Submodules import matplotlib and scikit-learn; importing this package imports them lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_report", "write_comparison", "load_run", "RunFolderError"]

_LAZY = {
    "write_report": "cxrkit.report.report",
    "write_comparison": "cxrkit.report.compare",
    "load_run": "cxrkit.report.runfolder",
    "RunFolderError": "cxrkit.report.runfolder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrkit.report' has no attribute {name!r}")
