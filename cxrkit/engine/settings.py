"""The bundle configs' top-level settings: every value checked before anything runs, unknown names refused.

A bundle config's settings (``epochs``, ``image_size``, ``dataset_dir``...)
arrive as ``--key value`` overrides from ``cxrkit run`` or ``python -m
monai.bundle run``. Two checks make a mistake an error that names the option,
before a run folder or any other file is created:

* :func:`check_overrides`: every override names a config id. A top-level id
  must exist (``--max_itemz`` is an error suggesting ``--max_items``); a
  nested ``a#b#c`` must exist too, except a new argument of a component (a
  mapping with ``_target_``), which its constructor then checks.
  :func:`cxrkit.bundle.runner.bundle_workflow` calls it for ``cxrkit run``;
  under MONAI's own runner :func:`check_settings` reads the command line.
* :func:`check_settings`: the first step of every config's ``initialize``
  (``"$workflow.check_settings('training', @settings)"``, where the config's
  ``settings`` lists every setting as a reference). Each value goes through its
  reader of :mod:`cxrkit.options` (:data:`SETTINGS`: types, bounds, choices,
  files that must exist), and every problem is reported at once.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from cxrkit import options

__all__ = ["SETTINGS", "REQUIRED", "SettingsError", "check_settings", "check_overrides", "runner_arguments"]

Reader = Callable[[Any, str], Any]


class SettingsError(ValueError):
    """Bad option names or values; the message names each option, what is wrong and what is accepted."""


# ---- readers: value, option name -> checked value (ValueError naming the option) ----------------------------
def _whole(minimum: int | None = None, maximum: int | None = None, allow_none: bool = False) -> Reader:
    return lambda value, name: options.integer(value, name, minimum, maximum, allow_none)


def _auto_whole(minimum: int) -> Reader:
    """``auto`` (also for nothing), or a whole number >= ``minimum``."""

    def read(value: Any, name: str) -> int | str:
        if options.optional(value) is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return "auto"
        if isinstance(value, bool):
            raise ValueError(f"--{name} must be auto or a whole number, got {value!r}")
        return options.integer(value, name, minimum)

    return read


def _real(minimum: float | None = None, maximum: float | None = None, positive: bool = False) -> Reader:
    def read(value: Any, name: str) -> float:
        if isinstance(value, bool):
            raise ValueError(f"--{name} must be a number, got {value!r}")
        real = options.number(value, name, minimum, maximum)
        if positive and real <= 0:
            raise ValueError(f"--{name} must be > 0, got {value!r}")
        return real

    return read


def _real_or_none(minimum: float, maximum: float) -> Reader:
    def read(value: Any, name: str) -> float | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
            return None
        real = _real(minimum, maximum, positive=True)(value, name)
        return real

    return read


def _share(minimum: float) -> Reader:
    """A share of the images between ``minimum`` and 0.95; nothing: the default (what data preparation reads)."""

    def read(value: Any, name: str) -> float | None:
        if options.optional(value) is None:
            return None
        if isinstance(value, bool):
            raise ValueError(f"--{name} must be a number, got {value!r}")
        return options.number(value, name, minimum, 0.95)

    return read


def _adapter_options(value: Any, name: str) -> dict[str, Any]:
    """The dataset adapter's options: a mapping (``{views: PA}``); nothing is ``{}``."""
    if options.optional(value) is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"--{name} must be a mapping of the adapter's options, e.g. '{{views: PA}}' or "
                         f"'{{allow_missing: true}}' (cxrkit data tasks lists them), got {value!r}")
    return dict(value)


def _class_map(value: Any, name: str) -> dict[str, str]:
    from cxrkit.engine.prepare import parse_class_map

    return parse_class_map(value)


def _flag(value: Any, name: str) -> bool:
    return options.flag(value, name)


def _auto_flag(value: Any, name: str) -> bool | None:
    return options.optional_flag(value, name)


def _choice(choices: Callable[[], Iterable[str]]) -> Reader:
    def read(value: Any, name: str) -> str:
        known = list(choices())
        word = str(options.optional(value) or "").strip().lower()
        if word not in known:
            raise ValueError(f"--{name} must be one of {', '.join(known)}, got {value!r}{_nearest(word, known)}")
        return word

    return read


def _text(required: bool = False) -> Reader:
    def read(value: Any, name: str) -> str | None:
        if value is True or isinstance(value, (list, tuple, dict, set)):
            raise ValueError(f"--{name} must be text, got {value!r}")
        word = options.text(value)
        if required and word is None:
            raise ValueError(f"--{name} is needed")
        return word

    return read


def _path(kind: str = "any", required: bool = False) -> Reader:
    """An optional path that must exist (``kind``: ``any``, ``dir`` or ``file``) when given."""

    def read(value: Any, name: str) -> str | None:
        word = _text(required)(value, name)
        if word is None:
            return None
        path = Path(word).expanduser()
        if kind == "dir" and not path.is_dir():
            raise ValueError(f"--{name} {word}: no such folder")
        if kind == "file" and not path.is_file():
            raise ValueError(f"--{name} {word}: no such file")
        if kind == "any" and not path.exists():
            raise ValueError(f"--{name} {word}: no such file or folder")
        return str(path)

    return read


def _betas(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"--{name} must be two numbers, e.g. --{name} '[0.9,0.999]', got {value!r}")
    first, second = (_real(0.0, 1.0)(v, name) for v in value)
    if first >= 1.0 or second >= 1.0:
        raise ValueError(f"--{name} must be two numbers in [0, 1), got {value!r}")
    return first, second


def _device(value: Any, name: str) -> str:
    return options.device_name(value, name)


def _resume(value: Any, name: str) -> tuple[bool, str | None]:
    return options.flag_or_path(value, name)


def _positive_class(value: Any, name: str) -> Any:
    if value is None or isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    raise ValueError(f"--{name} must be a class name or index, got {value!r}")


def _registered(registry: str) -> Reader:
    """A name of a registry (``weights``, ``datasets``): unknown names are the registry's own clear error."""

    def read(value: Any, name: str) -> str:
        word = _text(required=True)(value, name)
        from cxrkit import registry as registries

        found = getattr(registries, registry)
        if word not in found.names():
            raise ValueError(f"--{name} {word!r} is not a known {registry[:-1]}{_nearest(word, found.names())}; "
                             f"known: {', '.join(sorted(found.names()))}")
        return word

    return read


def _heads() -> Iterable[str]:
    from cxrkit.networks.heads import HEADS

    return HEADS


def _losses() -> Iterable[str]:
    from cxrkit.engine.losses import LOSSES

    return LOSSES


#: ``mode`` values (:data:`cxrkit.experiment.linear_probe.MODES`, which imports the runner: named here).
MODES = ("finetune", "linear_probe")


#: every top-level setting of the bundle configs -> its reader (the same meaning in every config).
SETTINGS: dict[str, Reader] = {
    # common
    "bundle_root": _text(),
    "plugin": _registered("weights"),
    "image_size": _whole(minimum=1),
    "head": _choice(_heads),
    "pool": _text(),
    "device": _device,
    "num_workers": _auto_whole(minimum=0),
    "num_threads": _whole(minimum=1, allow_none=True),
    "batch_size": _whole(minimum=1),
    "seed": _whole(minimum=0, maximum=2**32 - 1),
    "amp": _auto_flag,
    "channels_last": _auto_flag,
    "compile": _flag,
    "progress": _flag,
    "verbose": _auto_flag,
    # data
    "dataset_dir": _path("dir"),
    "dataset": _registered("datasets"),
    "task": _text(),
    "dataset_options": _adapter_options,
    "max_items": _whole(minimum=2, allow_none=True),
    "val_fraction": _share(0.01),
    "test_fraction": _share(0.0),
    "near_duplicates": _flag,
    "split_manifest": _text(),
    "folds": _whole(minimum=2, allow_none=True),
    "fold": _whole(minimum=0),
    "skip_bad_images": _flag,
    "cache": _flag,
    "augment": _flag,
    # network
    "weights_path": _path("file"),
    "trust_weights": _flag,
    "allow_missing_weights": _flag,
    "freeze_until": _text(),
    "mode": _choice(lambda: MODES),
    "feature_cache": _text(),
    "drop_path_rate": _real(minimum=0.0),
    "grad_checkpointing": _flag,
    # optimisation
    "epochs": _whole(minimum=1),
    "lr": _real(minimum=0.0, positive=True),
    "betas": _betas,
    "eps": _real(minimum=0.0, positive=True),
    "weight_decay": _real(minimum=0.0),
    "opt": _choice(lambda: ("adam", "adamw")),
    "layer_decay": _real_or_none(0.0, 1.0),
    "lr_schedule": _choice(lambda: ("constant", "cosine")),
    "warmup_epochs": _real(minimum=0.0),
    "loss": _choice(_losses),
    "focal_gamma": _real(minimum=0.0),
    "class_weighted_loss": _auto_flag,
    # run record
    "output_dir": _text(),
    "resume": _resume,
    "best_metric": _text(required=True),
    "positive_class": _positive_class,
    "early_stopping_patience": _whole(minimum=1, allow_none=True),
    "val_interval": _whole(minimum=1),
    "val_batch_size": _auto_whole(minimum=1),
    "checkpoint_interval": _whole(minimum=1),
    "deterministic": _flag,
    "tensorboard_images": _whole(minimum=0),
    "record_sample_ids": _flag,
    "calibrate": _flag,
    "console_lines": _flag,
    # experiment tracking (--tracking mlflow: cxrkit.tracking; tracking_uri's default needs the run folder: not here)
    "experiment_name": _text(required=True),
    "run_name": _text(),
    "tracking_parent": _text(),
    "save_execute_config": _text(),
    # evaluate / inference
    "subset": _choice(lambda: ("all", "val", "train", "test")),
    "class_map": _class_map,
    "in_channels": _whole(minimum=1),
    "optimize_inference": _flag,
    "input": _path("any"),
    "output_file": _text(),
}

#: workflow -> settings it cannot run without -> the message when one is missing.
REQUIRED: dict[str, dict[str, str]] = {
    "training": {"dataset_dir": "no dataset given: pass --dataset_dir DIR (and --dataset NAME if it is not "
                                "'radiography')"},
    "evaluate": {"dataset_dir": "no dataset given: pass --dataset_dir DIR"},
    "inference": {"input": "no input given: pass --input FILE_OR_DIR (an image file or a folder of images)"},
}


def _nearest(word: str, known: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(word), list(known), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""


def check_settings(workflow: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check a config's settings (its ``initialize`` calls this first); under ``python -m monai.bundle run`` the
    command line's option names too.

    Args:
        workflow: ``training``, ``evaluate`` or ``inference``.
        values: the config's settings as resolved (``settings`` of the config: id -> ``@id``).

    Returns:
        The checked values (as the readers of :mod:`cxrkit.options` read them).

    Raises:
        SettingsError: every unknown option and bad value at once, each named.
    """
    if workflow not in REQUIRED:
        raise ValueError(f"unknown workflow {workflow!r}: training, evaluate or inference")
    monai_args = runner_arguments()
    if monai_args is not None:
        config, overrides = monai_args
        check_overrides(config, overrides, f"the {workflow} config")
    problems, checked = [], {}
    for name, value in values.items():
        reader = SETTINGS.get(name)
        if reader is None:
            continue  # a setting of a newer or third-party config: its component checks it
        if name in REQUIRED[workflow] and options.optional(value) is None:
            problems.append(REQUIRED[workflow][name])
            continue
        try:
            checked[name] = reader(value, name)
        except ValueError as exc:
            problems.append(str(exc))
    manifest = checked.get("split_manifest")
    if workflow == "training" and manifest is not None and not Path(manifest).expanduser().is_file():
        problems.append(f"--split_manifest {manifest}: no such file")
    folds, fold = checked.get("folds"), checked.get("fold")
    if folds is not None and fold is not None and fold >= folds:
        problems.append(f"--fold must be between 0 and {folds - 1} for --folds {folds}, got {fold}")
    if problems:
        raise SettingsError(f"bad option value{'s' if len(problems) > 1 else ''}: " + "; ".join(problems))
    return checked


# ---- option names -----------------------------------------------------------------------------------------
#: keys MONAI reads in any component mapping.
_COMPONENT_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")


def _arguments(target: Any) -> list[str] | None:
    """The keyword arguments ``target`` (a ``_target_`` dotted path) accepts; ``None``: any, or unknown."""
    from pydoc import locate

    found = locate(str(target)) if isinstance(target, str) else None
    if found is None:
        return None  # not importable here: MONAI reports it when it builds the component
    try:
        parameters = inspect.signature(found).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _exists(config: Any, parts: list[str]) -> tuple[bool, list[str]]:
    """Whether the nested id ``parts`` exists (or is an argument its component accepts); else the names at the
    level where it stops."""
    node = config
    for i, part in enumerate(parts):
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
            if i == len(parts) - 1 and "_target_" in node:
                # a new constructor argument: one the component's class accepts
                accepted = _arguments(node["_target_"])
                if accepted is None or part in accepted or part in _COMPONENT_KEYS:
                    return True, []
                return False, sorted(set(accepted) | {str(k) for k in node})
            return False, [str(k) for k in node]
        if isinstance(node, list):
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            return False, [str(k) for k in range(len(node))]
        return False, []
    return True, []


def check_overrides(config: Mapping[str, Any], overrides: Iterable[str], where: str = "the config") -> None:
    """Refuse override names that are not ids of ``config``, suggesting the nearest known names.

    Args:
        config: the raw config (as loaded, before parsing).
        overrides: the override ids (``epochs``, ``train#trainer#max_epochs``; ``::`` is read as ``#``).
        where: the config, for the message.

    Raises:
        SettingsError: the unknown names, each with its nearest known ones.
    """
    problems = []
    top = [str(k) for k in config if k != "_meta_"]
    for key in overrides:
        parts = str(key).replace("::", "#").split("#")
        if parts[0] == "_meta_":
            continue  # bundle metadata: MONAI's own
        found, siblings = _exists(config, parts)
        if found:
            continue
        if len(parts) == 1 or parts[0] not in config:
            problems.append(f"--{key}{_nearest(parts[0], top, '--')}")
        else:
            depth = next(i for i in range(1, len(parts) + 1) if not _exists(config, parts[:i])[0])
            prefix = "--" + "#".join(parts[: depth - 1]) + "#"
            problems.append(f"--{key}{_nearest(parts[depth - 1], siblings, prefix)}")
    if problems:
        raise SettingsError(
            f"unknown option{'s' if len(problems) > 1 else ''} for {where}: {'; '.join(problems)}. Options are the "
            "config's ids (its top-level settings, or nested ids such as --train#trainer#max_epochs that exist in it)"
        )


def _runner_parameters() -> set[str]:
    """Argument names of ``python -m monai.bundle run`` that are not config overrides."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow, run

    names: set[str] = set()
    for function in (run, create_workflow, ConfigWorkflow.__init__):
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) and parameter.name != "self":
                names.add(parameter.name)
    return names


def runner_arguments(argv: list[str] | None = None) -> tuple[Mapping[str, Any], list[str]] | None:
    """``(raw config, override ids)`` of a ``python -m monai.bundle run`` command line, else ``None``.

    The overrides are the command line's ``--key`` options less the runner's own arguments
    (``--config_file``, ``--meta_file``, ``--logging_file``, ``--args_file``...); an ``--args_file``'s
    overrides count too. ``None`` when this process is not MONAI's runner or its config cannot be read
    (MONAI reports that itself).
    """
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).as_posix() if argv else ""
    if not program.endswith("monai/bundle/__main__.py") or len(argv) < 2 or argv[1] != "run":
        return None
    from monai.bundle import ConfigParser

    tokens = argv[2:]
    while tokens and not tokens[0].startswith("--"):
        tokens = tokens[1:]  # positional run id
    try:
        given = options.parse_overrides(tokens)
    except ValueError:
        return None
    runner = _runner_parameters()
    if given.get("args_file"):
        try:
            extra = ConfigParser.load_config_file(str(given["args_file"]))
        except Exception:  # noqa: BLE001 - MONAI reports a bad args file itself
            return None
        given = {**{str(k).replace("::", "#"): v for k, v in dict(extra or {}).items()}, **given}
    if given.get("tracking"):
        runner |= {"output_dir", "tracking_uri", "experiment_name", "run_name", "save_execute_config"}
    config_file = given.get("config_file")
    if not config_file:
        return None
    try:
        config = ConfigParser.load_config_files(config_file)
    except Exception:  # noqa: BLE001 - MONAI reports a missing or bad config file itself
        return None
    return config, [k for k in given if k not in runner]
