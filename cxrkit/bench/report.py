"""Benchmark targets, PASS/FAIL checks, and the ``benchmark.json`` / ``benchmark.md`` outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["Target", "TARGETS", "check_targets", "markdown", "summary_lines", "write_report", "fmt"]


@dataclass(frozen=True)
class Target:
    """One performance target.

    Attributes:
        name: short id.
        description: what is required.
        value: reads the measured value from the results (``None``: not measured in this run).
        passes: whether a value meets the target.
        applies: whether the target applies to these settings (e.g. CPU at 224 px).
    """

    name: str
    description: str
    value: Callable[[Mapping[str, Any]], float | None]
    passes: Callable[[float], bool]
    applies: Callable[[Mapping[str, Any]], bool] = lambda results: True


def _get(results: Mapping[str, Any], *keys: str) -> Any:
    value: Any = results
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _on(device_type: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda r: _get(r, "settings", "device_type") == device_type


def _gpu_224(results: Mapping[str, Any]) -> bool:
    return _on("cuda")(results) and _get(results, "settings", "image_size") == 224


TARGETS: tuple[Target, ...] = (
    Target("trainer_vs_plain", "bundle trainer >= 0.95x the plain loop's images/s (CPU)",
           lambda r: _get(r, "training", "trainer_over_plain"), lambda v: v >= 0.95, _on("cpu")),
    Target("gpu_trainer_vs_plain", "bundle trainer >= 0.97x the plain loop reading the same cache (GPU)",
           lambda r: _get(r, "training", "trainer_over_plain"), lambda v: v >= 0.97, _on("cuda")),
    Target("data_wait_cached", "waiting for data < 5% of step time with the cache",
           lambda r: _get(r, "data_wait", "cached", "data_wait_share"), lambda v: v < 0.05),
    Target("data_wait_uncached", "waiting for data < 15% of step time uncached, num_workers auto (GPU)",
           lambda r: _get(r, "data_wait", "uncached", "data_wait_share"), lambda v: v < 0.15, _on("cuda")),
    Target("cpu_inference", "CPU inference >= 15 images/s at batch 16, 224 px (2 cores)",
           lambda r: _get(r, "inference", "optimized", "batch_16"), lambda v: v >= 15.0,
           lambda r: _on("cpu")(r) and _get(r, "settings", "inference_size") == 224),
    Target("gpu_training", "GPU training >= 4,000 images/s (ResNet50, 224 px, batch 256)",
           lambda r: _get(r, "training", "trainer", "images_per_s"), lambda v: v >= 4000.0,
           lambda r: _gpu_224(r) and (_get(r, "settings", "batch_size") or 0) >= 256),
    Target("whole_run", "whole run (validation, checkpoints) >= 85% of the step throughput (GPU)",
           lambda r: _get(r, "whole_run", "over_step"), lambda v: v >= 0.85, _on("cuda")),
    Target("table5_minutes", "Table 5 protocol (10 sources x 50 epochs x 5,809 images) < 15 min (GPU, 224 px)",
           lambda r: _get(r, "whole_run", "table5_estimate_min"), lambda v: v < 15.0, _gpu_224),
)


def check_targets(results: Mapping[str, Any], targets: tuple[Target, ...] = TARGETS) -> list[dict[str, Any]]:
    """Every target with its measured value and ``PASS``, ``FAIL`` or ``n/a`` (not applicable or not measured).

    Args:
        results: the measurements.
        targets: the targets (default: the speed benchmark's, :data:`TARGETS`).
    """
    rows = []
    for target in targets:
        value = target.value(results)
        if value is None or not target.applies(results):
            status = "n/a"
        else:
            status = "PASS" if target.passes(float(value)) else "FAIL"
        rows.append({"target": target.name, "description": target.description, "value": value, "status": status})
    return rows


def fmt(value: Any, digits: int = 2) -> str:
    """A measured value for a table: ``-`` for none, floats with ``digits`` decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: Mapping[str, Any]) -> str:
    """The results as Markdown tables (settings, training, data wait, inference, linear probe, targets)."""
    s = results["settings"]
    lines = [
        "# cxrkit benchmark",
        "",
        f"Machine: {s['machine']}; device {s['device']}; torch {s['torch']}; {s['threads']} threads.",
        f"Model: {s['plugin']} ({s['architecture']}), {s['image_size']} px, batch {s['batch_size']}, "
        f"{s['steps']} timed steps after {s['warmup']} warm-up steps, {s.get('rounds', 1)} alternating round(s) "
        "of trainer and plain loop; each loop's fastest round (median step within a round).",
        "",
        "## Training",
        "",
        "| loop | images/s | median step (s) | data wait |",
        "|---|---|---|---|",
    ]
    for name in ("trainer", "plain"):
        t = results["training"][name]
        lines.append(f"| {name} | {fmt(t['images_per_s'])} | {fmt(t['median_step_s'], 3)} | "
                     f"{fmt(100 * t['data_wait_share'], 1)} % |")
    lines += ["", f"trainer/plain ratio: {results['training']['trainer_over_plain']:.2f}", ""]
    if results.get("data_wait"):
        lines += ["## Waiting for data (plain loop)", "", "| loader | images/s | data wait |", "|---|---|---|"]
        for name, t in results["data_wait"].items():
            lines.append(f"| {name} | {fmt(t['images_per_s'])} | {fmt(100 * t['data_wait_share'], 1)} % |")
        lines.append("")
    if results.get("inference"):
        inf = results["inference"]
        sizes = list(next(iter(inf.values())).keys())
        lines += [f"## Inference ({s['inference_size']} px, images/s)", "",
                  "| model | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
        for name, row in inf.items():
            lines.append(f"| {name} | " + " | ".join(fmt(row[k]) for k in sizes) + " |")
        lines.append("")
    if results.get("linear_probe"):
        lp = results["linear_probe"]
        lines += ["## Linear probe vs fine-tuning (one epoch)", "",
                  "| train images | feature extraction (s, once) | probe epoch (s) | fine-tuning epoch (s) | ratio |",
                  "|---|---|---|---|---|",
                  f"| {lp['train_images']} | {fmt(lp['feature_extraction_s'])} | {fmt(lp['probe_epoch_s'], 4)} | "
                  f"{fmt(lp['finetune_epoch_s'])} | {fmt(lp['finetune_over_probe'], 1)}x |", ""]
    if results.get("whole_run"):
        w = results["whole_run"]
        lines += ["## Whole run (validation and checkpoints included)", "",
                  "| epochs | train / val images | setup (s) | cache fill (s) | first epoch (s) | later epochs (s each) "
                  "| images/s of wall time | of step throughput | Table 5 estimate (min) |",
                  "|---|---|---|---|---|---|---|---|---|",
                  f"| {w['epochs']} | {w['train_images']} / {w['val_images']} | {fmt(w['setup_s'])} | "
                  f"{fmt(w['cache_fill_s'])} | {fmt(w['first_epoch_s'])} | {fmt(w['epoch_s'], 3)} | "
                  f"{fmt(w['images_per_s'])} | {fmt(100 * w['over_step'], 1) + ' %' if 'over_step' in w else '-'} | "
                  f"{fmt(w['table5_estimate_min'])} |", ""]
    lines += ["## Targets", "", "| target | value | status |", "|---|---|---|"]
    for row in results["targets"]:
        lines.append(f"| {row['description']} | {fmt(row['value'], 3)} | {row['status']} |")
    return "\n".join(lines) + "\n"


def summary_lines(results: Mapping[str, Any]) -> list[str]:
    """The Table 5 estimate line and one ``PASS``/``FAIL`` line per applicable target (after :func:`write_report`)."""
    lines = []
    whole = results.get("whole_run")
    if whole:
        lines.append(f"Table 5 protocol estimate (10 sources x 50 epochs x 5,809 images, 80/20) on "
                     f"{results['settings']['device']}: {whole['table5_estimate_min']:.1f} min "
                     f"(whole run {whole['images_per_s']:.1f} training images/s of wall time)")
    for row in results.get("targets", ()):
        if row["status"] in ("PASS", "FAIL"):
            lines.append(f"{row['status']} {row['target']}: {fmt(row['value'], 3)} ({row['description']})")
    return lines


def write_report(results: dict[str, Any], output: str | Path) -> tuple[Path, Path]:
    """Add the target checks to ``results`` and write ``benchmark.json`` and ``benchmark.md`` into ``output``."""
    from cxrkit.atomic import atomic_write_json, atomic_write_text

    results["targets"] = check_targets(results)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_json(folder / "benchmark.json", results)
    md_path = atomic_write_text(folder / "benchmark.md", markdown(results))
    return json_path, md_path
