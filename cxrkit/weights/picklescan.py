"""Reading a pickle's instructions without running it: which Python objects would it import?

A weight file is a pickle (torch's zip format keeps it in ``data.pkl``; the
legacy format and plain ``pickle.dump`` files are one or more pickles in a
row). Before anything unpickles a file, :func:`scan_pickle` walks the
instructions of one pickle with :mod:`pickletools`' opcode table and collects
every global it would import (``GLOBAL``, ``STACK_GLOBAL``, ``INST``,
extension codes). Nothing is built and nothing is executed, and the walk is
bounded: at most :data:`MAX_OPS` instructions, and the bytes of large
arguments (tensor data in plain pickles) are skipped with ``seek`` instead of
being read, so a hostile or huge file is answered within seconds and a few
megabytes of memory.

A ``STACK_GLOBAL`` is named only when the two instructions before it (not
counting memo stores and framing) push plain strings or fetch strings from the
memo; any other ``STACK_GLOBAL`` cannot be named statically and is reported as
:data:`DYNAMIC_GLOBAL`, which no allow-list contains.
"""

from __future__ import annotations

import pickletools
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

__all__ = ["PickleScan", "PickleScanError", "scan_pickle", "MAX_OPS", "DYNAMIC_GLOBAL"]

#: instructions read from one pickle before giving up (a ResNet50 state dict needs about 5,000).
MAX_OPS = 2_000_000
#: the name reported for a global assembled at unpickling time.
DYNAMIC_GLOBAL = "<a global assembled at unpickling time>"
_EXTENSION = "<a copyreg extension code>"
_SKIP_ABOVE = 1 << 16  # arguments longer than this are skipped with seek, never read
_NAME_MAX = 512  # module and attribute names longer than this are not names
_LINE_MAX = 1 << 16
_UNKNOWN = object()

_OPS = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
               "STRING"}
_NEUTRAL = {"PROTO", "FRAME", "MEMOIZE"} | _PUT_OPS  # leave the stack as it is
_LENGTH_PREFIX = {  # ArgumentDescriptor.n codes of length-prefixed arguments -> (size, struct format)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, "<B"),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, "<i"),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, "<I"),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, "<Q"),
}


class PickleScanError(ValueError):
    """The bytes are not a complete pickle (truncated, unknown instruction, too long)."""


@dataclass
class PickleScan:
    """What one pickle would import.

    Attributes:
        globals: every distinct global, in order of first appearance (``module.name``).
        unsafe: those ``is_allowed`` refused, in the same order.
        ops: instructions read.
        start: offset of the pickle's first byte.
        end: offset just after its ``STOP``.
    """

    globals: list[str] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)
    ops: int = 0
    start: int = 0
    end: int = 0


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise PickleScanError(f"the pickle ends early (wanted {n} more bytes at offset {fh.tell() - len(data)})")
    return data


def _line(fh: BinaryIO) -> bytes:
    line = fh.readline(_LINE_MAX)
    if not line.endswith(b"\n"):
        raise PickleScanError("the pickle ends early, or holds an overlong text argument")
    return line[:-1]


def _skip(fh: BinaryIO, n: int, size: int) -> None:
    """Move past ``n`` argument bytes without reading them (after checking they exist)."""
    if fh.tell() + n > size:
        raise PickleScanError(f"an argument of {n} bytes runs past the end of the data ({size} bytes)")
    fh.seek(n, 1)


def _argument(fh: BinaryIO, op: pickletools.OpcodeInfo, size: int) -> object:
    """The argument of ``op``: its value when small, else ``_UNKNOWN`` after skipping it."""
    arg = op.arg
    if arg is None:
        return None
    if arg.n == pickletools.UP_TO_NEWLINE:
        first = _line(fh)
        if op.name in ("GLOBAL", "INST"):
            return first, _line(fh)
        return first
    if arg.n >= 0:
        return _read(fh, arg.n)
    width, fmt = _LENGTH_PREFIX[arg.n]
    n = struct.unpack(fmt, _read(fh, width))[0]
    if n < 0:
        raise PickleScanError(f"{op.name} has a negative length")
    if n > _SKIP_ABOVE:
        _skip(fh, n, size)
        return _UNKNOWN
    return _read(fh, n)


def _text(op: pickletools.OpcodeInfo, raw: object) -> object:
    """A string argument as ``str`` (names are ASCII), else ``_UNKNOWN``."""
    if not isinstance(raw, bytes) or len(raw) > _NAME_MAX:
        return _UNKNOWN
    if op.name == "STRING":
        raw = raw.strip()[1:-1]  # a quoted repr; names need no escapes
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _UNKNOWN


def _memo_index(op: pickletools.OpcodeInfo, raw: object) -> int | None:
    if isinstance(raw, bytes) and op.name in ("GET", "PUT"):
        return int(raw) if raw.isdigit() else None
    if isinstance(raw, bytes) and raw:
        return int.from_bytes(raw, "little")
    return None


def scan_pickle(
    fh: BinaryIO,
    is_allowed: Callable[[str], bool] = lambda name: False,
    *,
    size: int | None = None,
    max_ops: int = MAX_OPS,
    stop_at_unsafe: bool = False,
) -> PickleScan:
    """Walk one pickle from ``fh``'s position to its ``STOP`` and list the globals it imports.

    Args:
        fh: a seekable binary file positioned at the pickle's first byte; left just after ``STOP``.
        is_allowed: whether a global (``"module.name"``) is acceptable.
        size: bytes available from the start of ``fh`` (default: found by seeking to the end).
        max_ops: instructions to read at most.
        stop_at_unsafe: return at the first global ``is_allowed`` refuses.

    Returns:
        A :class:`PickleScan`.

    Raises:
        PickleScanError: truncated data, an unknown instruction, or more than ``max_ops`` instructions.
    """
    start = fh.tell()
    if size is None:
        size = fh.seek(0, 2)
        fh.seek(start)
    scan = PickleScan(start=start)
    memo: dict[int, object] = {}  # only strings are kept; everything else is _UNKNOWN
    stack: list[object] = []  # the values pushed by the last consecutive string pushes / memo gets
    next_memo = 0

    def found(name: str) -> bool:
        if name not in scan.globals:
            scan.globals.append(name)
            if not is_allowed(name):
                scan.unsafe.append(name)
                return stop_at_unsafe
        return False

    while True:
        if scan.ops >= max_ops:
            raise PickleScanError(f"more than {max_ops:,} pickle instructions: not a weight file")
        key = fh.read(1)
        if not key:
            raise PickleScanError(f"the pickle ends early (no STOP instruction; {fh.tell() - start} bytes read)")
        op = _OPS.get(key)
        if op is None:
            raise PickleScanError(f"unknown pickle instruction {key!r} at offset {fh.tell() - 1}")
        raw = _argument(fh, op, size)
        scan.ops += 1
        name = op.name
        pushed: object = _UNKNOWN
        if name == "STOP":
            scan.end = fh.tell()
            return scan
        if name in ("GLOBAL", "INST"):
            module, attr = (part.decode("utf-8", "replace") for part in raw)  # type: ignore[union-attr]
            if found(f"{module}.{attr}"):
                break
        elif name == "STACK_GLOBAL":
            module, attr = stack[-2:] if len(stack) == 2 else (_UNKNOWN, _UNKNOWN)
            label = f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str) else DYNAMIC_GLOBAL
            if found(label):
                break
        elif name in ("EXT1", "EXT2", "EXT4"):
            if found(_EXTENSION):
                break
        elif name in _STRING_OPS:
            pushed = _text(op, raw)
        elif name in _GET_OPS:
            pushed = memo.get(_memo_index(op, raw), _UNKNOWN)  # type: ignore[arg-type]
        elif name in _PUT_OPS or name == "MEMOIZE":
            index = next_memo if name == "MEMOIZE" else _memo_index(op, raw)
            next_memo += name == "MEMOIZE"
            top = stack[-1] if stack else _UNKNOWN
            if index is not None and isinstance(top, str):
                memo[index] = top
            elif index is not None:
                memo.pop(index, None)
        if name in _STRING_OPS or name in _GET_OPS:
            stack = (stack + [pushed])[-2:]
        elif name not in _NEUTRAL:
            stack = []  # anything else may consume or reorder values: a later STACK_GLOBAL is not named
    scan.end = fh.tell()
    return scan
