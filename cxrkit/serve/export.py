"""TorchScript export of a trained run, through MONAI's ``ckpt_export``.

:func:`export_torchscript` is the Python form of::

    python -m monai.bundle ckpt_export network_def --filepath RUN/models/model.ts \\
        --ckpt_file RUN/models/model.pt --meta_file RUN/configs/metadata.json \\
        --config_file RUN/configs/inference.yaml --bundle_root RUN

MONAI builds ``network_def`` from the inference config, loads ``model.pt``
(``weights_only=True``), converts the network with ``torch.jit.script`` (or
``torch.jit.trace`` on an input of the metadata's shape when scripting fails,
or when asked) and saves it with ``metadata.json`` and the inference config as
extra files, so the ``.ts`` file carries its class names and preprocessing.
The export is then checked: the TorchScript module and the PyTorch model must
give the same outputs.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrkit.runfolder import RunPaths
from cxrkit.serve.model import ModelLoadError, load_model

__all__ = ["ExportError", "ExportResult", "export_torchscript", "monai_command"]

logger = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The network could not be converted, or the exported module disagrees with the original."""


@dataclass
class ExportResult:
    """What :func:`export_torchscript` wrote.

    Attributes:
        path: the TorchScript file.
        method: ``"script"`` or ``"trace"``.
        max_abs_diff: largest difference between exported and original outputs on the check input
            (``None`` when not checked).
    """

    path: Path
    method: str
    max_abs_diff: float | None


def _run_folder(run_dir: str | os.PathLike) -> tuple[Path, Path, Path, Path]:
    run = RunPaths.of(run_dir)
    config, meta, ckpt = run.inference_config, run.metadata, run.model
    missing = run.missing(config, meta, ckpt)
    if not run.root.is_dir() or missing:
        problem = f"missing {', '.join(map(str, missing))}" if run.root.is_dir() else "no such folder"
        raise ModelLoadError(
            f"{run_dir}: not a trained run folder ({problem}); "
            "pass the folder `cxrkit run training` wrote (runs/<plugin>-<timestamp>)"
        )
    return run.root, config, meta, ckpt


def _input_shape(meta: Path) -> list[int]:
    spec = next(iter(json.loads(meta.read_text())["network_data_format"]["inputs"].values()))
    return [1, int(spec.get("num_channels", 3)), *(int(s) for s in spec["spatial_shape"])]


def monai_command(run_dir: str | os.PathLike, filepath: str | os.PathLike | None = None,
                  use_trace: bool = False) -> list[str]:
    """The ``python -m monai.bundle ckpt_export`` command line equivalent to :func:`export_torchscript`."""
    root, config, meta, ckpt = _run_folder(run_dir)
    target = Path(filepath) if filepath else RunPaths(root).model_ts
    cmd = ["python", "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(target),
           "--ckpt_file", str(ckpt), "--meta_file", str(meta), "--config_file", str(config),
           "--bundle_root", str(root)]
    if use_trace:
        cmd += ["--use_trace", "True", "--input_shape", json.dumps(_input_shape(meta)).replace(" ", "")]
    return cmd


def _ckpt_export(root: Path, config: Path, meta: Path, ckpt: Path, target: Path, use_trace: bool) -> None:
    from monai.bundle import ckpt_export

    kwargs = {"use_trace": True, "input_shape": _input_shape(meta)} if use_trace else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*(jit|TorchScript|parsing config).*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        ckpt_export(
            net_id="network_def",
            filepath=str(target),
            ckpt_file=str(ckpt),
            meta_file=str(meta),
            config_file=str(config),
            bundle_root=str(root),
            **kwargs,
        )


def _on_cpu(ckpt: Path, folder: Path) -> Path:
    """A copy of ``ckpt`` with CPU tensors in ``folder``: MONAI's ``ckpt_export`` reads the file where its
    tensors were saved, and a model saved on a GPU by an older cxrkit cannot be read so on a CPU-only machine."""
    from cxrkit.weights.checkpoint import open_checkpoint

    copy = folder / ckpt.name
    torch.save(open_checkpoint(ckpt), copy)  # opened safely (static scan, weights_only, onto the CPU)
    return copy


def _export_once(root: Path, config: Path, meta: Path, ckpt: Path, target: Path, use_trace: bool) -> None:
    import tempfile

    try:
        _ckpt_export(root, config, meta, ckpt, target, use_trace)
    except RuntimeError as exc:
        if "CUDA" not in str(exc) or torch.cuda.is_available():
            raise
        logger.info("%s holds GPU tensors; exporting from a CPU copy", ckpt)
        with tempfile.TemporaryDirectory(prefix="cxrkit-export-") as tmp:
            _ckpt_export(root, config, meta, _on_cpu(ckpt, Path(tmp)), target, use_trace)


def export_torchscript(
    run_dir: str | os.PathLike,
    filepath: str | os.PathLike | None = None,
    use_trace: bool | None = None,
    check: bool = True,
    atol: float = 1e-4,
) -> ExportResult:
    """Export a run's trained network to TorchScript with MONAI's ``ckpt_export``.

    Args:
        run_dir: the run folder (``configs/inference.yaml``, ``configs/metadata.json``, ``models/model.pt``).
        filepath: the file to write (default ``RUN_DIR/models/model.ts``).
        use_trace: ``True`` to trace, ``False`` to script; ``None`` scripts and falls back to tracing.
        check: compare the exported module with the PyTorch model on a random batch.
        atol: largest allowed output difference (logits) for the check.

    Returns:
        The :class:`ExportResult`.

    Raises:
        cxrkit.serve.model.ModelLoadError: not a trained run folder.
        ExportError: conversion failed, or the exported module's outputs differ.
    """
    root, config, meta, ckpt = _run_folder(run_dir)
    target = Path(filepath).expanduser().resolve() if filepath else RunPaths(root).model_ts
    target.parent.mkdir(parents=True, exist_ok=True)
    methods = ["trace"] if use_trace else ["script"] if use_trace is False else ["script", "trace"]
    errors: list[str] = []
    method = ""
    for method in methods:
        try:
            _export_once(root, config, meta, ckpt, target, use_trace=method == "trace")
            break
        except Exception as exc:  # noqa: BLE001 - torch.jit raises many kinds of errors
            logger.info("torch.jit.%s failed: %s", method, exc)
            errors.append(f"torch.jit.{method}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    else:
        raise ExportError(f"{root}: the network cannot be exported to TorchScript ({'; '.join(errors)})")
    logger.info("exported %s with torch.jit.%s", target, method)
    diff = _compare(root, target, meta, atol) if check else None
    return ExportResult(path=target, method=method, max_abs_diff=diff)


def _compare(root: Path, target: Path, meta: Path, atol: float) -> float:
    original = load_model(root, device="cpu", optimize=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        exported = torch.jit.load(str(target), map_location="cpu").eval()
    shape = _input_shape(meta)
    shape[0] = 2
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    with torch.no_grad():
        a = original.network(x)
        b = exported(x)
    diff = float((a - b).abs().max())
    if not torch.allclose(a, b, atol=atol, rtol=1e-4):
        raise ExportError(
            f"{target}: the exported module's outputs differ from models/model.pt by up to {diff:.3g} "
            f"(allowed {atol}); try the other conversion (--trace / --script)"
        )
    return diff
