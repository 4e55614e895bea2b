"""The names bundle configs call as ``workflow.<name>`` / ``cxrkit.engine.workflow.<name>``.

Bundle configs (``bundles/<plugin>/configs/*.yaml``) and every run folder's
own ``configs/`` use these names, so they stay stable; each is defined in the
module that owns its concept:

* :mod:`cxrkit.options` - ``flag``, ``optional`` (reading option values);
* :mod:`cxrkit.engine.hardware` - ``select_device``, ``configure_threads``, ``configure_cudnn``,
  ``loader_workers``, ``val_batch_size``, ``amp_enabled``, ``amp_kwargs``, ``place_network``;
* :mod:`cxrkit.engine.loaders` - ``make_dataset``, ``make_loader``, ``prepare_batch``;
* :mod:`cxrkit.engine.metrics` - ``pick_metrics``, ``metric_comparator``;
* :mod:`cxrkit.data.inputs` - ``list_images``, ``IMAGE_SUFFIXES``;
* :mod:`cxrkit.runfolder` - ``model_file``, ``class_names``;
* :mod:`cxrkit.engine.settings` - ``check_settings``.

Nothing else lives here: new code imports from the owning module.
"""

from __future__ import annotations

from cxrkit.data.inputs import IMAGE_SUFFIXES, list_images
from cxrkit.engine.hardware import (
    amp_enabled,
    amp_kwargs,
    configure_cudnn,
    configure_threads,
    loader_workers,
    place_network,
    select_device,
    val_batch_size,
)
from cxrkit.engine.loaders import make_dataset, make_loader, prepare_batch
from cxrkit.engine.metrics import metric_comparator, pick_metrics
from cxrkit.engine.settings import check_settings
from cxrkit.options import flag, optional
from cxrkit.runfolder import class_names, model_file

__all__ = [
    "optional",
    "flag",
    "select_device",
    "configure_threads",
    "configure_cudnn",
    "loader_workers",
    "val_batch_size",
    "make_dataset",
    "make_loader",
    "pick_metrics",
    "metric_comparator",
    "list_images",
    "model_file",
    "class_names",
    "check_settings",
    "prepare_batch",
    "amp_enabled",
    "amp_kwargs",
    "place_network",
    "IMAGE_SUFFIXES",
]
