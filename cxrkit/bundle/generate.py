"""Generate the MONAI bundles (``bundles/<plugin>/``) from the shared templates and each WeightSource.

One source of truth: the YAML fragments in ``cxrkit/bundle/templates/`` plus
each weight plugin's :class:`~cxrkit.weights.WeightSource` (architecture,
input size, channels, normalisation, file names). The committed bundle files
are self-contained (MONAI Label reads ``configs/inference.yaml`` alone, and
``%file#key`` macros resolve from the working directory), so they are written
out here rather than included at run time. A training run writes its own
``configs/`` with the same functions, for the classes it was trained on.

Usage::

    python -m cxrkit.bundle.generate            # (re)write bundles/ for every built-in plugin
    python -m cxrkit.bundle.generate --check    # exit 1 when a committed file differs
    python -m cxrkit.bundle.generate inat_swav  # one plugin (also third-party ones)
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from cxrkit.bundle import bundles_root

__all__ = [
    "BundleParams",
    "KINDS",
    "DEFAULT_CLASSES",
    "render_config",
    "render_metadata",
    "render_logging_conf",
    "render_bundle",
    "builtin_plugins",
    "write_bundles",
    "check_bundles",
    "main",
]

logger = logging.getLogger(__name__)

#: the study's task, named in a committed bundle's metadata until a run records its own classes.
DEFAULT_CLASSES: tuple[str, ...] = ("COVID", "Normal")
#: versions the committed bundles are made and tested with (a run records the versions it used).
BUNDLE_VERSION = "0.1.0"
MADE_WITH = {"monai": "1.6.1", "torch": "2.14.1", "numpy": "2.4.6"}
REQUIRED_PACKAGES = {"cxrkit": "0.1.0", "torchvision": "0.29.1", "pytorch-ignite": "0.5.5", "scikit-learn": "1.9.1",
                     "tensorboard": "2.21.0", "pyyaml": "6.0.3"}

#: config kind -> template fragments, in order.
KINDS: dict[str, tuple[str, ...]] = {
    "train": ("common", "train_settings", "data", "network", "train", "validate", "record", "finish", "run_train"),
    "evaluate": ("common", "model", "evaluate"),
    "inference": ("common", "model", "inference"),
}
_RUN_IDS = {"train": "training", "evaluate": "evaluating", "inference": "inference"}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class BundleParams:
    """What differs between bundles.

    Attributes:
        plugin: weight plugin name.
        image_size: network input size in pixels.
        head: classification head.
        classes: class names by output index (evaluate/inference configs and metadata).
        in_channels: input channels.
        bundle_root: value of ``bundle_root`` in the configs (``"."`` for committed bundles,
            the run folder for a run).
    """

    plugin: str
    image_size: int = 224
    head: str = "study"
    classes: tuple[str, ...] = DEFAULT_CLASSES
    in_channels: int = 3
    bundle_root: str = "."

    @classmethod
    def for_plugin(cls, plugin: str) -> "BundleParams":
        """The committed bundle's parameters: the plugin's own input size and channels."""
        from cxrkit.weights import get_source

        source = get_source(plugin)
        return cls(plugin=source.name, image_size=int(source.input_size), in_channels=int(source.in_channels))

    @property
    def location(self) -> str:
        """How the docs refer to the bundle folder."""
        return f"bundles/{self.plugin}" if self.bundle_root == "." else self.bundle_root


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that rejects duplicate keys (two fragments defining the same id)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate config id(s) {', '.join(duplicates)} in generated config")
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _template(name: str) -> str:
    return resources.files("cxrkit.bundle").joinpath("templates", name).read_text(encoding="utf-8")


def _values(params: BundleParams) -> dict[str, str]:
    return {
        "plugin": json.dumps(params.plugin),
        "image_size": str(int(params.image_size)),
        "head": json.dumps(params.head),
        "classes": json.dumps(list(params.classes)),
        "num_classes": str(len(params.classes)),
        "in_channels": str(int(params.in_channels)),
        "bundle_root": json.dumps(params.bundle_root),
    }


def render_config(kind: str, params: BundleParams) -> str:
    """The self-contained ``configs/<kind>.yaml`` text for ``params``.

    Raises:
        ValueError: unknown kind, an unknown placeholder, or two fragments defining one id.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; one of {', '.join(KINDS)}")
    values = _values(params)
    where = params.location
    header = (
        f"# cxrkit bundle '{params.plugin}': {kind} config (MONAI bundle format).\n"
        "# GENERATED by `python -m cxrkit.bundle.generate` from cxrkit/bundle/templates/ and the weight\n"
        f"# source '{params.plugin}'; edit the templates, not this file.\n"
        f"#   cxrkit run {_RUN_IDS[kind] if kind != 'evaluate' else 'evaluate'} {where} ...\n"
        f"#   python -m monai.bundle run {_RUN_IDS[kind]} --config_file {where}/configs/{kind}.yaml ...\n"
        "# Override any value with --name value"
        + (" (nested ids: --train#trainer#max_epochs 2)" if kind == "train" else "") + ".\n\n"
    )
    body = "".join(_template(f"{name}.yaml") for name in KINDS[kind])

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ValueError(f"unknown placeholder {match.group(0)} in the {kind} templates")
        return values[match.group(1)]

    text = header + _PLACEHOLDER.sub(substitute, body)
    yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass; validates the result
    return text


def _input_value_range(source: Any) -> list[float]:
    if source.intensity_range is not None:
        return [float(v) for v in source.intensity_range]
    mean = list(source.mean) * (source.in_channels if len(source.mean) == 1 else 1)
    std = list(source.std) * (source.in_channels if len(source.std) == 1 else 1)
    low = min((0.0 - m) / s for m, s in zip(mean, std))
    high = max((1.0 - m) / s for m, s in zip(mean, std))
    return [round(low, 4), round(high, 4)]


def render_metadata(params: BundleParams, runtime: bool = False) -> dict[str, Any]:
    """``configs/metadata.json`` with every field the MONAI bundle specification requires.

    Args:
        params: the bundle parameters (classes become ``outputs.pred.channel_def``).
        runtime: record the installed library versions (a run folder) instead of the
            versions the committed bundles are made with.
    """
    from cxrkit.weights import get_source

    source = get_source(params.plugin)
    versions = dict(MADE_WITH)
    packages = dict(REQUIRED_PACKAGES)
    if runtime:
        import monai
        import numpy
        import torch

        from cxrkit.versions import library_versions

        installed = library_versions()
        versions = {"monai": monai.__version__, "torch": torch.__version__, "numpy": numpy.__version__}
        packages.update({"cxrkit": installed["cxrkit"], "torchvision": installed["torchvision"],
                         "pytorch-ignite": installed["ignite"]})
    classes = list(params.classes)
    task = "Chest X-ray classification: " + " / ".join(classes)
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "first cxrkit bundle"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"].split("+")[0],
        "numpy_version": versions["numpy"],
        "required_packages_version": packages,
        "supported_apps": {},
        "name": f"cxrkit {params.plugin} chest X-ray classifier",
        "task": task,
        "description": (
            f"{source.architecture} backbone initialised from the '{params.plugin}' weight source "
            f"({source.description}) with the '{params.head}' head, fine-tuned on chest X-rays "
            "(Hossain et al. 2022 recipe: Adam 1e-3, batch 32, 50 epochs, no augmentation)."
        ),
        "authors": "cxrkit developers",
        "copyright": "Copyright (c) cxrkit developers. Pretrained weights: see docs/README.md for their origin.",
        "data_source": "COVID-19 Radiography Database, CoronaHack, Cohen COVID-19 image collection, or a folder/CSV",
        "data_type": "png, jpeg or DICOM chest radiographs",
        "image_classes": f"{params.in_channels}-channel chest X-ray, {params.image_size}x{params.image_size} pixels",
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
                    "num_channels": int(params.in_channels),
                    "spatial_shape": [int(params.image_size), int(params.image_size)],
                    "dtype": "float32",
                    "value_range": _input_value_range(source),
                    "is_patch_data": False,
                    "channel_def": {str(i): "grey" if params.in_channels == 1 else "RGB"[i]
                                    for i in range(int(params.in_channels))},
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
            "head": params.head,
            "image_size": int(params.image_size),
        },
    }


def render_logging_conf() -> str:
    """``configs/logging.conf`` (console logging at INFO)."""
    return _template("logging.conf")


def _render_text(name: str, params: BundleParams) -> str:
    from cxrkit.weights import get_source

    source = get_source(params.plugin)
    values = {
        "plugin": params.plugin,
        "architecture": source.architecture,
        "description": source.description,
        "filenames": ", ".join(f"`{f}`" for f in source.filenames) or "none: random initialisation",
        "origin": source.origin or "n/a",
        "import_command": source.import_command() if source.pretrained else "(no weight file needed)",
        "image_size": str(params.image_size),
        "citation": source.citation or "n/a",
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _template(name))


def render_bundle(plugin: str) -> dict[str, str]:
    """Every committed file of ``bundles/<plugin>/``: relative path -> content."""
    params = BundleParams.for_plugin(plugin)
    files = {f"configs/{kind}.yaml": render_config(kind, params) for kind in KINDS}
    files["configs/metadata.json"] = json.dumps(render_metadata(params), indent=2) + "\n"
    files["configs/logging.conf"] = render_logging_conf()
    files["docs/README.md"] = _render_text("README.md", params)
    files["LICENSE"] = _render_text("LICENSE", params)
    files["models/README.md"] = _render_text("models_README.md", params)
    return files


def builtin_plugins() -> list[str]:
    """Names of the weight plugins cxrkit itself provides (one committed bundle each)."""
    from cxrkit.registry import weights

    return [name for name in weights.names() if weights.entry(name).distribution == "cxrkit"]


def write_bundles(root: str | Path | None = None, plugins: Sequence[str] | None = None) -> list[Path]:
    """Write the bundles of ``plugins`` (default: every built-in) under ``root``; returns the changed files."""
    base = Path(root) if root else bundles_root(must_exist=False)
    changed = []
    for plugin in plugins or builtin_plugins():
        for rel, text in render_bundle(plugin).items():
            path = base / plugin / rel
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                changed.append(path)
    return changed


def check_bundles(root: str | Path | None = None, plugins: Sequence[str] | None = None) -> list[str]:
    """Differences between the committed bundles and what the generator produces (empty: up to date)."""
    base = Path(root) if root else bundles_root(must_exist=False)
    problems = []
    for plugin in plugins or builtin_plugins():
        for rel, text in render_bundle(plugin).items():
            path = base / plugin / rel
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.read_text(encoding="utf-8") != text:
                problems.append(f"{path}: differs from the generated version")
    if not plugins and base.is_dir():
        known = set(builtin_plugins())
        problems += [f"{p}: no built-in weight plugin of that name" for p in sorted(base.iterdir())
                     if p.is_dir() and not p.name.startswith((".", "_")) and p.name not in known]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the bundles, or ``--check`` that the committed ones are current."""
    parser = argparse.ArgumentParser(prog="python -m cxrkit.bundle.generate", description=__doc__.splitlines()[0])
    parser.add_argument("plugins", nargs="*", help="weight plugins (default: every built-in one)")
    parser.add_argument("--root", help="bundles folder (default: the repository's bundles/)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file differs")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_bundles(args.root, args.plugins or None)
        for line in problems:
            print(line)
        if problems:
            print("bundles are out of date: run `python -m cxrkit.bundle.generate`", file=sys.stderr)
            return 1
        print("bundles are up to date")
        return 0
    changed = write_bundles(args.root, args.plugins or None)
    for path in changed:
        print(f"wrote {path}")
    print(f"{len(changed)} file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
