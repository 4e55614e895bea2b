"""A trained classifier ready for prediction, built from a bundle's own inference config.

:func:`load_model` accepts what training and export produce:

* a run folder (``runs/<plugin>-<timestamp>/``) or any bundle folder holding
  ``configs/inference.yaml`` (or ``.json``), ``configs/metadata.json`` and
  ``models/model.pt``: the network (``network_def``), the preprocessing
  (``preprocessing``) and the postprocessing (``postprocessing``) are built
  from the inference config with :class:`monai.bundle.ConfigParser`, the single
  source of truth, and ``models/model.pt`` is opened with
  ``torch.load(weights_only=True)``;
* an exported TorchScript file (``models/model.ts`` from
  :func:`cxrkit.serve.export.export_torchscript` / MONAI's ``ckpt_export``):
  the preprocessing and class names come from the run folder's configs beside
  it when present, otherwise from the inference config and metadata that
  MONAI embeds in the file's extra files.

Class names are read from the metadata's
``network_data_format.outputs.<first output>.channel_def`` (``{"0": "COVID", "1": "Normal"}``).
A run folder's records (``split.json``, ``calibration.json``) are checked first
(:meth:`cxrkit.runfolder.RunPaths.read_records`): a corrupt one is a :class:`ModelLoadError`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from cxrkit.runfolder import INFERENCE_CONFIGS, MetadataError, RunFolderError, RunPaths, metadata_classes

__all__ = ["LoadedModel", "ModelLoadError", "load_model", "class_names"]

logger = logging.getLogger(__name__)

_TS_SUFFIXES = (".ts", ".pt.ts", ".torchscript")


class ModelLoadError(ValueError):
    """A model folder or file cannot be used; the message names the file, the problem and the fix."""


def class_names(metadata: Mapping[str, Any], source: str | os.PathLike = "metadata.json") -> list[str]:
    """The class names, by output index, from bundle metadata (:func:`cxrkit.runfolder.metadata_classes`).

    Raises:
        ModelLoadError: no ``channel_def``, or its keys are not the indices ``0 .. n-1``.
    """
    try:
        return metadata_classes(metadata, source)
    except MetadataError as exc:
        raise ModelLoadError(str(exc)) from None


@dataclass
class LoadedModel:
    """A network in eval mode plus the preprocessing and class names it was trained with.

    Attributes:
        network: the classifier (``(B, C, H, W)`` -> ``(B, num_classes)`` logits), in eval mode on ``device``.
        preprocessing: the bundle's ``preprocessing`` transform (``{"image": path}`` -> ``{"image": tensor}``).
        postprocessing: the bundle's ``postprocessing`` (``{"pred": logits}`` -> ``{"pred": probabilities}``),
            or ``None`` to apply softmax.
        classes: class names by output index.
        device: where the network runs.
        model_file: ``models/model.pt`` or the TorchScript file.
        bundle_root: the run or bundle folder the configs came from (``None``: configs embedded in a .ts).
        kind: ``"pytorch"`` or ``"torchscript"``.
        config: the parsed inference config (``monai.bundle.ConfigParser``).
        autocast: ``torch.autocast`` arguments from the config's ``amp`` setting (empty: fp32), as the
            bundle's evaluator uses them.
    """

    network: nn.Module
    preprocessing: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    postprocessing: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None
    classes: list[str]
    device: torch.device
    model_file: Path
    bundle_root: Path | None
    kind: str
    config: Any = field(repr=False, default=None)
    autocast: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration(self) -> Any:
        """The temperature the postprocessing applies (:class:`cxrkit.calibration.Calibration`), or ``None``."""
        from monai.transforms import Compose

        from cxrkit.calibration import TemperatureScaled

        steps = self.postprocessing.flatten().transforms if isinstance(self.postprocessing, Compose) else (
            [self.postprocessing] if self.postprocessing is not None else [])
        found = next((t for t in steps if isinstance(t, TemperatureScaled)), None)
        return found.calibration if found is not None else None

    @property
    def supports_cam(self) -> bool:
        """Whether Grad-CAM can hook this network (TorchScript modules cannot be hooked)."""
        return self.kind == "pytorch"

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch of preprocessed images.

        Args:
            images: ``(B, C, H, W)`` tensor, as the preprocessing makes them.

        Returns:
            ``(B, num_classes)`` float tensor on the CPU; each row sums to 1.

        Raises:
            ModelLoadError: the network's output does not match the number of classes.
        """
        with torch.no_grad(), torch.autocast(self.device.type, enabled=bool(self.autocast), **self.autocast):
            logits = self.network(images.to(self.device))
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise ModelLoadError(
                f"{self.model_file}: the network returns shape {tuple(logits.shape)} but the metadata names "
                f"{len(self.classes)} classes ({', '.join(self.classes)}); the model and its configs do not belong "
                "together"
            )
        logits = logits.detach().float().cpu()
        if hasattr(logits, "as_tensor"):
            logits = logits.as_tensor()
        if self.postprocessing is None:
            return torch.softmax(logits, dim=1)
        rows = [torch.as_tensor(self.postprocessing({"pred": row})["pred"]).float() for row in logits]
        probs = torch.stack(rows)
        if hasattr(probs, "as_tensor"):
            probs = probs.as_tensor()
        if not torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-4):
            raise ModelLoadError(
                f"{self.bundle_root}: the inference config's postprocessing does not produce probabilities "
                "(rows do not sum to 1); it must apply softmax to `pred` (monai.transforms.Activationsd)"
            )
        return probs


def _find_config(root: Path) -> Path | None:
    config = RunPaths.of(root).inference_config
    return config if config.is_file() else None


def _parser(config: Path | Mapping[str, Any], bundle_root: Path, device: str, origin: str) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="parsing config_file")
            if isinstance(config, Path):
                parser.read_config(str(config))
            else:
                parser.read_config(dict(config))
    except Exception as exc:  # noqa: BLE001 - YAML/JSON errors of any kind
        raise ModelLoadError(f"{origin}: cannot read the inference config: {exc}") from exc
    parser["bundle_root"] = str(bundle_root)  # a moved run folder still finds itself
    if "device" in parser.config:
        parser["device"] = device
    return parser


def _parsed(parser: Any, key: str, origin: str, required: bool = True) -> Any:
    if key not in parser.config:
        if required:
            raise ModelLoadError(
                f"{origin}: the inference config has no `{key}`; cxrkit serves bundles whose "
                "configs/inference.yaml is self-contained (network_def, preprocessing, postprocessing)"
            )
        return None
    try:
        return parser.get_parsed_content(key, instantiate=True)
    except Exception as exc:  # noqa: BLE001 - MONAI wraps the real error; keep it in the message
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ModelLoadError(f"{origin}: cannot build `{key}` from the inference config: {cause}") from exc


def _device(device: str) -> torch.device:
    from cxrkit.engine.hardware import select_device

    try:
        return select_device(device)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None


def _autocast(parser: Any, device: torch.device, origin: str) -> dict[str, Any]:
    """The evaluator's mixed precision for the config's ``amp`` (``auto``: on CUDA only)."""
    from cxrkit.engine.hardware import amp_kwargs

    try:
        return amp_kwargs(parser.config.get("amp", "auto"), device)
    except ValueError as exc:
        raise ModelLoadError(f"{origin}: {exc}") from None


def _state_dict(path: Path, trust: bool) -> Mapping[str, torch.Tensor]:
    from cxrkit.weights.checkpoint import open_checkpoint
    from cxrkit.weights.errors import UnsafeCheckpointError, WeightError

    try:
        obj = open_checkpoint(path, trust=trust)  # static scan first: a hostile file is refused at once
    except UnsafeCheckpointError as exc:
        raise ModelLoadError(
            f"{path}: the file needs full unpickling, which can run code (it references "
            f"{', '.join(exc.globals) or 'unknown objects'}); cxrkit opens models with weights_only=True. "
            "Only if you trust its origin, pass --trust_weights (trust=True)"
        ) from exc
    except WeightError as exc:
        raise ModelLoadError(f"cannot read the model file: {exc}") from exc
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # a MONAI CheckpointSaver / training checkpoint
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    return obj


def _load_bundle(root: Path, model_file: Path, device: str, trust: bool, optimize: bool = True) -> LoadedModel:
    config = _find_config(root)
    if config is None:
        raise ModelLoadError(
            f"{root}: no configs/{' or configs/'.join(INFERENCE_CONFIGS)}; pass a run folder written by "
            "`cxrkit run training` (runs/<plugin>-<timestamp>) or a bundle folder"
        )
    meta_file = RunPaths.of(root).metadata
    if not meta_file.is_file():
        raise ModelLoadError(f"{root}: no configs/metadata.json (it names the classes); is this a run folder?")
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{meta_file}: not valid JSON: {exc}") from None
    classes = class_names(metadata, meta_file)
    try:
        RunPaths.of(root).read_records(classes)  # split.json and calibration.json, before anything uses them
    except RunFolderError as exc:
        raise ModelLoadError(str(exc)) from None
    parser = _parser(config, root, device, str(config))
    torch_device = _device(device)
    if model_file.suffix in (".pt", ".pth"):
        network = _parsed(parser, "network_def", str(config))
        if not isinstance(network, nn.Module):
            raise ModelLoadError(f"{config}: `network_def` builds {type(network).__name__}, not a torch module")
        state = _state_dict(model_file, trust)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"{model_file}: the weights do not fit the network built by {config} "
                f"(different plugin, head or class count?): {str(exc).splitlines()[0]}"
            ) from None
        kind = "pytorch"
    else:
        network = _jit_load(model_file, torch_device)[0]
        kind = "torchscript"
    network = network.to(torch_device).eval()
    if optimize and kind == "pytorch":
        from cxrkit.engine.inference import optimize_for_inference

        optimize_for_inference(network)  # as the bundle's inference config does (OptimizeForInference)
    return LoadedModel(
        network=network,
        preprocessing=_parsed(parser, "preprocessing", str(config)),
        postprocessing=_parsed(parser, "postprocessing", str(config), required=False),
        classes=classes,
        device=torch_device,
        model_file=model_file,
        bundle_root=root,
        kind=kind,
        config=parser,
        autocast=_autocast(parser, torch_device, str(config)),
    )


def _jit_load(path: Path, device: torch.device) -> tuple[nn.Module, dict, dict]:
    from monai.data import load_net_with_metadata

    extra = tuple(f"{Path(n).stem}.json" for n in INFERENCE_CONFIGS)  # MONAI stores configs as JSON
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
            return load_net_with_metadata(str(path), map_location=device, more_extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch.jit raises RuntimeError for any bad archive
        raise ModelLoadError(
            f"{path}: not a TorchScript model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "export one with `cxrkit export RUN_DIR`"
        ) from None


def _load_torchscript(path: Path, device: str, optimize: bool = True) -> LoadedModel:
    beside = path.parent.parent if path.parent.name == "models" else path.parent
    if _find_config(beside) is not None and RunPaths.of(beside).metadata.is_file():
        logger.info("using the configs of %s for %s", beside, path.name)
        return _load_bundle(beside, path, device, trust=False, optimize=optimize)
    torch_device = _device(device)
    network, metadata, extra = _jit_load(path, torch_device)
    embedded = next((extra[k] for k in extra if extra[k]), None)
    if not metadata or embedded is None:
        raise ModelLoadError(
            f"{path}: no configs/ folder beside it and no inference config embedded in the file; keep the "
            "file in its run folder (RUN_DIR/models/model.ts) or export it with `cxrkit export RUN_DIR`"
        )
    config = json.loads(embedded)
    parser = _parser(config, path.parent, device, f"{path} (embedded inference config)")
    return LoadedModel(
        network=network.eval(),
        preprocessing=_parsed(parser, "preprocessing", f"{path} (embedded inference config)"),
        postprocessing=_parsed(parser, "postprocessing", f"{path} (embedded inference config)", required=False),
        classes=class_names(metadata, f"{path} (embedded metadata)"),
        device=torch_device,
        model_file=path,
        bundle_root=None,
        kind="torchscript",
        config=parser,
        autocast=_autocast(parser, torch_device, f"{path} (embedded inference config)"),
    )


def load_model(source: str | os.PathLike, device: str = "auto", trust: bool = False,
               optimize: bool = True) -> LoadedModel:
    """Load a trained classifier from a run folder, a bundle folder or an exported TorchScript file.

    Args:
        source: a run/bundle folder (``configs/inference.yaml``, ``configs/metadata.json``,
            ``models/model.pt`` or ``models/model.ts``), or a ``.ts`` file.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        trust: open ``model.pt`` with full unpickling (only for files you trust).
        optimize: fold batch norms into convolutions and use ``channels_last``
            (:func:`cxrkit.engine.inference.optimize_for_inference`), as the bundle's inference config does;
            ``False`` keeps the network exactly as ``network_def`` builds it.

    Returns:
        The :class:`LoadedModel`.

    Raises:
        ModelLoadError: missing or unusable files; the message names the file and says how to fix it.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{source}: no such file or folder; pass a run folder (runs/<plugin>-<timestamp>)")
    path = path.resolve()
    if path.is_file():
        if path.name.endswith(_TS_SUFFIXES):
            return _load_torchscript(path, device, optimize)
        if path.suffix in (".pt", ".pth") and path.parent.name == "models":
            return _load_bundle(path.parent.parent, path, device, trust, optimize)
        raise ModelLoadError(
            f"{source}: pass a run folder, a bundle folder or an exported TorchScript file (.ts), "
            "not a single file of this kind"
        )
    if path.name in ("models", "configs") and _find_config(path.parent) is not None:
        path = path.parent
    trained = RunPaths.of(path).trained_model
    if trained is not None:
        return _load_bundle(path, trained, device, trust, optimize)
    if _find_config(path) is None:
        raise ModelLoadError(
            f"{source}: not a run folder or bundle (no configs/inference.yaml); pass the folder that "
            "`cxrkit run training` wrote (runs/<plugin>-<timestamp>)"
        )
    raise ModelLoadError(
        f"{path}: no trained model (models/model.pt or models/model.ts). A committed bundle holds none: "
        f"train one with `cxrkit run training {source} --dataset_dir DIR` and pass the run folder it writes"
    )
