"""Compare weight sources in one command: one split (or k folds), every plugin trained on it, one report.

:func:`run_comparison` does, in order:

1. checks every chosen plugin's weight file up front (``random`` never needs one); a
   plugin without its file is *skipped*, with the reason and its ``cxrkit weights fetch`` command;
2. makes the split ONCE (per fold with ``folds``) and writes it into the comparison folder
   (``split.json``, or ``split-fold<k>.json``), so every plugin trains on identical images and is
   tested on the same held-out test part (shared by every fold);
3. trains every plugin on it: fine-tuning through the plugin's MONAI bundle
   (:func:`cxrkit.bundle.runner.run_bundle` with ``--split_manifest``), or the same bundle run as a
   linear probe on cached features (:func:`cxrkit.experiment.linear_probe.run_linear_probe`); a run that
   fails is recorded as *failed* with its error and the others go on;
4. writes one comparison report (:func:`cxrkit.report.write_comparison`) and
   ``compare.json`` (what ran where, what was skipped or failed and why).

With ``tracking="mlflow"`` the comparison is one MLflow parent run (its settings, the report and
``compare.json`` as artifacts) and every training one child run of it (:mod:`cxrkit.tracking`), in
``tracking_uri`` (default: ``mlruns.db`` beside the comparison folder).

Layout of the comparison folder::

    <output_dir>/split.json                  (k-fold: split-fold0.json, split-fold1.json, ...)
    <output_dir>/runs/<plugin>[-fold<k>]/    one run folder per plugin (and fold)
    <output_dir>/comparison.md|html, *.png   the report
    <output_dir>/compare.json                plan and outcome
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cxrkit.console import bar_disable

__all__ = ["MODES", "CompareError", "CompareSettings", "PluginPlan", "RunOutcome", "ComparisonResult",
           "resolve_plugins", "plan_plugins", "make_splits", "run_comparison"]

logger = logging.getLogger(__name__)

MODES = ("finetune", "linear_probe")  # the bundles' ``mode`` values


class CompareError(ValueError):
    """A comparison that cannot start or produced no run (the message says what to change)."""


@dataclass
class CompareSettings:
    """Settings of one comparison (the ``cxrkit compare`` options).

    Attributes:
        dataset: dataset adapter name.
        dataset_dir: dataset folder.
        task: adapter task (``None``: its default).
        plugins: plugin names, or ``["all"]`` for every registered weight plugin.
        mode: ``finetune`` (the bundles) or ``linear_probe`` (cached features, linear head).
        folds: k for k-fold cross-validation (``None``: one hold-out split).
        output_dir: the comparison folder (default ``runs/compare-<dataset>-<timestamp>``).
        epochs: training epochs (default: the bundles' 50).
        image_size: input size for every plugin (default: each plugin's own).
        batch_size: batch size.
        seed: split, subset and training seed.
        weights_dir: a folder searched first for every plugin's weight file.
        max_items: use at most this many images (class-stratified).
        skip_bad_images: leave unreadable images out of the split (listed) instead of failing.
        dataset_options: the dataset adapter's options (``{"views": "PA"}``, ``{"allow_missing": True}``).
        device: ``auto``, ``cpu``, ``cuda``...
        val_fraction: validation share of a hold-out split (chooses each model's best epoch).
        test_fraction: held-out test share (the report's headline; every source, every fold shares it; 0: none).
        feature_cache: feature cache folder of the linear probe.
        bootstrap: bootstrap resamples of the report's confidence intervals.
        progress: progress bars.
        tracking: ``mlflow``: a parent run with one child per training (``None``: no tracking).
        tracking_uri: the MLflow store or server (default: ``mlruns.db`` beside the comparison folder).
        experiment_name: the MLflow experiment.
        run_name: the parent run's name (default: the comparison folder's name).
    """

    dataset: str
    dataset_dir: str
    task: str | None = None
    plugins: Sequence[str] = ("all",)
    mode: str = "finetune"
    folds: int | None = None
    output_dir: str | None = None
    epochs: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    seed: int = 0
    weights_dir: str | None = None
    max_items: int | None = None
    skip_bad_images: bool = False
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    feature_cache: str | None = None
    bootstrap: int = 1000
    progress: bool = True
    tracking: str | None = None
    tracking_uri: str | None = None
    experiment_name: str = "cxrkit"
    run_name: str | None = None

    def check(self) -> None:
        """Raise :class:`CompareError` for settings that cannot work (:class:`~cxrkit.tracking.TrackingError`:
        a tracker that is not installed)."""
        from cxrkit.tracking import check_tracking

        self.tracking = check_tracking(self.tracking)
        if self.mode not in MODES:
            raise CompareError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.folds is not None and int(self.folds) < 2:
            raise CompareError(f"--folds must be at least 2, got {self.folds}")
        for name in ("epochs", "image_size", "batch_size", "max_items"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise CompareError(f"--{name} must be a positive integer, got {value}")
        if not Path(self.dataset_dir).expanduser().is_dir():
            raise CompareError(f"--dataset_dir {self.dataset_dir}: no such folder (the dataset folder)")
        if self.weights_dir is not None and not Path(self.weights_dir).expanduser().is_dir():
            raise CompareError(f"--weights_dir {self.weights_dir}: no such folder")


@dataclass
class PluginPlan:
    """Whether a plugin can run, and with which weight file.

    Attributes:
        plugin: plugin name.
        weights_path: its weight file (``None``: none needed, or skipped).
        skipped: why it cannot run (``None``: it runs).
    """

    plugin: str
    weights_path: str | None = None
    skipped: str | None = None


@dataclass
class RunOutcome:
    """One training run of the comparison.

    Attributes:
        plugin: plugin name.
        fold: the fold (``None`` for a hold-out split).
        run_dir: the run folder.
        status: ``finished`` or ``failed``.
        error: the failure, for a failed run.
        seconds: wall time.
        cache_hit: linear probe only: whether the features came from the cache.
    """

    plugin: str
    fold: int | None
    run_dir: str
    status: str
    error: str | None = None
    seconds: float = 0.0
    cache_hit: bool | None = None


@dataclass
class ComparisonResult:
    """What :func:`run_comparison` produced.

    Attributes:
        out_dir: the comparison folder.
        report: ``comparison.md`` (``None`` when no run finished).
        splits: the split manifests written, one per fold.
        plans: the plugin plans (skipped ones included).
        runs: every run, finished or failed.
    """

    out_dir: Path
    report: Path | None
    splits: list[Path]
    plans: list[PluginPlan]
    runs: list[RunOutcome] = field(default_factory=list)

    @property
    def skipped(self) -> dict[str, str]:
        """plugin -> reason, for the plugins that were not trained."""
        return {p.plugin: p.skipped for p in self.plans if p.skipped}

    @property
    def failed(self) -> list[RunOutcome]:
        """The runs that failed."""
        return [r for r in self.runs if r.status != "finished"]


def resolve_plugins(names: Sequence[str] | str) -> list[str]:
    """``"all"`` -> every registered weight plugin; ``"a,b"`` or ``["a", "b"]`` -> those, checked to exist.

    Raises:
        CompareError: an unknown plugin name (the message lists the known ones).
    """
    from cxrkit.registry import weights

    if isinstance(names, str):
        names = [names]
    wanted = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    known = list(weights.names())
    if not wanted or wanted == ["all"]:
        return known
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise CompareError(f"unknown weight plugin(s) {', '.join(unknown)}; known: {', '.join(known)} "
                           "(`cxrkit list weights`)")
    return list(dict.fromkeys(wanted))


def plan_plugins(plugins: Sequence[str], weights_dir: str | None = None) -> list[PluginPlan]:
    """Find every plugin's weight file before any training; plugins without one are skipped.

    Args:
        plugins: plugin names.
        weights_dir: a folder searched first (plugin sub-folder, then the folder itself).
    """
    from cxrkit.weights import WeightError, get_source
    from cxrkit.weights.store import find_weight_file

    plans = []
    for name in plugins:
        source = get_source(name)
        if not source.pretrained:
            plans.append(PluginPlan(source.name))
            continue
        try:
            found = None
            if weights_dir is not None:
                try:
                    found = find_weight_file(source, weights_dir)
                except WeightError:
                    found = None
            found = found or find_weight_file(source)
            plans.append(PluginPlan(source.name, weights_path=str(found)))
        except WeightError as exc:
            looked = f" (also looked in {weights_dir})" if weights_dir else ""
            reason = (f"weight file {' or '.join(source.filenames)} not found{looked}; get it with "
                      f"`{source.fetch_command()}` (or `{source.import_command()}` for a file you have)")
            logger.info("skipping %s: %s", source.name, str(exc).splitlines()[0])
            plans.append(PluginPlan(source.name, skipped=reason))
    return plans


def make_splits(settings: CompareSettings, out_dir: Path) -> list[tuple[int | None, Path, Any]]:
    """The comparison's split(s), written into ``out_dir``: ``[(fold or None, split.json, PreparedData)]``."""
    from cxrkit.engine.prepare import prepare_data

    folds = [None] if settings.folds is None else list(range(int(settings.folds)))
    out = []
    for fold in folds:
        data = prepare_data(settings.dataset, settings.dataset_dir, settings.task, val_fraction=settings.val_fraction,
                            seed=settings.seed, max_items=settings.max_items, progress=settings.progress,
                            folds=settings.folds, fold=fold or 0, test_fraction=settings.test_fraction,
                            skip_bad_images=settings.skip_bad_images, options=dict(settings.dataset_options))
        path = out_dir / ("split.json" if fold is None else f"split-fold{fold}.json")
        data.split.save(path)
        out.append((fold, path, data))
        logger.info("split%s: %s -> %s", "" if fold is None else f" (fold {fold})", data.counts(), path)
    return out


def _overrides(plan: PluginPlan, settings: CompareSettings, split: Path, run_dir: Path) -> dict[str, Any]:
    """The bundle settings of one run: the comparison's split, data and training options."""
    overrides: dict[str, Any] = {
        "dataset": settings.dataset, "dataset_dir": str(Path(settings.dataset_dir).expanduser().resolve()),
        "split_manifest": str(split), "seed": int(settings.seed), "output_dir": str(run_dir),
        "device": settings.device, "progress": bool(settings.progress),
        "console_lines": False,  # the comparison prints one line per run instead of one per epoch
        "skip_bad_images": bool(settings.skip_bad_images), "dataset_options": dict(settings.dataset_options),
    }
    if settings.task is not None:
        overrides["task"] = settings.task
    if settings.max_items is not None:
        overrides["max_items"] = int(settings.max_items)
    for name in ("epochs", "image_size", "batch_size"):
        if getattr(settings, name) is not None:
            overrides[name] = int(getattr(settings, name))
    if plan.weights_path:
        overrides["weights_path"] = plan.weights_path
    if settings.mode == "linear_probe" and settings.feature_cache is not None:
        overrides["feature_cache"] = str(settings.feature_cache)
    return overrides


def _parent_run(settings: CompareSettings, out_dir: Path, plugins: Sequence[str]) -> Any:
    """The comparison's MLflow parent run (``None`` without tracking, or when the tracker failed: warned)."""
    from cxrkit.tracking import local_store, open_run

    if settings.tracking is None:
        return None
    settings.tracking_uri = settings.tracking_uri or local_store(out_dir)
    parent = open_run(settings.tracking_uri, settings.experiment_name, settings.run_name or out_dir.name,
                      f"the comparison {out_dir}", {"cxrkit.comparison": str(out_dir)})
    if parent.run_id is None or parent.broken:
        return None
    params = {k: v for k, v in asdict(settings).items() if k not in ("dataset_options", "plugins", "run_name")}
    params.update({"plugins": ",".join(plugins)}, **{f"dataset_options.{k}": v
                                                     for k, v in dict(settings.dataset_options).items()})
    parent.log_params(params)
    return parent


def _child_tracking(parent: Any, settings: CompareSettings, name: str) -> dict[str, Any]:
    """A training's tracking overrides: a child run of ``parent`` named ``name`` (nothing without a parent)."""
    if parent is None or parent.broken:
        return {}
    return {"tracking": settings.tracking, "tracking_uri": settings.tracking_uri,
            "experiment_name": settings.experiment_name, "run_name": name, "tracking_parent": parent.run_id}


def _close_parent(parent: Any, out_dir: Path, finished: bool) -> None:
    if parent is None:
        return
    for name in ("comparison.md", "comparison.html", "compare.json", *sorted(p.name for p in out_dir.glob("*.png"))):
        parent.log_artifact(out_dir / name)
    parent.close("FINISHED" if finished else "FAILED")


def _error_text(exc: BaseException) -> str:
    from cxrkit.bundle.runner import user_error

    cause = user_error(exc) or exc
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}".strip()


def run_comparison(settings: CompareSettings,
                   on_run: Callable[[RunOutcome], None] | None = None) -> ComparisonResult:
    """Train every chosen plugin on one split (or every fold) and write one comparison report.

    Args:
        settings: the comparison.
        on_run: called with each run's outcome as it ends (``cxrkit compare`` prints one line per run).

    Returns:
        The :class:`ComparisonResult` (report path, runs, skipped and failed plugins).

    Raises:
        CompareError: bad settings, no plugin to run, or no run finished (after writing ``compare.json``).
        cxrkit.data.DatasetError: the dataset cannot be read or split.
    """
    from tqdm.auto import tqdm

    from cxrkit.atomic import atomic_write_json
    from cxrkit.bundle import cached_bundle
    from cxrkit.bundle.runner import run_bundle
    from cxrkit.experiment.linear_probe import run_linear_probe
    from cxrkit.report import write_comparison

    settings.check()
    plugins = resolve_plugins(settings.plugins)
    plans = plan_plugins(plugins, settings.weights_dir)
    ready = [p for p in plans if not p.skipped]
    for plan in plans:
        if plan.skipped:
            logger.warning("skipping %s: %s", plan.plugin, plan.skipped)
    if not ready:
        raise CompareError("no plugin can run: " + "; ".join(f"{p.plugin}: {p.skipped}" for p in plans))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(settings.output_dir or Path("runs") / f"compare-{settings.dataset}-{stamp}").expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = make_splits(settings, out_dir)
    result = ComparisonResult(out_dir, None, [s[1] for s in splits], plans)
    parent = _parent_run(settings, out_dir, plugins)
    jobs = [(plan, fold, split, data) for fold, split, data in splits for plan in ready]
    bar = tqdm(jobs, desc=f"compare ({settings.mode})", unit="run", disable=bar_disable(settings.progress))
    for plan, fold, split, data in bar:
        bar.set_postfix_str(plan.plugin + ("" if fold is None else f" fold {fold}"))
        run_dir = out_dir / "runs" / (plan.plugin + ("" if fold is None else f"-fold{fold}"))
        started = time.perf_counter()
        outcome = RunOutcome(plan.plugin, fold, str(run_dir), "finished")
        try:
            bundle = cached_bundle(plan.plugin)
            overrides = _overrides(plan, settings, split, run_dir) | _child_tracking(parent, settings, run_dir.name)
            if settings.mode == "finetune":
                run_bundle("training", bundle, overrides)
            else:
                outcome.cache_hit = run_linear_probe(plan.plugin, overrides, bundle).cache_hit
        except Exception as exc:  # noqa: BLE001 - one plugin's failure must not stop the comparison
            outcome.status, outcome.error = "failed", _error_text(exc)
            logger.error("%s%s failed: %s", plan.plugin, "" if fold is None else f" (fold {fold})", outcome.error)
            logger.debug("run failure", exc_info=exc)
        outcome.seconds = round(time.perf_counter() - started, 3)
        result.runs.append(outcome)
        if on_run is not None:
            on_run(outcome)
        logger.info("%s: %s in %.1fs -> %s", plan.plugin, outcome.status, outcome.seconds, run_dir)

    finished = [Path(r.run_dir) for r in result.runs if r.status == "finished"]
    not_trained = dict(result.skipped)
    for run in result.failed:
        label = run.plugin + ("" if run.fold is None else f" (fold {run.fold})")
        not_trained[label] = f"run failed: {run.error} (run folder {run.run_dir})"
    if finished:
        result.report = write_comparison(finished, out_dir, bootstrap=settings.bootstrap, seed=settings.seed,
                                         skipped=not_trained)
    atomic_write_json(out_dir / "compare.json", {
        "settings": asdict(settings) | {"plugins": list(plugins)},
        "splits": [str(p) for p in result.splits],
        "skipped": result.skipped,
        "runs": [asdict(r) for r in result.runs],
        "report": str(result.report) if result.report else None,
    })
    _close_parent(parent, out_dir, bool(finished))
    if not finished:
        raise CompareError(f"every run failed; see {out_dir / 'compare.json'}: "
                           + "; ".join(f"{r.plugin}: {r.error}" for r in result.failed))
    logger.info("comparison report: %s", result.report)
    return result
