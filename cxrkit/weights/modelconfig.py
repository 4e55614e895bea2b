"""The configuration file some sources publish beside their weights (transformers' ``config.json``).

A weight source with ``config_file`` names the values of that file that must
agree with the backbone the weights are loaded into (``config_fields``: dotted
key, backbone attribute). The weights' shapes are verified tensor by tensor
elsewhere; what shapes cannot show (the number of attention heads, the patch
size of a file whose first convolution was adapted, the native image size) is
checked here. A config that disagrees is a one-line error naming the file, the
key, its value and what the weights are; a file without a config beside it is
loaded on its shapes alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch.nn as nn

from cxrkit.weights.errors import WeightMismatchError
from cxrkit.weights.source import WeightSource

__all__ = ["check_model_config"]

logger = logging.getLogger(__name__)

_MISSING = object()


def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return _MISSING
        config = config[part]
    return config


def _expected(backbone: nn.Module, attribute: str) -> Any:
    for owner in (getattr(backbone, "config", None), backbone):
        if owner is not None and hasattr(owner, attribute):
            return getattr(owner, attribute)
    return _MISSING


def check_model_config(source: WeightSource, weight_file: Path, backbone: nn.Module) -> Path | None:
    """Check ``source.config_file`` beside ``weight_file`` against ``backbone``.

    Returns:
        The config file checked, or ``None`` (the source has none, or none lies beside the weights).

    Raises:
        WeightMismatchError: the config is not JSON, or a value disagrees with the backbone.
    """
    if not source.config_file:
        return None
    path = Path(weight_file).with_name(source.config_file)
    if not path.is_file():
        logger.info("plugin %s: no %s beside %s; the weights are checked on their shapes alone",
                    source.name, source.config_file, weight_file)
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightMismatchError(f"{path}: not a readable JSON configuration ({exc}).") from exc
    for key, attribute in source.config_fields:
        value = _lookup(config, key)
        want = _expected(backbone, attribute)
        if value is _MISSING or want is _MISSING:
            continue
        if value != want:
            raise WeightMismatchError(
                f"{path}: {key} is {value!r}, but the weights {weight_file.name} fit plugin '{source.name}' "
                f"({source.architecture}) with {key} {want!r}; this config belongs to another model.")
    return path
