"""The hardware a run uses: the torch device, CPU threads, mixed precision and the tensor memory format.

Bundle configs reach these through :mod:`cxrkit.engine.workflow` (``workflow.select_device(@device)``...);
the device spelling itself is read by :func:`cxrkit.options.device_name`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from cxrkit import options

__all__ = [
    "select_device",
    "configure_threads",
    "configure_cudnn",
    "loader_workers",
    "val_batch_size",
    "amp_enabled",
    "amp_kwargs",
    "place_network",
    "MAX_AUTO_WORKERS",
    "VAL_BATCH_FACTOR",
]

#: ``num_workers: auto`` on a GPU machine: at most this many loader processes (one core stays with training).
MAX_AUTO_WORKERS = 8
#: ``val_batch_size: auto`` on a GPU: this many training batches per validation batch (no gradients kept).
VAL_BATCH_FACTOR = 4


def select_device(device: Any = "auto") -> torch.device:
    """The torch device for ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.

    Under ``torchrun`` (``LOCAL_RANK`` set) ``auto`` and ``cuda`` mean this process's GPU.

    Raises:
        ValueError: CUDA requested but not available, or an unknown device string.
    """
    if isinstance(device, torch.device):
        chosen = device
    else:
        word = options.device_name(device)
        if word in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process under torchrun
        if word == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        chosen = torch.device(word)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but CUDA is not available here; use --device cpu")
    return chosen


def _is_auto(value: Any) -> bool:
    return options.optional(value) is None or (isinstance(value, str) and value.strip().lower() == "auto")


def _on_gpu(device: Any) -> bool:
    """Whether ``device`` names a CUDA device (``auto``: whether CUDA is available); nothing is checked."""
    if isinstance(device, torch.device):
        return device.type == "cuda"
    word = options.device_name(device)
    return torch.cuda.is_available() if word == "auto" else word.startswith("cuda")


def _local_processes() -> int:
    """Training processes on this machine (``torchrun``'s ``LOCAL_WORLD_SIZE``; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def loader_workers(num_workers: Any = "auto", device: Any = "cpu") -> int:
    """Data-loader processes: a number as given, or ``auto``.

    ``auto`` is 0 on a CPU (the cores train; decoding in the main process costs
    the same and starts no processes) and, on a GPU, ``min(8, cores - 1)``
    shared by this machine's training processes (under ``torchrun``), so the
    GPU is fed while one core keeps launching its work.

    Raises:
        ValueError: not ``auto`` and not a whole number >= 0.
    """
    if _is_auto(num_workers):
        if not _on_gpu(device):
            return 0
        cores = (os.cpu_count() or 1) // _local_processes()
        return max(1, min(MAX_AUTO_WORKERS, cores - 1))
    return int(options.integer(num_workers, "num_workers", minimum=0))


def val_batch_size(value: Any = "auto", batch_size: Any = 32, device: Any = "cpu") -> int:
    """Validation batch size: a number as given, or ``auto``: ``batch_size`` on a CPU, 4 x ``batch_size`` on a GPU.

    Validation keeps no activations for a backward pass, so a GPU holds several
    training batches' worth of images at once; bigger batches mean fewer steps.

    Raises:
        ValueError: not ``auto`` and not a whole number >= 1.
    """
    size = int(options.integer(batch_size, "batch_size", minimum=1))
    if _is_auto(value):
        return size * VAL_BATCH_FACTOR if _on_gpu(device) else size
    return int(options.integer(value, "val_batch_size", minimum=1))


def configure_threads(num_threads: Any = None, num_workers: Any = 0, device: Any = "cpu") -> int:
    """Set torch's CPU threads: ``num_threads``, or all cores less the data-loader workers.

    Args:
        num_threads: threads, or nothing for "all cores less the workers".
        num_workers: the loader workers (``auto``: see :func:`loader_workers`).
        device: the run's device (resolves ``num_workers: auto``).

    Returns:
        The number of threads set.

    Raises:
        ValueError: ``num_threads`` below 1 or ``num_workers`` below 0.
    """
    threads = options.integer(num_threads, "num_threads", minimum=1, allow_none=True)
    workers = loader_workers(num_workers, device)
    threads = threads or max(1, (os.cpu_count() or 1) - workers)
    torch.set_num_threads(threads)
    return threads


def configure_cudnn(deterministic: Any = False, device: Any = "cpu") -> bool:
    """cuDNN's kernel choice for a CUDA run: autotuned (fast) unless ``deterministic``.

    MONAI's ``set_determinism`` (the run's first step) makes cuDNN deterministic
    and turns its autotuner off; on a GPU that costs speed, so unless
    ``deterministic`` is set, this turns the autotuner back on (it picks the
    fastest convolution kernels for the run's fixed input size once, in the
    first steps). CPU runs do not use cuDNN: they are exactly reproducible either way.

    Returns:
        Whether cuDNN is deterministic now.

    Raises:
        ValueError: ``deterministic`` is not a boolean spelling.
    """
    exact = options.flag(deterministic, "deterministic")
    if _on_gpu(device):
        torch.backends.cudnn.deterministic = exact
        torch.backends.cudnn.benchmark = not exact
    return exact


def amp_enabled(amp: Any, device: Any) -> bool:
    """Whether to train/infer with autocast: ``amp: auto`` means on a CUDA device; ``true`` needs CUDA.

    Raises:
        ValueError: ``amp: true`` on a CPU, or not ``auto``/``true``/``false``.
    """
    device = torch.device(device)
    on = options.auto_flag(amp, "amp", auto=device.type == "cuda")
    if on and device.type != "cuda":
        raise ValueError("--amp true needs a CUDA device; use --amp auto (mixed precision on GPU only) or false")
    return on


def amp_kwargs(amp: Any, device: Any) -> dict[str, Any]:
    """``torch.autocast`` arguments: bfloat16 where the GPU supports it (no loss scaling needed), else float16."""
    if not amp_enabled(amp, device):
        return {}
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {"dtype": torch.bfloat16 if bf16 else torch.float16}


def place_network(network: torch.nn.Module, device: Any, channels_last: Any = "auto") -> torch.nn.Module:
    """Move ``network`` to ``device``; ``channels_last`` memory format (``auto``: on CUDA, where it is faster)."""
    device = torch.device(device)
    network = network.to(device)
    if options.auto_flag(channels_last, "channels_last", auto=device.type == "cuda"):
        network = network.to(memory_format=torch.channels_last)
    return network
