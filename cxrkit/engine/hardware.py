"""The hardware a run uses: the torch device, CPU threads, mixed precision and the tensor memory format.

Bundle configs reach these through :mod:`cxrkit.engine.workflow` (``workflow.select_device(@device)``...);
the device spelling itself is read by :func:`cxrkit.options.device_name`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from cxrkit import options

__all__ = ["select_device", "configure_threads", "amp_enabled", "amp_kwargs", "place_network"]


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


def configure_threads(num_threads: Any = None, num_workers: Any = 0) -> int:
    """Set torch's CPU threads: ``num_threads``, or all cores less the data-loader workers.

    Returns:
        The number of threads set.

    Raises:
        ValueError: ``num_threads`` below 1 or ``num_workers`` below 0.
    """
    threads = options.integer(num_threads, "num_threads", minimum=1, allow_none=True)
    workers = options.integer(num_workers or 0, "num_workers", minimum=0)
    threads = threads or max(1, (os.cpu_count() or 1) - int(workers or 0))
    torch.set_num_threads(threads)
    return threads


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
