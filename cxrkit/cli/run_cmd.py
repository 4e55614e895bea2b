"""``cxrkit run training|evaluate|inference BUNDLE [--key value ...]``: run a bundle with MONAI's runner.

The short form of ``python -m monai.bundle run <id> --config_file BUNDLE/configs/<kind>.yaml``:
it takes a bundle folder (``bundles/inat_swav``, a plugin name, or a run
folder), sets ``--bundle_root`` to it and calls :func:`monai.bundle.run`
(a ``ConfigWorkflow``) with the same overrides. Values are parsed exactly as
MONAI's command line (Python Fire) parses them, so both forms behave alike.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_parser", "run", "parse_overrides", "WORKFLOWS", "user_error"]

logger = logging.getLogger(__name__)

#: command word -> (config file, MONAI run id)
WORKFLOWS: dict[str, tuple[str, str]] = {
    "training": ("train.yaml", "training"),
    "evaluate": ("evaluate.yaml", "evaluating"),
    "inference": ("inference.yaml", "inference"),
}
_ALIASES = {"train": "training", "evaluating": "evaluate", "eval": "evaluate", "infer": "inference"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="train, evaluate or run inference with a MONAI bundle (any --key value overrides the config)",
        description=(
            "Run a bundle's training, evaluate or inference config with MONAI's bundle runner. Every "
            "--key value pair overrides the config, e.g. --dataset_dir DIR --epochs 3 --loss focal "
            "--output_dir runs/x --device cpu; nested ids with '#': --train#trainer#max_epochs 2."
        ),
        epilog=(
            "examples:\n  cxrkit run training bundles/inat_swav --dataset_dir data/COVID-19_Radiography_Dataset\n"
            "  cxrkit run training bundles/inat_swav --resume runs/inat_swav-20240101-120000\n"
            "  cxrkit run evaluate runs/inat_swav-20240101-120000 --dataset_dir DIR --subset val\n"
            "  cxrkit run inference runs/inat_swav-20240101-120000 --input xray.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workflow", choices=sorted(set(WORKFLOWS) | set(_ALIASES)), metavar="WORKFLOW",
                   help="training | evaluate | inference")
    p.add_argument("bundle", help="bundle folder (bundles/<plugin>), plugin name, or run folder")
    p.set_defaults(func=run, accepts_overrides=True)


def _value(text: str) -> Any:
    """Parse one value like ``python -m monai.bundle`` (Fire) does."""
    from fire.parser import DefaultParseValue

    return DefaultParseValue(text)


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """``["--epochs", "2", "--cache", "--loss=focal"]`` -> ``{"epochs": 2, "cache": True, "loss": "focal"}``.

    Raises:
        ValueError: a token that is not ``--key``, or a key given twice.
    """
    out: dict[str, Any] = {}
    i = 0
    tokens = list(tokens)
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"unexpected argument {token!r}: overrides are --key value pairs")
        key, eq, inline = token[2:].partition("=")
        if eq:
            value: Any = _value(inline)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value = _value(tokens[i + 1])
            i += 2
        else:
            value = True  # a bare flag, as Fire reads it
            i += 1
        key = key.replace("::", "#")
        if key in out:
            raise ValueError(f"--{key} is given twice")
        out[key] = value
    return out


def user_error(exc: BaseException) -> BaseException | None:
    """The user-facing cause of a bundle failure (bad option, missing file...), unwrapping MONAI's errors."""
    from cxrkit.registry import RegistryError

    wanted: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RegistryError, KeyError, TypeError)
    try:
        from cxrkit.weights import WeightError

        wanted += (WeightError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        from cxrkit.data import DatasetError

        wanted += (DatasetError,)
    except ImportError:  # pragma: no cover
        pass
    seen = set()
    found = None
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, wanted) and not str(current).startswith(("Failed to ", "Component to instantiate")):
            found = current
        current = current.__cause__ or current.__context__
    return found


def run_bundle(workflow: str, bundle: str | Path, overrides: dict[str, Any] | None = None) -> None:
    """Run ``workflow`` of ``bundle`` through :func:`monai.bundle.run` with ``overrides``.

    When training is resumed (``--resume RUN_DIR``), the run folder's own
    ``configs/train.yaml`` is used, so the run continues with exactly its
    settings; further overrides still apply.

    Raises:
        cxrkit.bundle.BundleNotFoundError: not a bundle folder.
        FileNotFoundError: the bundle lacks the workflow's config.
        Exception: whatever the workflow raises.
    """
    import warnings

    from monai.bundle import run as monai_run

    from cxrkit.bundle import find_bundle

    workflow = _ALIASES.get(workflow, workflow)
    config_name, run_id = WORKFLOWS[workflow]
    root = find_bundle(bundle)
    config = root / "configs" / config_name
    if not config.is_file():
        raise FileNotFoundError(f"{config} does not exist: {root} has no {workflow} config")
    pairs = dict(overrides or {})
    if workflow == "training" and "resume" in pairs:
        # resuming: the run folder's own resolved config has every setting of the run
        from cxrkit.engine.record import resume_target

        resuming, target = resume_target(pairs["resume"])
        folder = Path(target or pairs.get("output_dir") or "") if resuming else None
        if folder and (folder / "configs" / config_name).is_file() and folder.resolve() != root:
            logger.info("resuming %s with its own configs/%s", folder, config_name)
            root = folder.resolve()
            config = root / "configs" / config_name
    pairs.setdefault("bundle_root", str(root))
    logging_file = root / "configs" / "logging.conf"
    with warnings.catch_warnings():
        # MONAI warns that configs run code; these are cxrkit's own or the user's configs
        warnings.filterwarnings("ignore", message="parsing config_file")
        monai_run(
            run_id=run_id,
            config_file=str(config),
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=str(logging_file) if logging_file.is_file() else None,
            **pairs,
        )


def run(args: argparse.Namespace) -> int:
    from cxrkit.bundle import BundleNotFoundError
    from cxrkit.cli import CLIError

    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as exc:
        raise CLIError(str(exc), code=2) from None
    try:
        run_bundle(args.workflow, args.bundle, overrides)
    except (BundleNotFoundError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - show the user's mistake, not MONAI's wrapper
        cause = user_error(exc)
        if cause is None:
            raise
        logger.debug("bundle failed", exc_info=exc)
        raise CLIError(f"{type(cause).__name__}: {cause}") from exc
    return 0
