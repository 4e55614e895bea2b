"""Opening a checkpoint file safely, and computing its digests.

Files are read with ``torch.load(weights_only=True)``: that unpickler builds only
tensors, containers, numbers and strings, and refuses anything that would import
and call other Python code. A file that needs more (a pickled ``nn.Module``,
numpy scalars, or a malicious payload) is refused with
:class:`~cxrkit.weights.errors.UnsafeCheckpointError` unless the caller passes
``trust=True``; then it is fully unpickled with a
:class:`~cxrkit.weights.errors.TrustedLoadWarning`.

Numpy scalars and dtypes (training scripts often store ``best_acc`` or
``lossMIN`` as ``numpy.float64``) are allowed: rebuilding them runs no code from
the file. Numpy arrays and everything else still need trust.

Before unpickling anything the file's format is sniffed, so a truncated
download, an HTML error page or random bytes give a
:class:`~cxrkit.weights.errors.CorruptCheckpointError`, never a suggestion to
trust the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable

from cxrkit.weights.errors import CorruptCheckpointError, TrustedLoadWarning, UnsafeCheckpointError

__all__ = ["file_digests", "open_checkpoint", "checkpoint_format"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL (\S+)")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def file_digests(path: str | os.PathLike[str], algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of a file, read once in 1 MiB chunks (a progress bar shows on a terminal).

    Args:
        path: the file.
        algorithms: :mod:`hashlib` names; ``"sha256"`` is always included.

    Returns:
        ``{algorithm: hexdigest}``.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    hashers = {name: hashlib.new(name) for name in dict.fromkeys(["sha256", *algorithms])}
    with path.open("rb") as fh, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=f"hashing {path.name}", disable=None, leave=False
    ) as bar:
        while chunk := fh.read(_CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
            bar.update(len(chunk))
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def checkpoint_format(path: str | os.PathLike[str]) -> str:
    """``"zip"`` (torch >= 1.6) or ``"legacy"`` (older torch.save) for a checkpoint file.

    Raises:
        CorruptCheckpointError: empty, truncated, or not a PyTorch checkpoint at all.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(16)
    if size == 0:
        raise CorruptCheckpointError(f"{path}: the file is empty (0 bytes); download it again.")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise CorruptCheckpointError(
                f"{path}: a zip-format PyTorch checkpoint whose end is missing or damaged ({exc}); "
                f"the file ({size} bytes) is probably truncated. Download it again and compare its hash."
            ) from exc
        if not any(n.endswith("data.pkl") for n in names):
            raise CorruptCheckpointError(f"{path}: a zip archive, but not a PyTorch checkpoint (no data.pkl inside).")
        return "zip"
    if head[:1] == b"\x80":  # pickle protocol opcode: torch.save's legacy format
        return "legacy"
    hint = ""
    if head.lstrip()[:1] == b"<":
        hint = " It starts like an HTML page: probably a failed or redirected download."
    elif len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        hint = " It looks like a safetensors file, which this loader does not read; convert it with torch.save."
    raise CorruptCheckpointError(
        f"{path}: not a PyTorch checkpoint (it starts with bytes {head[:8].hex()}).{hint} "
        "Check that this is the right file and download it again."
    )


def _numpy_scalar_globals() -> list[Any]:
    """Numpy scalar and dtype constructors, under their numpy 2 and numpy 1 paths (data only, no code)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    try:  # numpy 2
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.26 (what monailabel pins)
        from numpy.core.multiarray import scalar
    allowed: list[Any] = [
        (scalar, "numpy._core.multiarray.scalar"),
        (scalar, "numpy.core.multiarray.scalar"),
        (np.dtype, "numpy.dtype"),
    ]
    allowed += [(getattr(np.dtypes, n), f"numpy.dtypes.{n}") for n in getattr(np.dtypes, "__all__", [])]
    return allowed


def _safe_globals() -> Any:
    import torch

    return torch.serialization.safe_globals(_numpy_scalar_globals())


def _unsafe_globals_zip(path: Path) -> list[str]:
    import torch

    try:
        with _safe_globals():
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged archive
        raise CorruptCheckpointError(f"{path}: cannot read the checkpoint's pickle ({exc}); download it again.") from exc


def _unsafe_error(path: Path, names: list[str]) -> UnsafeCheckpointError:
    listed = ", ".join(names) if names else "unknown objects"
    return UnsafeCheckpointError(
        f"{path}: refusing to load: the file needs full unpickling, which can run arbitrary code "
        f"(it references {listed}). Weight files normally hold only tensors. If you trust where this "
        "file comes from, pass trust=True (--trust on the command line); otherwise get the file from its origin.",
        names,
    )


def open_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """Load a checkpoint onto the CPU without executing code from it.

    Args:
        path: the checkpoint file.
        trust: allow full unpickling when the safe loader refuses the file
            (a :class:`TrustedLoadWarning` is issued). Only for files from a
            source the user trusts.

    Returns:
        Whatever the file holds (usually a dict).

    Raises:
        UnsafeCheckpointError: the file needs full unpickling and ``trust`` is False.
            Nothing from the file has been executed.
        CorruptCheckpointError: truncated, empty, or not a checkpoint.
    """
    import torch

    path = Path(path)
    needs_trust: list[str] = []
    fmt = checkpoint_format(path)
    logger.debug("opening %s (%s format, weights_only first)", path, fmt)
    if fmt == "zip":
        needs_trust = _unsafe_globals_zip(path)
        if needs_trust and not trust:
            raise _unsafe_error(path, needs_trust)
    try:
        if not needs_trust:
            with _safe_globals():
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_IN_MESSAGE.findall(str(exc))
        names = [n for n in found if _DOTTED_NAME.fullmatch(n)]  # "torch._utils." = garbage
        if not names:
            raise CorruptCheckpointError(
                f"{path}: the checkpoint's pickle is damaged ({_first_line(exc)}); the file is probably "
                "truncated or not a checkpoint. Download it again and compare its hash."
            ) from exc
        if not trust:
            raise _unsafe_error(path, names) from None
        needs_trust = names
    except (RuntimeError, EOFError, OSError, IndexError, ValueError, KeyError, struct.error) as exc:
        raise CorruptCheckpointError(
            f"{path}: cannot read the checkpoint ({type(exc).__name__}: {_first_line(exc)}); the file is "
            "probably truncated or damaged. Download it again and compare its hash."
        ) from exc
    warnings.warn(
        f"fully unpickling {path} because it was explicitly trusted; it references "
        f"{', '.join(needs_trust or ['non-tensor objects'])}, which may run code.",
        TrustedLoadWarning,
        stacklevel=2,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - report any failure of the full unpickler as damage
        raise CorruptCheckpointError(f"{path}: cannot load the trusted file ({type(exc).__name__}: {exc}).") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
