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

Before unpickling anything the file's format is sniffed and its pickles are read
statically (:mod:`cxrkit.weights.picklescan`, bounded in time and memory): a
truncated download, an HTML error page or random bytes give a
:class:`~cxrkit.weights.errors.CorruptCheckpointError`, never a suggestion to
trust the file, and a file that would import anything outside the allow-list of
``weights_only=True`` (a plain ``pickle.dump`` of an ``os.system`` call, say) is
refused before any unpickler reads it.

A safetensors file (Hugging Face's format: an 8-byte header length, a JSON
header, raw tensor bytes) holds no code at all and is read with
:func:`safetensors.torch.load_file`; its header is checked first, so a truncated
download is a :class:`~cxrkit.weights.errors.CorruptCheckpointError`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from cxrkit.weights.errors import CorruptCheckpointError, TrustedLoadWarning, UnsafeCheckpointError
from cxrkit.weights.picklescan import PickleScan, PickleScanError, scan_pickle

__all__ = ["file_digests", "open_checkpoint", "checkpoint_format", "is_safetensors"]

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


def _unsafe_error(path: Path, names: list[str]) -> UnsafeCheckpointError:
    listed = ", ".join(names) if names else "unknown objects"
    return UnsafeCheckpointError(
        f"{path}: refusing to load: the file needs full unpickling, which can run arbitrary code "
        f"(it references {listed}). Weight files normally hold only tensors. If you trust where this "
        "file comes from, pass trust=True (--trust_weights on the command line); otherwise get the file from its origin.",
        names,
    )



_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first pickle of a legacy file
_LEGACY_PICKLES = 4  # after the magic number: protocol version, sys info, the object, the storage keys


@dataclass
class _Inspection:
    """A checkpoint's format and the globals its pickles import, found without unpickling it."""

    format: str  # "zip", "legacy" or "pickle"
    unsafe: list[str]


def _not_a_checkpoint(path: Path, head: bytes, size: int) -> CorruptCheckpointError:
    hint = ""
    if head.lstrip()[:1] == b"<":
        hint = " It starts like an HTML page: probably a failed or redirected download."
    elif len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        hint = " It looks like a safetensors file, which this loader does not read; convert it with torch.save."
    return CorruptCheckpointError(
        f"{path}: not a PyTorch checkpoint (it starts with bytes {head[:8].hex()}).{hint} "
        "Check that this is the right file and download it again."
    )


def _truncated(path: Path, size: int, exc: BaseException) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{path}: the checkpoint's pickle is damaged ({exc}); the file ({size} bytes) is probably truncated or "
        "not a checkpoint. Download it again and compare its hash."
    )


def _allowed_names() -> set[str]:
    """Globals ``torch.load(weights_only=True)`` builds (torch's allow-list, user additions, numpy scalars)."""
    from torch import _weights_only_unpickler as wo  # private, but what get_unsafe_globals_in_checkpoint uses

    names = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    return names | {name for _, name in _numpy_scalar_globals()}


def _scan_zip(path: Path, size: int, allowed: set[str]) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            pickles = [m for m in members if m.filename.endswith("data.pkl")]
            if not pickles:
                raise CorruptCheckpointError(
                    f"{path}: a zip archive, but not a PyTorch checkpoint (no data.pkl inside).")
            packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
            if packed:  # torch.save never compresses; a compressed member could expand without bound
                raise CorruptCheckpointError(
                    f"{path}: a zip archive with compressed members ({packed[0]}), which torch.save never "
                    "writes; not a PyTorch checkpoint.")
            with zf.open(pickles[0]) as fh:
                return scan_pickle(fh, allowed.__contains__, size=pickles[0].file_size).unsafe
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorruptCheckpointError(
            f"{path}: a zip-format PyTorch checkpoint whose end is missing or damaged ({exc}); "
            f"the file ({size} bytes) is probably truncated. Download it again and compare its hash."
        ) from exc
    except PickleScanError as exc:
        raise _truncated(path, size, exc) from exc


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # pragma: no cover - the scan found no globals
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def _is_legacy_magic(fh: BinaryIO, scan: PickleScan) -> bool:
    """Whether the first pickle (already scanned: no globals) is torch's legacy magic number."""
    if scan.globals or scan.end - scan.start > 64:
        return False
    fh.seek(scan.start)
    try:
        return _NoGlobals(io.BytesIO(fh.read(scan.end - scan.start))).load() == _LEGACY_MAGIC
    except Exception:  # noqa: BLE001 - any other first value means "not torch's legacy format"
        return False
    finally:
        fh.seek(scan.end)


def _scan_pickles(path: Path, size: int, allowed: set[str]) -> _Inspection:
    """A legacy ``torch.save`` file (magic number, then four pickles) or a plain pickle."""
    try:
        with path.open("rb") as fh:
            first = scan_pickle(fh, allowed.__contains__, size=size)
            if not _is_legacy_magic(fh, first):
                return _Inspection("pickle", first.unsafe)
            unsafe: list[str] = []
            for _ in range(_LEGACY_PICKLES):
                unsafe += [n for n in scan_pickle(fh, allowed.__contains__, size=size).unsafe if n not in unsafe]
            return _Inspection("legacy", unsafe)
    except PickleScanError as exc:
        raise _truncated(path, size, exc) from exc


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts like a safetensors file (little-endian header length, then ``{``)."""
    with Path(path).open("rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= struct.unpack("<Q", head[:8])[0] <= 100_000_000


def _load_safetensors(path: Path) -> dict[str, Any]:
    """A safetensors file's tensors (no code can run: the format holds none)."""
    import json

    from safetensors.torch import load_file

    size = path.stat().st_size
    with path.open("rb") as fh:
        length = struct.unpack("<Q", fh.read(8))[0]
        try:
            header = json.loads(fh.read(length))
        except ValueError as exc:
            raise CorruptCheckpointError(f"{path}: a safetensors file whose header is damaged ({exc}); "
                                         "download it again.") from exc
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + length + max(ends, default=0) > size:
        raise CorruptCheckpointError(
            f"{path}: a safetensors file of {size} bytes whose header promises {8 + length + max(ends)} bytes; the "
            "file is truncated. Download it again and compare its hash.")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CorruptCheckpointError(f"{path}: cannot read the safetensors file ({type(exc).__name__}: "
                                     f"{_first_line(exc)}).") from exc


def _inspect(path: Path) -> _Inspection:
    """Sniff the format and list the globals outside the allow-list, reading the pickles statically.

    Raises:
        CorruptCheckpointError: empty, truncated, or not a PyTorch checkpoint at all.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(16)
    if size == 0:
        raise CorruptCheckpointError(f"{path}: the file is empty (0 bytes); download it again.")
    if head.startswith(b"PK\x03\x04"):
        return _Inspection("zip", _scan_zip(path, size, _allowed_names()))
    if head[:1] == b"\x80":  # pickle protocol 2+: torch.save's legacy format, or a plain pickle
        return _scan_pickles(path, size, _allowed_names())
    raise _not_a_checkpoint(path, head, size)


def checkpoint_format(path: str | os.PathLike[str]) -> str:
    """``"zip"`` (torch >= 1.6), ``"legacy"`` (older ``torch.save``), ``"pickle"`` (``pickle.dump``) or ``"safetensors"``.

    The file's pickles are read statically (bounded in time and memory), never unpickled.

    Raises:
        CorruptCheckpointError: empty, truncated, or not a PyTorch checkpoint at all.
    """
    if Path(path).stat().st_size and is_safetensors(path):
        return "safetensors"
    return _inspect(Path(path)).format


def _warn_trusted(path: Path, names: list[str]) -> None:
    warnings.warn(
        f"fully unpickling {path} because it was explicitly trusted; it references "
        f"{', '.join(names or ['non-tensor objects'])}, which may run code.",
        TrustedLoadWarning,
        stacklevel=3,
    )


def _load_plain_pickle(path: Path, unsafe: list[str], trust: bool) -> Any:
    """A plain ``pickle.dump`` file: refused, or fully unpickled when trusted."""
    if not trust:
        if unsafe:
            raise _unsafe_error(path, unsafe)
        raise CorruptCheckpointError(
            f"{path}: a plain Python pickle, not a file written by torch.save; cxrkit opens it only with "
            "trust=True (--trust_weights), which can run code from it. Better: load it where it was made and re-save "
            "the state dict with torch.save(state_dict, path)."
        )
    _warn_trusted(path, unsafe)
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)  # noqa: S301 - the user explicitly trusted this file
    except Exception as exc:  # noqa: BLE001 - report any failure of the full unpickler as damage
        raise CorruptCheckpointError(f"{path}: cannot load the trusted file ({type(exc).__name__}: {exc}).") from exc


def open_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """Load a checkpoint onto the CPU without executing code from it.

    The file's pickles are first read statically (:mod:`cxrkit.weights.picklescan`): a
    file that would import anything outside ``torch.load(weights_only=True)``'s
    allow-list is refused before any unpickler touches it, whatever its format
    (zip, legacy ``torch.save`` or a plain pickle), within seconds and a few
    megabytes of memory.

    Args:
        path: the checkpoint file.
        trust: allow full unpickling when the file needs it (a
            :class:`TrustedLoadWarning` is issued). Only for files from a
            source the user trusts.

    Returns:
        Whatever the file holds (usually a dict).

    Raises:
        UnsafeCheckpointError: the file needs full unpickling and ``trust`` is False.
            Nothing from the file has been executed.
        CorruptCheckpointError: truncated, empty, not a checkpoint, or a plain
            pickle without ``trust``.
    """
    import torch

    path = Path(path)
    if path.stat().st_size and is_safetensors(path):
        return _load_safetensors(path)
    found = _inspect(path)
    logger.debug("opening %s (%s format; %d globals outside the allow-list)", path, found.format, len(found.unsafe))
    if found.format == "pickle":
        return _load_plain_pickle(path, found.unsafe, trust)
    needs_trust = list(found.unsafe)
    if needs_trust and not trust:
        raise _unsafe_error(path, needs_trust)
    try:
        if not needs_trust:
            with _safe_globals():
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = [n for n in _GLOBAL_IN_MESSAGE.findall(str(exc)) if _DOTTED_NAME.fullmatch(n)]
        if not names:  # "torch._utils." = garbage
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
    _warn_trusted(path, needs_trust)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - report any failure of the full unpickler as damage
        raise CorruptCheckpointError(f"{path}: cannot load the trusted file ({type(exc).__name__}: {exc}).") from exc



def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
