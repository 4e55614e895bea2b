"""Inference speed of a classifier: plain fp32 against :func:`cxrkit.engine.inference.optimize_for_inference`."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

__all__ = ["images_per_second", "inference_speed"]


def images_per_second(model: torch.nn.Module, batch_size: int, image_size: int, *, in_channels: int = 3,
                      repeats: int = 4, device: torch.device | str = "cpu",
                      amp_kwargs: dict[str, Any] | None = None) -> float:
    """Median images/s of ``model`` on random ``(batch_size, C, image_size, image_size)`` input.

    One untimed warm-up forward pass, then ``repeats`` timed ones under
    ``torch.inference_mode``.
    """
    device = torch.device(device)
    amp_kwargs = dict(amp_kwargs or {})
    images = torch.randn(int(batch_size), int(in_channels), int(image_size), int(image_size), device=device)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, enabled=bool(amp_kwargs), **amp_kwargs):
        for index in range(int(repeats) + 1):
            start = time.perf_counter()
            model(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index:
                times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return batch_size / median


def inference_speed(model: torch.nn.Module, image_size: int, *, in_channels: int = 3,
                    batch_sizes: tuple[int, ...] = (1, 16), repeats: int = 4, device: Any = "cpu",
                    amp_kwargs: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Images/s at each batch size for the plain eval model and the optimised one.

    Returns:
        ``{"plain": {"batch_1": ..., "batch_16": ...}, "optimized": {...}}``.
    """
    from cxrkit.engine.inference import optimize_for_inference

    device = torch.device(device)
    plain = copy.deepcopy(model).to(device).eval()
    optimized = optimize_for_inference(copy.deepcopy(model).to(device))
    out: dict[str, dict[str, float]] = {}
    for name, candidate in (("plain", plain), ("optimized", optimized)):
        out[name] = {
            f"batch_{b}": round(images_per_second(candidate, b, image_size, in_channels=in_channels,
                                                  repeats=repeats if b > 1 else 3 * repeats, device=device,
                                                  amp_kwargs=amp_kwargs), 3)
            for b in batch_sizes
        }
    return out
