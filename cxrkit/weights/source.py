"""The weight-source record: everything cxrkit knows about one pretrained file.

A :class:`WeightSource` is a small frozen dataclass (like timm's pretrained
configs). It says which backbone the weights belong to, which file(s) hold them
and where they are published, how inputs must be preprocessed, and how the
file's keys become the backbone's keys (the *key filter*). Every weight plugin,
built in or third party, is one such record registered in
:data:`cxrkit.registry.weights`; nothing else in cxrkit switches on a plugin's name.

The key filter runs in this order on the state dict found in the file:

1. ``container_keys``: where the tensors live when the file is a wrapper dict
   (``{"epoch": ..., "state_dict": {...}}``); a flat dict of tensors is used as is.
2. ``strip_prefixes``: the longest matching prefix is removed from each key
   (``module.encoder_q.`` before ``module.``); a key without one is kept as is.
3. ``drop_prefixes``: keys starting with one of these (exact prefix, never a
   substring) are heads or training-only state and are dropped.
4. ``renames``: ``(regex, replacement)`` pairs applied with :func:`re.sub`.
5. ``filter_fn``: an optional function for anything the declarative steps cannot
   express; it receives the state dict after step 4 and returns backbone keys.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from cxrkit.weights.fetchspec import FetchSpec

if TYPE_CHECKING:  # pragma: no cover - torch is imported lazily
    import torch

__all__ = ["WeightSource", "get_source", "IMAGENET_MEAN", "IMAGENET_STD", "FilterFn"]

#: torchvision's ImageNet channel statistics (RGB, inputs scaled to [0, 1]).
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

#: ``f(state_dict) -> state_dict`` turning a foreign checkpoint into backbone keys.
FilterFn = Callable[["Mapping[str, torch.Tensor]"], "Mapping[str, torch.Tensor]"]

# torchvision model-zoo convention: "<name>-<first hex digits of sha256>.<ext>".
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,64})\.")
_TUPLE_FIELDS = ("filenames", "mean", "std", "container_keys", "strip_prefixes", "drop_prefixes")


@dataclass(frozen=True)
class WeightSource:
    """One pretrained-weight source (a weight plugin).

    Attributes:
        name: registry key, e.g. ``"inat_swav"``.
        architecture: backbone registry name the weights fit, e.g. ``"resnet50"``.
        filenames: file names the source is published under, preferred first.
            Empty only for sources without pretraining (``pretrained=False``).
        origin: URL or publication place of the file (shown to users; what
            ``cxrkit weights fetch`` downloads is in ``fetch``).
        description: one line shown by ``cxrkit list weights``.
        citation: reference to cite when using the weights.
        hash_prefix: published digest (or its leading hex digits) of the first
            file, if the origin publishes one.
        hash_algorithm: algorithm of ``hash_prefix`` (``"sha256"`` or ``"md5"``).
        hash_in_filename: the file names carry a sha256 prefix
            (torchvision: ``resnet50-0676ba61.pth``); each counts as a published hash.
        input_size: square crop fed to the network, in pixels.
        resize: shorter side before the centre crop, in pixels.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by after subtracting ``mean``.
        in_channels: input channels the weights were trained with (1 or 3).
        intensity_range: ``None`` to scale images to [0, 1] then normalise by
            ``mean``/``std``; ``(low, high)`` to scale linearly to that range with
            no mean/std (torchxrayvision: ``(-1024, 1024)``).
        pretrained: ``False`` for the randomly initialised baseline.
        search_torch_hub: also look in torch hub's checkpoint cache (torchvision files).
        container_keys: wrapper keys holding the state dict, tried in order.
        strip_prefixes: key prefixes to remove (longest match wins).
        drop_prefixes: key prefixes of tensors to drop (heads, momentum encoders).
        renames: ``(regex, replacement)`` pairs applied to every key.
        filter_fn: optional last filter step, ``f(state_dict) -> state_dict``.
        license: short name of the licence the weights are published under, shown to users
            (``"BSD-3-Clause"``, ``"MIT"``, ``"CC-BY-NC-4.0"``, ``"research-only"``; ``""`` = unknown).
        license_restricted: the licence restricts use (non-commercial, research only, gated, terms to
            accept): ``cxrkit weights fetch`` gets the file only with ``--accept_license`` (or after the
            user accepted it once, see :mod:`cxrkit.weights.licenses`).
        fetch: where the file is published and how ``cxrkit weights fetch`` gets it
            (:class:`~cxrkit.weights.fetchspec.FetchSpec`); ``None``: no fetch description, the
            file must be imported by hand.
        interpolation: resize mode of the source's own preprocessing: ``"area"`` (the study's),
            ``"bilinear"`` or ``"bicubic"`` (antialiased, as PIL resizes for transformers/open_clip).
        config_file: a configuration file published beside the weights (``"config.json"``); when it is
            found next to the weight file, its values named in ``config_fields`` are checked.
        config_fields: ``(dotted key in config_file, backbone attribute)`` pairs that must agree, e.g.
            ``("hidden_size", "embed_dim")`` or ``("vision_config.patch_size", "patch_size")``.

    Raises:
        ValueError: on construction, when a field is inconsistent (the message
            names the source and the field).
    """

    name: str
    architecture: str
    filenames: tuple[str, ...]
    origin: str
    description: str
    citation: str = ""
    hash_prefix: str | None = None
    hash_algorithm: str = "sha256"
    hash_in_filename: bool = False
    input_size: int = 224
    resize: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_channels: int = 3
    intensity_range: tuple[float, float] | None = None
    pretrained: bool = True
    search_torch_hub: bool = False
    container_keys: tuple[str, ...] = ("state_dict", "model", "resnet")
    strip_prefixes: tuple[str, ...] = ("module.",)
    drop_prefixes: tuple[str, ...] = ("fc.",)
    renames: tuple[tuple[str, str], ...] = ()
    filter_fn: FilterFn | None = None
    license: str = ""
    license_restricted: bool = False
    fetch: FetchSpec | None = None
    interpolation: str = "area"
    config_file: str | None = None
    config_fields: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:  # accept lists from plugin authors, store tuples
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"weight source '{self.name}': {name} must be a tuple, not the string {value!r}")
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "renames", tuple(tuple(pair) for pair in self.renames))
        object.__setattr__(self, "config_fields", tuple(tuple(pair) for pair in self.config_fields))
        self._validate()

    def _validate(self) -> None:
        where = f"weight source '{self.name}'"
        if not self.name or not self.architecture:
            raise ValueError(f"{where}: name and architecture must be non-empty")
        if self.pretrained and not self.filenames:
            raise ValueError(f"{where}: a pretrained source needs at least one file name in `filenames`")
        if any("/" in f or "\\" in f for f in self.filenames):
            raise ValueError(f"{where}: `filenames` are bare file names, not paths: {self.filenames}")
        if self.hash_algorithm not in hashlib.algorithms_guaranteed:
            raise ValueError(f"{where}: unknown hash_algorithm {self.hash_algorithm!r}")
        if self.hash_prefix is not None and not re.fullmatch(r"[0-9a-f]{4,128}", self.hash_prefix):
            raise ValueError(f"{where}: hash_prefix must be lowercase hex, got {self.hash_prefix!r}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"{where}: in_channels must be 1 or 3, got {self.in_channels}")
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, self.in_channels):
            raise ValueError(f"{where}: mean and std need 1 or in_channels={self.in_channels} values each")
        if self.intensity_range is not None and not self.intensity_range[0] < self.intensity_range[1]:
            raise ValueError(f"{where}: intensity_range must be (low, high) with low < high")
        if self.input_size <= 0 or self.resize < self.input_size:
            raise ValueError(f"{where}: need 0 < input_size <= resize, got {self.input_size}, {self.resize}")
        for pattern, _ in self.renames:
            re.compile(pattern)
        if self.interpolation not in ("area", "bilinear", "bicubic"):
            raise ValueError(f"{where}: interpolation must be area, bilinear or bicubic, got {self.interpolation!r}")
        if self.filter_fn is not None and not callable(self.filter_fn):
            raise ValueError(f"{where}: filter_fn must be callable")
        if self.fetch is not None:
            if not isinstance(self.fetch, FetchSpec):
                raise ValueError(f"{where}: fetch must be a cxrkit.weights.FetchSpec, not {type(self.fetch).__name__}")
            if not self.pretrained:
                raise ValueError(f"{where}: a source without pretraining has nothing to fetch")
            if self.fetch.filename and self.fetch.filename not in self.filenames:
                raise ValueError(f"{where}: fetch.filename {self.fetch.filename!r} is not one of {self.filenames}")

    @property
    def fetch_filename(self) -> str:
        """The name a fetched file is installed under (``fetch.filename`` or the first file name)."""
        return (self.fetch.filename if self.fetch is not None and self.fetch.filename else None) or (
            self.filenames[0] if self.filenames else "")

    def published_hashes(self, filename: str | None = None) -> dict[str, tuple[str, ...]]:
        """Published digest prefixes by algorithm, e.g. ``{"sha256": ("0676ba61",)}``.

        Args:
            filename: the file's name. A digest in ``fetch`` belongs to the published file only: it is
                left out for the source's other accepted names (a flat re-save, an older release);
                ``None`` or an unknown name (a renamed download) includes it.
        """
        out: dict[str, list[str]] = {}
        if self.hash_prefix:
            out.setdefault(self.hash_algorithm, []).append(self.hash_prefix)
        if self.fetch is not None and self.fetch.published_digests():
            name = filename[len("unverified-"):] if filename and filename.startswith("unverified-") else filename
            if name is None or name == self.fetch_filename or name not in self.filenames:
                for alg, digest in self.fetch.published_digests().items():
                    if digest not in out.get(alg, []):
                        out.setdefault(alg, []).append(digest)
        if self.hash_in_filename:
            for filename in self.filenames:
                match = _HASH_IN_NAME.search(filename)
                if match and match.group(1) not in out.get("sha256", []):
                    out.setdefault("sha256", []).append(match.group(1))
        return {alg: tuple(prefixes) for alg, prefixes in out.items()}

    def import_command(self, path: str | None = None) -> str:
        """The exact command that verifies and installs this source's file."""
        return f"cxrkit weights import {self.name} {path or '/path/to/' + (self.filenames or ('FILE',))[0]}"

    def fetch_command(self) -> str:
        """The command that gets this source's file (downloads it, or prints the manual steps)."""
        accept = " --accept_license" if self.license_restricted else ""
        return f"cxrkit weights fetch {self.name}{accept}"

    def to_dict(self) -> dict[str, object]:
        """Plain-data view (for run records and docs); ``filter_fn`` becomes its qualified name."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "filter_fn" and value is not None:
                value = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
            elif is_dataclass(value):
                value = {k: v for k, v in asdict(value).items() if v not in ("", None)}
            out[f.name] = _plain(value)
        return out


def _plain(value: object) -> object:
    """Tuples (also nested) as lists, for JSON and YAML."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def get_source(name: str | WeightSource) -> WeightSource:
    """The registered weight source ``name`` (a :class:`WeightSource` is returned as is).

    Raises:
        cxrkit.registry.RegistryError: unknown name (the message lists the known ones),
            or a plugin that fails to import.
            Also raised when the entry point does not provide a :class:`WeightSource`.
    """
    if isinstance(name, WeightSource):
        return name
    from cxrkit.registry import RegistryError, weights

    obj = weights.get(name)
    if not isinstance(obj, WeightSource):
        raise RegistryError(
            f"weight plugin '{name}' ({weights.entry(name).origin}) provides a {type(obj).__name__}, "
            "not a cxrkit.weights.WeightSource; fix or uninstall that plugin."
        )
    return obj
