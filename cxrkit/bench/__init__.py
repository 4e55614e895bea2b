"""Speed benchmark: cxrkit's bundle trainer against a plain PyTorch loop, data waiting, inference, linear probe.

Run ``cxrkit bench --output_dir DIR`` (or ``python -m cxrkit.bench``); see
:mod:`cxrkit.bench.suite` for the options and ``docs/performance.md`` for
measured figures and targets.
The measurements are in :mod:`cxrkit.bench.training` and
:mod:`cxrkit.bench.inference_speed`; :mod:`cxrkit.bench.report` checks the
targets and writes ``benchmark.json`` and ``benchmark.md``.
"""

from cxrkit.bench.report import TARGETS, check_targets, write_report
from cxrkit.bench.timing import StepTimer, StepStats

__all__ = ["StepTimer", "StepStats", "TARGETS", "check_targets", "write_report"]
