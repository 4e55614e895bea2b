"""Experiments across weight sources: one-command comparison, linear probing on cached features, k-fold.

- :mod:`cxrkit.experiment.features`: backbone features computed once and cached on disk.
- :mod:`cxrkit.experiment.linear_probe`: train only a linear head on cached features; writes a run folder.
- :mod:`cxrkit.experiment.compare`: every chosen plugin on one split (or k folds), one comparison report.
- :mod:`cxrkit.experiment.benchmark`: epoch time of a linear probe vs fine-tuning.
"""
