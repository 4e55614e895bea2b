"""Loading a weight source's file: find, hash, open safely, filter keys, verify, load.

:func:`load_state_dict` returns verified backbone tensors; :func:`load_pretrained`
puts them into a built backbone. Both verify that every backbone tensor was
found with the right shape and that nothing unexpected is left, and both
record the file's sha256 so a training run can be traced to its exact weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cxrkit.weights.checkpoint import file_digests, open_checkpoint
from cxrkit.weights.errors import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    WeightError,
    WeightFileNotFoundError,
    WeightMismatchError,
)
from cxrkit.weights.hints import file_hints
from cxrkit.weights.keyfilter import FilteredWeights, apply_key_filter
from cxrkit.weights.modelconfig import check_model_config
from cxrkit.weights.provenance import check_hash, verification
from cxrkit.weights.source import WeightSource, get_source
from cxrkit.weights.store import find_weight_file
from cxrkit.weights.verify import (
    OPTIONAL_SUFFIX,
    BackboneSpec,
    Comparison,
    apply_adaptation,
    compare,
    describe,
    resample_position_embedding,
    spec_of,
)

__all__ = [
    "WeightError",
    "WeightFileNotFoundError",
    "WeightMismatchError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "LoadedWeights",
    "LoadReport",
    "find_weight_file",
    "load_state_dict",
    "load_pretrained",
    "check_hash",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclass
class LoadedWeights:
    """Verified backbone tensors from one file.

    Attributes:
        state_dict: backbone-keyed tensors (first convolution adapted if needed).
        path: the file read.
        sha256: the file's sha256 hex digest.
        plugin: the weight source's name.
        hash_ok: ``True``/``False`` against the origin's published hash, ``None`` if none is published.
        digests: every digest computed (``sha256``, plus ``md5`` where the origin publishes one).
        matched: number of backbone tensors found in the file.
        dropped: file keys dropped by the key filter (heads, momentum encoder, ...).
        missing_optional: ``num_batches_tracked`` buffers the file lacks.
        channels_adapted: a note when the first convolution was adapted, else ``None``.
        verification: ``"verified"``, ``"unverified"`` or ``"unverifiable"`` (see
            :mod:`cxrkit.weights.provenance`), from ``hash_ok``.
    """

    state_dict: dict[str, torch.Tensor]
    path: Path
    sha256: str
    plugin: str = ""
    hash_ok: bool | None = None
    digests: dict[str, str] = field(default_factory=dict)
    matched: int = 0
    dropped: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)
    channels_adapted: str | None = None

    @property
    def verification(self) -> str:
        return verification(self.hash_ok)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` put into a backbone (record it with the run).

    Attributes:
        plugin: the weight source's name.
        path: the file read.
        sha256: the file's sha256 hex digest.
        matched: backbone tensors loaded from the file.
        hash_ok: ``True``/``False`` against the published hash, ``None`` if none is published.
        channels_adapted: a note when the first convolution was adapted, else ``None``.
        dropped: file keys dropped by the key filter.
        missing_optional: ``num_batches_tracked`` buffers the file lacks (kept from the model).
        digests: every digest computed.
        verification: ``"verified"``, ``"unverified"`` or ``"unverifiable"``, from ``hash_ok``.
    """

    plugin: str
    path: Path
    sha256: str
    matched: int
    hash_ok: bool | None
    channels_adapted: str | None = None
    dropped: tuple[str, ...] = ()
    missing_optional: tuple[str, ...] = ()
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def verification(self) -> str:
        return verification(self.hash_ok)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for a run folder."""
        return {
            "plugin": self.plugin,
            "path": str(self.path),
            "sha256": self.sha256,
            "matched": self.matched,
            "hash_ok": self.hash_ok,
            "verification": self.verification,
            "channels_adapted": self.channels_adapted,
            "dropped": list(self.dropped),
            "missing_optional": list(self.missing_optional),
            "digests": dict(self.digests),
        }


@dataclass
class _Read:
    source: WeightSource
    path: Path
    obj: Any
    filtered: FilteredWeights
    digests: dict[str, str]
    hash_ok: bool | None


def _read(source: WeightSource | str, path: PathLike | None, trust: bool) -> _Read:
    source = get_source(source)
    file = find_weight_file(source, path)
    digests = file_digests(file, source.published_hashes(Path(file).name))
    hash_ok = check_hash(source, digests, file)
    obj = open_checkpoint(file, trust=trust)
    filtered = apply_key_filter(obj, source, file)
    return _Read(source, file, obj, filtered, digests, hash_ok)


def _verify(read: _Read, spec: BackboneSpec, backbone: nn.Module) -> tuple[dict[str, torch.Tensor], Comparison,
                                                                         str | None]:
    """Shapes tensor by tensor, then the source's config file; nothing is loaded before both pass."""
    state = dict(read.filtered.state_dict)
    resampled = resample_position_embedding(state, spec)
    cmp = compare(state, spec)
    if not cmp.ok:
        source = read.source
        hints = file_hints(read.obj, list(read.filtered.raw), read.path, source.name, spec.architecture)
        hint_text = "".join(f"\n  hint: {h}" for h in hints)
        matched = sum(not k.endswith(OPTIONAL_SUFFIX) for k in cmp.matched)
        raise WeightMismatchError(
            f"{read.path}: does not fit plugin '{source.name}' ({spec.architecture}, {spec.in_channels} input "
            f"channel(s)): {matched} of {len(spec.required)} backbone tensors match (num_batches_tracked not "
            f"counted); {describe(cmp)}."
            f"{hint_text}\nCheck that this is the '{source.name}' file ({', '.join(source.filenames)} from "
            f"{source.origin}); `cxrkit weights check PLUGIN FILE` tries a file against another plugin.",
            missing=cmp.missing,
            unexpected=cmp.unexpected,
            mismatched=cmp.mismatched,
            hints=hints,
        )
    check_model_config(read.source, read.path, backbone)
    note = "; ".join(n for n in (apply_adaptation(state, cmp), resampled) if n) or None
    if note:
        logger.info("plugin %s: adapted %s", read.source.name, note)
    return state, cmp, note


def load_state_dict(
    source: WeightSource | str,
    path: PathLike | None = None,
    *,
    trust: bool = False,
    in_channels: int | None = None,
    image_size: int | None = None,
) -> LoadedWeights:
    """Read, filter and verify a source's weights for its backbone architecture.

    Args:
        source: a :class:`WeightSource` or a registered plugin name.
        path: explicit file or folder; default: search the usual places
            (see :func:`~cxrkit.weights.store.find_weight_file`).
        trust: allow full unpickling of a file the safe loader refuses (warns).
        in_channels: input channels to adapt the first convolution to
            (default: the source's own ``in_channels``).
        image_size: input side for backbones whose shape depends on it (ViTs; default: the source's
            ``input_size``); a ViT's position embedding is resampled to it.

    Returns:
        The verified tensors with the file's path and sha256.

    Raises:
        WeightFileNotFoundError: no file (the message says where to get it and how to import it).
        UnsafeCheckpointError: the file needs full unpickling and ``trust`` is False.
        CorruptCheckpointError: truncated, empty or not a checkpoint.
        WeightMismatchError: the tensors do not fit the architecture (counts, first keys, hints).
    """
    from cxrkit.networks.backbones import build_backbone

    read = _read(source, path, trust)
    with torch.device("meta"):  # the contract only: no memory, no initialisation
        model = build_backbone(read.source.architecture, in_channels or read.source.in_channels,
                               image_size=image_size or read.source.input_size)
    state, cmp, note = _verify(read, spec_of(model, read.source.architecture), model)
    logger.info("plugin %s: %d tensors verified from %s (sha256 %s)", read.source.name, len(cmp.matched),
                read.path, read.digests["sha256"])
    return LoadedWeights(
        state_dict=state,
        path=read.path,
        sha256=read.digests["sha256"],
        plugin=read.source.name,
        hash_ok=read.hash_ok,
        digests=read.digests,
        matched=len(cmp.matched),
        dropped=read.filtered.dropped,
        missing_optional=cmp.absent_optional,
        channels_adapted=note,
    )


def load_pretrained(
    backbone: nn.Module,
    source: WeightSource | str,
    path: PathLike | None = None,
    *,
    trust: bool = False,
) -> LoadReport:
    """Load a source's weights into ``backbone`` after verifying them tensor by tensor.

    Equivalent to ``backbone.load_state_dict(weights, strict=True)``, except that
    ``num_batches_tracked`` buffers absent from old files keep the model's value
    and a 1 <-> 3 channel difference of the first convolution is adapted.

    Args:
        backbone: a built backbone (e.g. from :func:`cxrkit.networks.backbones.build_backbone`).
        source: a :class:`WeightSource` or a registered plugin name.
        path: explicit file or folder; default: search the usual places.
        trust: allow full unpickling of a file the safe loader refuses (warns).

    Returns:
        A :class:`LoadReport` (plugin, path, sha256, matched count, hash status, adaptation).

    Raises:
        WeightError: any of the errors of :func:`load_state_dict`; the backbone is unchanged then.
    """
    source = get_source(source)
    if not source.pretrained:
        raise WeightError(f"weight source '{source.name}' has no pretrained weights; nothing to load")
    read = _read(source, path, trust)
    state, cmp, note = _verify(read, spec_of(backbone, source.architecture), backbone)
    own = backbone.state_dict()
    for key in cmp.absent_optional:
        state[key] = own[key]
    backbone.load_state_dict(state, strict=True)
    logger.info("plugin %s: loaded %d tensors into %s from %s (sha256 %s)", source.name, len(cmp.matched),
                type(backbone).__name__, read.path, read.digests["sha256"])
    return LoadReport(
        plugin=source.name,
        path=read.path,
        sha256=read.digests["sha256"],
        matched=len(cmp.matched),
        hash_ok=read.hash_ok,
        channels_adapted=note,
        dropped=tuple(read.filtered.dropped),
        missing_optional=tuple(cmp.absent_optional),
        digests=read.digests,
    )
