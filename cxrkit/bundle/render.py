"""Render MONAI bundle files from the one base config shipped in the cxrkit package.

The base config is the YAML fragments in ``cxrkit/bundle/templates/`` (:data:`KINDS`
lists the fragments of ``train``, ``evaluate`` and ``inference``). Assembled, each is
a valid config with a default for every value; ``plugin`` is the one value a bundle
must set. What differs between bundles is a few top-level values
(:class:`BundleParams`): the weight plugin, and for a run folder its classes, input
size, channels, head and folder. Three renderings use them:

* :func:`base_config`: the base as it is (``bundles/_base/configs/train.yaml``);
* :func:`render_override`: only the values that differ (``bundles/<plugin>/configs/train.yaml``),
  which MONAI merges onto the base when given both files as a list;
* :func:`render_config`: the base with those values set in place, comments kept: a
  self-contained config (a written bundle, a run folder; MONAI Label reads a run
  folder's ``configs/inference.yaml`` alone).

Every rendering is parsed again and checked (unique ids, the values set), so a
template edit that breaks it fails here rather than in a user's run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from importlib import resources
from typing import Any, Mapping

import yaml

__all__ = [
    "BundleParams",
    "KINDS",
    "RUN_IDS",
    "DEFAULT_CLASSES",
    "base_config",
    "render_config",
    "render_override",
    "render_metadata",
    "render_logging_conf",
    "render_text",
    "load_yaml",
]

#: the study's task, named in a bundle's metadata until a run records its own classes.
DEFAULT_CLASSES: tuple[str, ...] = ("COVID", "Normal")
#: versions the bundles are made and tested with (a run folder records the versions it used).
BUNDLE_VERSION = "0.1.0"
MADE_WITH = {"monai": "1.6.1", "torch": "2.14.1", "numpy": "2.4.6"}
REQUIRED_PACKAGES = {"cxrkit": "0.1.0", "torchvision": "0.29.1", "pytorch-ignite": "0.5.5", "scikit-learn": "1.9.1",
                     "tensorboard": "2.21.0", "pyyaml": "6.0.3"}

#: config kind -> template fragments, in order.
KINDS: dict[str, tuple[str, ...]] = {
    "train": ("common", "train_settings", "data", "network", "train", "validate", "record", "finish", "tracking", "run_train"),
    "evaluate": ("common", "model", "evaluate"),
    "inference": ("common", "model", "inference"),
}
#: config kind -> the MONAI run id that runs it (``python -m monai.bundle run <id>``).
RUN_IDS = {"train": "training", "evaluate": "evaluating", "inference": "inference"}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_GREETING = "# Override any value with --name value"


@dataclass(frozen=True)
class BundleParams:
    """The values that differ between bundles; ``None`` keeps the base config's default.

    Attributes:
        plugin: weight plugin name (built-in or installed by a third party).
        image_size: network input size in pixels (base default: the plugin's own).
        head: classification head (base default: ``study``).
        classes: class names by output index: metadata ``channel_def`` only (the study's two by default); the
            evaluate and inference configs read them from there when they run, never hold them.
        in_channels: the trained network's input channels (base default: the plugin's).
        bundle_root: the bundle folder the configs name (base default ``"."``; a run: its folder).
    """

    plugin: str
    image_size: int | None = None
    head: str | None = None
    classes: tuple[str, ...] | None = None
    in_channels: int | None = None
    bundle_root: str | None = None

    def overrides(self, kind: str) -> dict[str, Any]:
        """Top-level config values of ``kind`` that differ from the base (never the classes: metadata only)."""
        out: dict[str, Any] = {"plugin": str(self.plugin)}
        if self.bundle_root is not None:
            out["bundle_root"] = str(self.bundle_root)
        if self.image_size is not None:
            out["image_size"] = int(self.image_size)
        if self.head is not None:
            out["head"] = str(self.head)
        # no class names: every config reads them when it runs (a training config from the data, evaluate and
        # inference from configs/metadata.json), so no config parser ever evaluates a name
        if kind != "train":
            if self.in_channels is not None:
                out["in_channels"] = int(self.in_channels)
        return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that rejects duplicate keys (two fragments defining the same id)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate config id(s) {', '.join(duplicates)} in generated config")
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    """Parse config text, rejecting duplicate ids.

    Raises:
        ValueError: two definitions of one id.
        yaml.YAMLError: not YAML.
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _template(name: str) -> str:
    return resources.files("cxrkit.bundle").joinpath("templates", name).read_text(encoding="utf-8")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; one of {', '.join(KINDS)}")


def _body(kind: str) -> str:
    return "".join(_template(f"{name}.yaml") for name in KINDS[kind])


def base_config(kind: str) -> str:
    """The base ``kind`` config: every default, ``plugin: null`` (``bundles/_base/configs/<kind>.yaml``).

    Raises:
        ValueError: unknown kind, or templates that define one id twice.
    """
    _check_kind(kind)
    header = (
        f"# cxrkit base {kind} config (MONAI bundle format), from cxrkit/bundle/templates/ in the cxrkit package.\n"
        "# GENERATED by `cxrkit bundle sync`: edit the templates, not this file (`cxrkit bundle check` compares).\n"
        "# It sets no weight plugin: a plugin's bundle sets `plugin` on top of it (MONAI merges a list of files):\n"
        "#   python -m monai.bundle run training --meta_file bundles/inat_swav/configs/metadata.json \\\n"
        "#     --config_file \"['bundles/_base/configs/train.yaml','bundles/inat_swav/configs/train.yaml']\" ...\n"
        f"{_GREETING}" + (" (nested ids: --train#trainer#max_epochs 2)" if kind == "train" else "") + ".\n\n"
    )
    text = header + _body(kind)
    load_yaml(text)
    return text


def _yaml_value(value: Any) -> str:
    return json.dumps(value)  # JSON scalars and lists are YAML flow values


def _set_top_level(text: str, key: str, value: Any, kind: str) -> str:
    """Replace the value of the one top-level ``key:`` line of ``text``, keeping its comment."""
    pattern = re.compile(rf"^{re.escape(key)}:[ \t]+(?P<value>[^\n]*?)(?P<comment>[ \t]+#[^\n]*)?$", re.M)
    found = pattern.findall(text)
    if len(found) != 1:
        raise ValueError(f"the base {kind} config has {len(found)} top-level '{key}:' lines; expected exactly one "
                         "(cxrkit/bundle/templates/)")
    return pattern.sub(lambda m: f"{key}: {_yaml_value(value)}{m.group('comment') or ''}", text)


def _checked(text: str, values: Mapping[str, Any], kind: str) -> str:
    config = load_yaml(text)
    wrong = [k for k, v in values.items() if config.get(k) != v]
    if wrong:
        raise ValueError(f"rendering the {kind} config did not set {', '.join(wrong)} (cxrkit/bundle/templates/)")
    return text


def render_config(kind: str, params: BundleParams) -> str:
    """The self-contained ``configs/<kind>.yaml``: the base with ``params`` set in place.

    Raises:
        ValueError: unknown kind, a value the base does not define once, or two fragments defining one id.
    """
    _check_kind(kind)
    values = params.overrides(kind)
    root = params.bundle_root
    config_file = f"{root}/configs/{kind}.yaml" if root else f"configs/{kind}.yaml"
    where = f"# Run from {'anywhere' if root else 'the bundle folder'}:\n"
    header = (
        f"# cxrkit bundle '{params.plugin}': {kind} config (MONAI bundle format), self-contained.\n"
        f"# GENERATED by cxrkit from its base config (cxrkit/bundle/templates/) and the '{params.plugin}' "
        "weight source.\n"
        + where
        + f"#   cxrkit run {'training' if kind == 'train' else kind} {root or '.'} ...\n"
        f"#   python -m monai.bundle run {RUN_IDS[kind]} --config_file {config_file} "
        f"--meta_file {config_file.rsplit('/', 1)[0]}/metadata.json ...\n"
        f"{_GREETING}" + (" (nested ids: --train#trainer#max_epochs 2)" if kind == "train" else "") + ".\n\n"
    )
    text = header + _body(kind)
    for key, value in values.items():
        text = _set_top_level(text, key, value, kind)
    return _checked(text, values, kind)


def render_override(kind: str, params: BundleParams) -> str:
    """The values of ``params`` alone (``bundles/<plugin>/configs/<kind>.yaml``), merged onto the base by MONAI.

    Raises:
        ValueError: unknown kind.
    """
    _check_kind(kind)
    plugin = params.plugin
    values = params.overrides(kind)
    header = (
        f"# cxrkit bundle '{plugin}': what differs from the base {kind} config bundles/_base/configs/{kind}.yaml.\n"
        f"# GENERATED by `cxrkit bundle sync` from the '{plugin}' weight source. Give MONAI both files:\n"
        f"#   python -m monai.bundle run {RUN_IDS[kind]} --meta_file bundles/{plugin}/configs/metadata.json \\\n"
        f"#     --config_file \"['bundles/_base/configs/{kind}.yaml','bundles/{plugin}/configs/{kind}.yaml']\" ...\n"
        f"#   cxrkit run {'training' if kind == 'train' else kind} bundles/{plugin} ...     (the same)\n"
        f"# A self-contained copy: cxrkit bundle write {plugin} --output_dir DIR\n\n"
    )
    text = header + "".join(f"{key}: {_yaml_value(value)}\n" for key, value in values.items())
    return _checked(text, values, kind)


def _input_value_range(source: Any) -> list[float]:
    if source.intensity_range is not None:
        return [float(v) for v in source.intensity_range]
    mean = list(source.mean) * (source.in_channels if len(source.mean) == 1 else 1)
    std = list(source.std) * (source.in_channels if len(source.std) == 1 else 1)
    low = min((0.0 - m) / s for m, s in zip(mean, std))
    high = max((1.0 - m) / s for m, s in zip(mean, std))
    return [round(low, 4), round(high, 4)]


def _plugin_distribution(plugin: str) -> dict[str, str]:
    """``{distribution: version}`` of a third-party plugin (a bundle of it needs that package too)."""
    from cxrkit.registry import weights

    dist = getattr(weights.entry(plugin), "distribution", None)
    if not dist or dist == "cxrkit":
        return {}
    try:
        return {dist: importlib_metadata.version(dist)}
    except importlib_metadata.PackageNotFoundError:
        return {}


def render_metadata(params: BundleParams, versions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``configs/metadata.json`` with every field the MONAI bundle specification requires.

    Args:
        params: the bundle parameters (classes become ``outputs.pred.channel_def``; default: the study's).
        versions: installed library versions (``cxrkit.versions.library_versions()``) to record, for a run
            folder; default: the versions the bundles are made and tested with.
    """
    from cxrkit.weights import get_source

    source = get_source(params.plugin)
    image_size = int(params.image_size or source.input_size)
    in_channels = int(params.in_channels or source.in_channels)
    head = params.head or "study"
    made_with = dict(MADE_WITH)
    packages = dict(REQUIRED_PACKAGES)
    if versions is not None:
        made_with = {k: versions[k] for k in made_with}
        packages.update({"cxrkit": versions["cxrkit"], "torchvision": versions["torchvision"],
                         "pytorch-ignite": versions["ignite"]})
    packages.update(_plugin_distribution(params.plugin))
    classes = list(params.classes or DEFAULT_CLASSES)
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "first cxrkit bundle"},
        "monai_version": made_with["monai"],
        "pytorch_version": made_with["torch"].split("+")[0],
        "numpy_version": made_with["numpy"],
        "required_packages_version": packages,
        "supported_apps": {},
        "name": f"cxrkit {params.plugin} chest X-ray classifier",
        "task": "Chest X-ray classification: " + " / ".join(classes),
        "description": (
            f"{source.architecture} backbone initialised from the '{params.plugin}' weight source "
            f"({source.description}) with the '{head}' head, fine-tuned on chest X-rays "
            "(Hossain et al. 2022 recipe: Adam 1e-3, batch 32, 50 epochs, no augmentation)."
        ),
        "authors": "cxrkit developers",
        "copyright": "Copyright (c) cxrkit developers. Pretrained weights: published by their authors under their "
                     "own terms (cxrkit.weights_origin).",
        "data_source": "COVID-19 Radiography Database, CoronaHack, Cohen COVID-19 image collection, or a folder/CSV",
        "data_type": "png, jpeg or DICOM chest radiographs",
        "image_classes": f"{in_channels}-channel chest X-ray, {image_size}x{image_size} pixels",
        "label_classes": ", ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "pred_classes": ", ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "intended_use": "Research only; not a medical device and not for diagnosis.",
        "references": [
            "Hossain et al. (2022), Informatics in Medicine Unlocked 30:100916",
            *([source.citation] if source.citation else []),
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "xray",
                    "num_channels": in_channels,
                    "spatial_shape": [image_size, image_size],
                    "dtype": "float32",
                    "value_range": _input_value_range(source),
                    "is_patch_data": False,
                    "channel_def": {str(i): "grey" if in_channels == 1 else "RGB"[i] for i in range(in_channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "modality": "n/a",
                    "num_channels": len(classes),
                    "spatial_shape": [1, len(classes)],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_onehot": False,
                    "is_patch_data": False,
                    "channel_def": {str(i): c for i, c in enumerate(classes)},
                }
            },
        },
        "cxrkit": {
            "plugin": params.plugin,
            "architecture": source.architecture,
            "weight_files": list(source.filenames),
            "weights_origin": source.origin,
            "head": head,
            "image_size": image_size,
        },
    }


def render_logging_conf() -> str:
    """``configs/logging.conf`` (console logging at INFO)."""
    return _template("logging.conf")


def render_text(name: str, plugin: str) -> str:
    """A text template (``README.md``, ``LICENSE``, ``models_README.md``) filled in for ``plugin``."""
    from cxrkit.weights import get_source

    source = get_source(plugin)
    values = {
        "plugin": plugin,
        "architecture": source.architecture,
        "description": source.description,
        "filenames": ", ".join(f"`{f}`" for f in source.filenames) or "none: random initialisation",
        "origin": source.origin or "n/a",
        "import_command": source.import_command() if source.pretrained else "(no weight file needed)",
        "image_size": str(source.input_size),
        "citation": source.citation or "n/a",
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _template(name))
