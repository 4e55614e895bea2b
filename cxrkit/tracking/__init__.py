"""Experiment tracking with MLflow, the MONAI way: ``--tracking mlflow`` on a training, a comparison, an evaluation.

MONAI bundles already speak MLflow: ``python -m monai.bundle run training ... --tracking mlflow`` patches
:class:`monai.handlers.MLFlowHandler` into the trainer's and the validator's handlers
(``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``), configured by the config ids ``tracking_uri``,
``experiment_name`` and ``run_name``. cxrkit's training config defines those ids and hands both handler lists
to :func:`trainer_handlers` / :func:`evaluator_handlers`, where a :class:`RunTracker` takes the handlers over:
it uses MONAI's handler for the MLflow client, the experiment and the run (``start``, ``close``), and logs
what a cxrkit run knows, every call guarded. ``cxrkit run training --tracking mlflow`` goes through the same
MONAI patch (:func:`cxrkit.bundle.runner.run_bundle` hands ``tracking`` to MONAI's ``ConfigWorkflow``).

One training is one MLflow run (named after its run folder unless ``--run_name``):

* parameters: every resolved setting (the config's ``settings``), ``weights.*`` (the weight source, its file's
  sha256 and provenance mark, from ``weights.json``), ``split_sha256`` (the split manifest's hash),
  ``versions.*`` (``versions.json``), ``max_epochs`` and ``epoch_length`` (MONAI's handler);
* metrics, step = epoch: every number of a ``metrics.json`` row, under the same name (``train_loss``,
  ``val_accuracy``, ``val_f1/COVID``, ``lr``...);
* after the test part: ``test_<metric>`` with ``test_<metric>_ci_low`` / ``_ci_high`` (95% bootstrap);
* artifacts: ``report/`` (the run's report, written then), ``models/model.pt``, ``configs/``, the run's JSON
  records and ``metrics.csv``.

The default store needs no server: ``sqlite:///<folder holding the run folder>/mlruns.db`` with artifacts in
``mlruns/`` beside it (MONAI's layout). A tracking server that is down or answers errors never costs the
training: the first failed call logs ONE warning and tracking stops for that run; the run folder is written as
always. MLflow is optional (``pip install "cxrkit[tracking]"``); it is imported only when tracking is asked for.
"""


from cxrkit.tracking.evaluation import log_external, test_metrics
from cxrkit.tracking.run import (
    EXTRA,
    HTTP_DEFAULTS,
    TRACKERS,
    TrackedRun,
    TrackingError,
    check_tracking,
    local_store,
    metric_name,
    open_run,
)
from cxrkit.tracking.training import RunTracker, evaluator_handlers, trainer_handlers

__all__ = ["TRACKERS", "EXTRA", "HTTP_DEFAULTS", "TrackingError", "check_tracking", "local_store", "metric_name",
           "TrackedRun", "open_run", "RunTracker", "trainer_handlers", "evaluator_handlers", "test_metrics",
           "log_external"]
