"""What each compared source is: its backbone, size, input and licence (a table of the comparison report)."""

from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

from cxrkit.report.document import Table

__all__ = ["backbone_parameters", "source_facts", "sources_table"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=32)
def backbone_parameters(architecture: str) -> int | None:
    """Parameters of a registered backbone (counted on the meta device: no memory), or None if unknown."""
    import torch

    from cxrkit.networks.backbones import build_backbone

    try:
        with torch.device("meta"):
            model = build_backbone(architecture)
    except Exception as exc:  # noqa: BLE001 - a report row must not fail on a broken third-party backbone
        logger.debug("cannot count the parameters of %s: %s", architecture, exc)
        return None
    return sum(p.numel() for p in model.parameters())


def _input_size(run: Any) -> int | None:
    inputs = (run.metadata.get("network_data_format") or {}).get("inputs") or {}
    shape = (inputs.get("image") or {}).get("spatial_shape")
    return int(shape[0]) if isinstance(shape, list) and shape and isinstance(shape[0], int) else None


def source_facts(run: Any) -> dict[str, Any]:
    """``architecture``, ``parameters``, ``input_size``, ``license``, ``license_restricted`` of a run's source."""
    from cxrkit.registry import RegistryError
    from cxrkit.weights import get_source

    try:
        source = get_source(run.plugin)
    except RegistryError:
        source = None
    architecture = run.weights.get("architecture") or (source.architecture if source else None)
    return {
        "architecture": architecture,
        "parameters": backbone_parameters(architecture) if architecture else None,
        "input_size": _input_size(run) or (source.input_size if source else None),
        "license": (source.license if source else "") or "not stated",
        "license_restricted": bool(source and source.license_restricted),
    }


def sources_table(labelled_runs: Sequence[tuple[str, Any]]) -> Table:
    """One row per source: label, backbone, parameters (millions), input size and licence."""
    rows = []
    for label, run in labelled_runs:
        facts = source_facts(run)
        params = facts["parameters"]
        rows.append([label, f"`{facts['architecture'] or '?'}`", f"{params / 1e6:.1f} M" if params else "?",
                     f"{facts['input_size']} px" if facts["input_size"] else "?",
                     facts["license"] + (" (restricted)" if facts["license_restricted"] else "")])
    return Table(["Source", "Backbone", "Parameters", "Input", "Licence"], rows)
