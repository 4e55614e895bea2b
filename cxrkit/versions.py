"""The library versions a run was made with (``versions.json`` of a run folder, bundle metadata)."""

from __future__ import annotations

import platform
from typing import Any

__all__ = ["library_versions"]


def library_versions(device: Any = None) -> dict[str, str]:
    """Versions of python, torch, torchvision, monai, ignite, numpy and cxrkit, and the device."""
    import ignite
    import monai
    import numpy
    import torch
    import torchvision

    import cxrkit
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "numpy": numpy.__version__,
        "cxrkit": cxrkit.__version__,
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out
