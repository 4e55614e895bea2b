"""Every source's published file, fabricated in its real layout, served where its record says it is published.

The tensors are freshly initialised torchvision backbones (unit batch-norm variances), so the fetched weights train
and evaluate to finite numbers. No fabricated file can match a digest an origin really publishes (torchvision's
sha256 prefix, MoCo's md5 prefix); :func:`with_digests_of` re-registers such sources, for one test, with the
fabricated files' digests in place of the real ones, so the verified path is exercised end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
from typing import Iterator

import torch
import torchvision.models as tvm

from support.weights import LAYOUTS, big

#: the layout each fetchable source is served in (several real variants are covered across sources)
SERVED_LAYOUT = {
    "imagenet": "imagenet-v1", "imagenet_v2": "imagenet_v2", "chestxray14": "chestxray14-wrapped",
    "chexpert": "chexpert-module", "imagenet_chestxray14": "imagenet_chestxray14",
    "imagenet_chexpert": "imagenet_chexpert", "swav": "swav-flat", "moco_v1": "moco_v1", "moco_v2": "moco_v2",
    "chexnet": "chexnet-legacy-torch0.3",
}


def _fresh(arch: str, in_channels: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = {k: v for k, v in getattr(tvm, arch)(weights=None).state_dict().items()
             if not k.startswith(("fc.", "classifier."))}
    if in_channels == 1:
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    return state


def published_bytes(source) -> bytes:
    """``source``'s published file as bytes, in the real layout of :data:`SERVED_LAYOUT` (or xrv's release)."""
    buffer = io.BytesIO()
    if source.name in SERVED_LAYOUT:
        layout = LAYOUTS[SERVED_LAYOUT[source.name]]
        torch.save(layout.build(_fresh(layout.arch)), buffer, _use_new_zipfile_serialization=not layout.legacy)
    else:  # a third-party flat torchvision layout (torchxrayvision): keys as is, its own head
        state = _fresh(source.architecture, source.in_channels)
        torch.save({**state, "fc.weight": big(18, 2048), "fc.bias": big(18)}, buffer)
    return buffer.getvalue()


def serve_published(server, sources) -> dict[str, bytes]:
    """Serve each direct-link source's file at its published URL; ``{name: bytes}``."""
    from support.weightserver import Route

    files = {}
    for source in sources:
        files[source.name] = published_bytes(source)
        server.add(source.fetch.url, Route(body=files[source.name]))
    return files


@contextlib.contextmanager
def with_digests_of(files: dict[str, bytes]) -> Iterator[None]:
    """Re-register the sources whose origin publishes a digest with the fabricated files' digests instead."""
    from cxrkit.registry import weights
    from cxrkit.weights import get_source

    saved = {}
    for name, data in files.items():
        source = get_source(name)
        if not source.published_hashes():
            continue
        digest = hashlib.new(source.hash_algorithm, data).hexdigest()[:8]
        saved[name] = (source, weights.entry(name).origin)
        weights.unregister(name)
        weights.register(name, dataclasses.replace(source, hash_prefix=digest, hash_in_filename=False),
                         origin="tests: fabricated digest")
    try:
        yield
    finally:
        for name, (source, origin) in saved.items():
            weights.unregister(name)
            weights.register(name, source, origin=origin)
