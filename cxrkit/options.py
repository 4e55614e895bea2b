"""Option values and command-line options: the one place where cxrkit reads a setting.

A setting reaches cxrkit from a bundle config (``cache: true``), from a
command line (``--cache true``, which MONAI's runner passes on as the string
``"true"``), from a MONAI Label request (``{"cam": "yes"}``) or from an
environment variable. Every reader goes through this module, so every
setting accepts the same spellings and a bad value is an error that names
the option (never a silent ``False``):

* :func:`optional` - ``None`` for the spellings of nothing (``null``, ``none``, ``""``);
* :func:`text` - an optional name or path (``false`` also means nothing);
* :func:`flag` - a boolean (``true/false``, ``yes/no``, ``on/off``, ``1/0``);
* :func:`optional_flag` / :func:`auto_flag` - a boolean that may be left to a default (``null``/``auto``);
* :func:`flag_or_path` - ``--resume``: a boolean or a folder;
* :func:`integer` / :func:`number` - numbers with bounds;
* :func:`device_name` - ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``;
* :func:`parse_overrides` - free ``--key value`` pairs (bundle overrides, adapter options).

The second half declares command-line options in one vocabulary:
:func:`add_option` registers ``--image_size`` (underscores, as the config
ids) together with its hyphenated twin ``--image-size`` and any old
spelling kept for scripts (shown nowhere in ``--help``); :func:`add_common`
declares the options that mean the same in every command (``--dataset_dir``,
``--output_dir``, ``--device``, ``--no_progress``...). ``cxrkit`` and the
``python -m`` tools build their parsers with these, and a test walks every
parser for dialect slips.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "NULL_WORDS",
    "TRUE_WORDS",
    "FALSE_WORDS",
    "optional",
    "text",
    "flag",
    "optional_flag",
    "auto_flag",
    "flag_or_path",
    "integer",
    "number",
    "device_name",
    "parse_overrides",
    "arg_type",
    "add_option",
    "add_common",
    "CommandFormatter",
    "COMMON",
]

#: spellings of "nothing" (case-insensitive, surrounding spaces ignored).
NULL_WORDS = frozenset({"", "none", "null"})
#: spellings of true and false.
TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _shown(name: str) -> str:
    """How an option is named in a message: ``--name``, an environment variable as it is."""
    return name if name.startswith("-") or name.isupper() else f"--{name}"


def _word(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) else None


def optional(value: Any) -> Any:
    """``None`` for ``None`` and the spellings of nothing (``null``, ``none``, ``""``); else ``value``."""
    return None if value is None or _word(value) in NULL_WORDS else value


def text(value: Any) -> str | None:
    """An optional name or path: ``None`` for nothing (``False``, ``null``, ``none``, ``""``, ``false``), else the
    stripped string."""
    if value is None or value is False:
        return None
    word = str(value).strip()
    return None if word.lower() in NULL_WORDS | {"false"} else word


def flag(value: Any, name: str = "option") -> bool:
    """A boolean from a config, command-line or request value.

    ``True``/``False``, ``1``/``0`` and ``true/false``, ``yes/no``, ``on/off``,
    ``1/0`` (any case); ``None`` and the spellings of nothing are ``False``
    (a setting left unset).

    Raises:
        ValueError: any other value; the message names the option.
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    word = _word(value)
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS or word in NULL_WORDS:
        return False
    raise ValueError(f"{_shown(name)} must be true or false, got {value!r}")


def optional_flag(value: Any, name: str = "option", unset: Iterable[str] = ("auto",)) -> bool | None:
    """:func:`flag`, or ``None`` (decide later) for nothing and the words in ``unset`` (default ``auto``).

    Raises:
        ValueError: not a boolean spelling; the message names the option.
    """
    if optional(value) is None or _word(value) in set(unset):
        return None
    return flag(value, name)


def auto_flag(value: Any, name: str, auto: bool) -> bool:
    """:func:`flag` where ``auto`` (or nothing) means ``auto``, the caller's choice (e.g. "on a GPU").

    Raises:
        ValueError: not ``auto`` or a boolean spelling.
    """
    chosen = optional_flag(value, name)
    return bool(auto) if chosen is None else chosen


def flag_or_path(value: Any, name: str = "option") -> tuple[bool, str | None]:
    """``(on, path)`` from an option that is a boolean or a path (``--resume true`` / ``--resume RUN_DIR``)."""
    if value is None or isinstance(value, (bool, int, float)):
        return flag(value, name), None
    word = _word(value) or ""
    if word in TRUE_WORDS | FALSE_WORDS | NULL_WORDS:
        return flag(value, name), None
    return True, str(value).strip()


def integer(value: Any, name: str, minimum: int | None = None, maximum: int | None = None,
            allow_none: bool = False) -> int | None:
    """A whole number within ``[minimum, maximum]``; ``None`` for nothing when ``allow_none``.

    Raises:
        ValueError: not a whole number, out of bounds, or nothing where a number is needed.
    """
    if optional(value) is None:
        if allow_none:
            return None
        raise ValueError(f"{_shown(name)} needs a whole number")
    try:
        if isinstance(value, bool):
            raise ValueError
        real = float(value)
        whole = int(real)
        if real != whole:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{_shown(name)} must be a whole number, got {value!r}") from None
    if minimum is not None and whole < minimum:
        raise ValueError(f"{_shown(name)} must be >= {minimum}, got {whole}")
    if maximum is not None and whole > maximum:
        raise ValueError(f"{_shown(name)} must be <= {maximum}, got {whole}")
    return whole


def number(value: Any, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """A real number within ``[minimum, maximum]``.

    Raises:
        ValueError: not a number, or out of bounds.
    """
    try:
        real = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_shown(name)} must be a number, got {value!r}") from None
    if real != real or (minimum is not None and real < minimum) or (maximum is not None and real > maximum):
        bounds = f"between {minimum} and {maximum}" if minimum is not None and maximum is not None else (
            f">= {minimum}" if minimum is not None else f"<= {maximum}")
        raise ValueError(f"{_shown(name)} must be {bounds}, got {value!r}")
    return real


def device_name(value: Any, name: str = "device") -> str:
    """A device spelling, lower case: ``auto`` (also for nothing), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Whether the device exists is checked where it is used
    (:func:`cxrkit.engine.hardware.select_device`).

    Raises:
        ValueError: any other spelling.
    """
    word = str(optional(value) or "auto").strip().lower()
    if not _DEVICE.match(word):
        raise ValueError(f"unknown {_shown(name)} {value!r}: use auto, cpu, cuda or cuda:N")
    return word


def _override_value(token: str) -> Any:
    """One value as ``python -m monai.bundle`` reads it (Python Fire): ``2`` -> 2, ``[1,2]`` -> a list."""
    from fire.parser import DefaultParseValue

    return DefaultParseValue(token)


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """Free ``--key value`` pairs: ``["--epochs", "2", "--cache", "--loss=focal"]`` -> ``{"epochs": 2, ...}``.

    Values are read as MONAI's command line (Python Fire) reads them; a bare
    ``--key`` is ``True``. Keys use the config spelling: ``--image-size`` is
    ``image_size`` and ``::`` separates nested ids as ``#`` does.

    Raises:
        ValueError: a token that is not ``--key``, or a key given twice.
    """
    out: dict[str, Any] = {}
    tokens = list(tokens)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"unexpected argument {token!r}: options are --key value pairs")
        key, eq, inline = token[2:].partition("=")
        if eq:
            value: Any = _override_value(inline)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value = _override_value(tokens[i + 1])
            i += 2
        else:
            value = True
            i += 1
        key = key.replace("::", "#").replace("-", "_")
        if key in out:
            raise ValueError(f"--{key} is given twice")
        out[key] = value
    return out


# ---- command-line options -----------------------------------------------------------------------------------


def arg_type(check: Callable[..., Any], **bounds: Any) -> Callable[[str], Any]:
    """An argparse ``type`` from a reader of this module: ``arg_type(integer, minimum=1)``."""

    def convert(value: str) -> Any:
        try:
            return check(value, "value", **bounds)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("--value ", "")) from None

    convert.__name__ = f"{check.__name__}({', '.join(f'{k}={v}' for k, v in bounds.items())})"
    convert.reader = (check, tuple(sorted(bounds.items())))  # type: ignore[attr-defined]
    return convert


def add_option(parser: argparse.ArgumentParser, name: str, *legacy: str, **kwargs: Any) -> argparse.Action:
    """Add ``--name`` with its hyphenated twin and old spellings kept for scripts.

    Args:
        parser: the (sub)parser.
        name: the option as the config spells it, ``--image_size``.
        legacy: old spellings still accepted (``--root``); ``--help`` does not show them.
        kwargs: ``add_argument`` arguments.

    Returns:
        The argparse action; ``action.legacy`` holds the old spellings.

    Raises:
        ValueError: ``name`` is not ``--`` + lower case words joined by underscores.
    """
    if not re.fullmatch(r"--[a-z][a-z0-9_]*", name):
        raise ValueError(f"option {name!r}: write options as --words_with_underscores (the config spelling)")
    strings = [name]
    twin = name[:2] + name[2:].replace("_", "-")
    if twin != name:
        strings.append(twin)
    extra = [s for s in legacy if s not in strings]
    action = parser.add_argument(*strings, *extra, **kwargs)
    action.legacy = tuple(extra)  # type: ignore[attr-defined]
    return action


def _device_type(value: str) -> str:
    try:
        return device_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_device_type.reader = (device_name, ())  # type: ignore[attr-defined]

#: the options that mean the same in every command: name -> ``add_argument`` keyword arguments.
COMMON: dict[str, dict[str, Any]] = {
    "dataset_dir": {"type": Path, "metavar": "DIR", "help": "the dataset folder"},
    "output_dir": {"type": Path, "metavar": "DIR", "help": "the output folder"},
    "output_file": {"type": Path, "metavar": "FILE", "help": "the file to write"},
    "device": {"type": _device_type, "default": "auto", "metavar": "DEVICE",
               "help": "auto (default: CUDA when available), cpu, cuda or cuda:N"},
    "no_progress": {"dest": "progress", "action": "store_false", "help": "no progress bars"},
    "trust_weights": {"action": "store_true",
                      "help": "allow full unpickling of the file (it can run code: only files you trust)"},
    "positive_class": {"default": None, "metavar": "CLASS", "help": "positive class name or index"},
    "image_size": {"type": arg_type(integer, minimum=1), "metavar": "PX", "help": "network input size in pixels"},
    "batch_size": {"type": arg_type(integer, minimum=1), "metavar": "N", "help": "images per batch"},
    "epochs": {"type": arg_type(integer, minimum=1), "metavar": "N", "help": "training epochs"},
    "seed": {"type": int, "default": 0, "metavar": "S", "help": "random seed (default: 0)"},
    "allow_host": {"action": "append", "default": [], "metavar": "NAME",
                   "help": "another host name this server answers to, e.g. a reverse proxy's public name "
                   "(repeatable; default: localhost, 127.0.0.1, ::1 and --host)"},
    "tracking": {"default": None, "choices": ("mlflow",), "metavar": "TRACKER",
                 "help": "mlflow: log the run(s) to MLflow (needs pip install \"cxrkit[tracking]\"; docs/training.md)"},
    "tracking_uri": {"default": None, "metavar": "URI",
                     "help": "with --tracking: the MLflow store or server, e.g. http://127.0.0.1:5000 (default: a "
                             "SQLite file beside the run folders, mlruns.db)"},
    "experiment_name": {"default": "cxrkit", "metavar": "NAME",
                        "help": "with --tracking: the MLflow experiment (default: cxrkit)"},
    "run_name": {"default": None, "metavar": "NAME",
                 "help": "with --tracking: the MLflow run's name (default: the output folder's name)"},
    "bootstrap": {"type": int, "default": 1000, "metavar": "N",
                  "help": "bootstrap resamples of the 95%% confidence intervals; 0 switches them off (default: 1000)"},
}


def add_common(parser: argparse.ArgumentParser, name: str, *legacy: str, **overrides: Any) -> argparse.Action:
    """Add one of the :data:`COMMON` options (``dataset_dir``, ``output_dir``, ``device``...).

    Args:
        parser: the (sub)parser.
        name: a key of :data:`COMMON`.
        legacy: old spellings this command accepted (``--root``, ``--out``...), still accepted.
        overrides: ``add_argument`` arguments that differ here (``help``, ``default``, ``required``);
            ``type`` and ``action`` stay the common ones.
    """
    kwargs = dict(COMMON[name])
    if {"type", "action"} & set(overrides):
        raise ValueError(f"--{name} has the same type and action in every command")
    kwargs.update(overrides)
    return add_option(parser, f"--{name}", *legacy, **kwargs)


class CommandFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows options under their config spelling only (not the hyphenated twin or old names).

    A description or epilog without line breaks is wrapped; one with line breaks (examples) is kept as written.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = set(getattr(action, "legacy", ()))
        shown = [s for s in action.option_strings if s not in hidden and not (s.startswith("--") and "-" in s[2:])]
        if not action.option_strings or not shown:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return ", ".join(shown)
        return f"{', '.join(shown)} {self._format_args(action, self._get_default_metavar_for_optional(action))}"
