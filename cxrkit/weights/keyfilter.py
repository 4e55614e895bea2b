"""The key filter: from whatever a checkpoint file holds to the backbone's state-dict keys.

See :mod:`cxrkit.weights.source` for the order of the steps. Heads are dropped by
exact prefix (``fc.`` drops ``fc.weight`` but never ``layer1.0.fc.weight``), and
prefixes are stripped longest first, so MoCo's ``module.encoder_q.conv1.weight``
becomes ``conv1.weight`` while its momentum encoder ``module.encoder_k.*`` becomes
``encoder_k.*`` and is dropped by the ``encoder_k.`` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxrkit.weights.errors import WeightError, WeightMismatchError
from cxrkit.weights.source import WeightSource

__all__ = ["FilteredWeights", "extract_state_dict", "apply_key_filter", "strip_prefix"]

_MAX_DEPTH = 3


@dataclass
class FilteredWeights:
    """The outcome of the key filter.

    Attributes:
        state_dict: backbone-keyed tensors.
        raw: the tensors as found in the file (container unwrapped, keys untouched).
        container: the wrapper key path (``"state_dict"``), or ``""`` for a flat dict.
        metadata_keys: non-weight top-level keys of the file (``epoch``, ``optimizer``...).
        dropped: original keys dropped as heads or training-only state.
    """

    state_dict: dict[str, torch.Tensor]
    raw: dict[str, Any]
    container: str = ""
    metadata_keys: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _tensor_count(mapping: Mapping) -> int:
    return sum(isinstance(v, torch.Tensor) for v in mapping.values())


def extract_state_dict(obj: Any, source: WeightSource, path: str | Path) -> tuple[dict[str, Any], str, list[str]]:
    """Find the state dict inside a loaded checkpoint.

    Args:
        obj: what :func:`~cxrkit.weights.checkpoint.open_checkpoint` returned.
        source: provides ``container_keys``.
        path: the file, for messages.

    Returns:
        ``(state_dict, container path, top-level metadata keys)``.

    Raises:
        WeightMismatchError: no state dict in the file; the message lists its top-level keys.
    """
    if isinstance(obj, torch.nn.Module):  # a pickled model (only reachable with trust=True)
        return dict(obj.state_dict()), "<nn.Module>", []
    if not isinstance(obj, Mapping):
        raise WeightMismatchError(
            f"{path}: holds a {type(obj).__name__}, not a dict of tensors; cannot find weights in it."
        )
    top_meta = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    trail: list[str] = []
    current: Mapping = obj
    for _ in range(_MAX_DEPTH):  # descend while a container key holds a dict ({"state_dict": {...}})
        key = next((k for k in source.container_keys if isinstance(current.get(k), Mapping)), None)
        if key is None:
            break
        trail.append(key)
        current = current[key]
    if not _tensor_count(current):
        keys = ", ".join(map(str, list(current)[:12])) or "(none)"
        raise WeightMismatchError(
            f"{path}: no tensors found for plugin '{source.name}'. Expected a flat dict of tensors or one "
            f"under {', '.join(repr(k) for k in source.container_keys)}; the file's keys are: {keys}."
        )
    state = {str(k): v for k, v in current.items()}
    if trail:
        top_meta = [k for k in top_meta if k != trail[0]]
    else:
        top_meta = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return state, ".".join(trail), top_meta


def strip_prefix(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without the longest of ``prefixes`` it starts with (unchanged if none)."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def apply_key_filter(obj: Any, source: WeightSource, path: str | Path) -> FilteredWeights:
    """Run ``source``'s key filter on a loaded checkpoint.

    Args:
        obj: the loaded checkpoint.
        source: the weight source whose filter to apply.
        path: the file, for messages.

    Returns:
        The filtered weights (not yet verified against a backbone).

    Raises:
        WeightMismatchError: no state dict found, or two file keys map to one backbone key.
        WeightError: the source's ``filter_fn`` failed.
    """
    raw, container, meta = extract_state_dict(obj, source, path)
    renames = [(re.compile(p), r) for p, r in source.renames]
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in raw.items():
        new = strip_prefix(key, source.strip_prefixes)
        if any(new.startswith(p) for p in source.drop_prefixes):
            dropped.append(key)
            continue
        for pattern, repl in renames:
            new = pattern.sub(repl, new)
        if new in out:
            raise WeightMismatchError(
                f"{path}: the keys '{origin[new]}' and '{key}' both become '{new}' after the key filter of "
                f"plugin '{source.name}'; the file mixes two models. Check that it is the right file."
            )
        out[new], origin[new] = value, key
    if source.filter_fn is not None:
        try:
            out = dict(source.filter_fn(out))
        except Exception as exc:  # noqa: BLE001 - a plugin's filter may fail in any way
            raise WeightError(
                f"{path}: the filter_fn of plugin '{source.name}' failed: {type(exc).__name__}: {exc}"
            ) from exc
    return FilteredWeights(out, raw, container, meta, dropped)
