"""Errors raised by cxrkit's data layer.

All of them carry a message meant for the user: what is wrong, with which file
or folder, and how to fix it. They live in one module so the readers, the
adapters and the checks can raise them without importing one another.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

__all__ = ["DatasetError", "BadImageError", "BadImagesError", "find_bad_image_error", "decoding"]


class DatasetError(ValueError):
    """A dataset folder, metadata file, option or split manifest is not usable."""


class BadImageError(ValueError):
    """One image file cannot be read.

    Args:
        path: the file.
        reason: what is wrong with it, in words (e.g. ``"truncated PNG: ..."``).

    Attributes:
        path: the file, as given.
        reason: what is wrong with it.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) through pickling (DataLoader workers)
        return (type(self), (self.path, self.reason))


class BadImagesError(DatasetError):
    """Several images cannot be read; raised by :func:`cxrkit.data.check.check_images`.

    Args:
        bad: ``(path, reason)`` for every unreadable file.
        total: how many files were checked.
        shown: how many of them the message lists.

    Attributes:
        bad: ``(path, reason)`` for every unreadable file.
    """

    def __init__(self, bad: Sequence[tuple[str, str]], total: int, shown: int = 10) -> None:
        self.bad = list(bad)
        self.total = total
        self.shown = shown
        lines = [f"{len(self.bad)} of {total} image files cannot be read:"]
        lines += [f"  {path}: {reason}" for path, reason in self.bad[:shown]]
        if len(self.bad) > shown:
            lines.append(f"  ... and {len(self.bad) - shown} more")
        lines.append(
            "Replace or delete these files, or pass --skip_bad_images (skip_bad=True) to leave them out."
        )
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.bad, self.total, self.shown))


def find_bad_image_error(exc: BaseException | None) -> BadImageError | None:
    """The :class:`BadImageError` behind ``exc``, if any.

    MONAI wraps exceptions raised inside transforms and datasets in
    ``RuntimeError("applying transform ...")``; this walks the ``__cause__`` /
    ``__context__`` chain so a training loop can report the file that failed.

    Args:
        exc: any exception.

    Returns:
        The first :class:`BadImageError` in the chain, or ``None``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BadImageError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def decoding(path: object, what: str) -> Iterator[None]:
    """Turn any decoder failure inside the block into one :class:`BadImageError` for ``path``.

    Args:
        path: the file being decoded.
        what: the start of the reason, e.g. ``"corrupt or truncated DICOM file"``; the
            decoder's own message follows after a colon.

    Raises:
        BadImageError: the block raised; ``BadImageError`` and ``MemoryError`` pass unchanged.
    """
    try:
        yield
    except (BadImageError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder error becomes one clear message
        detail = str(exc).strip() or type(exc).__name__
        raise BadImageError(path, f"{what}: {detail}") from exc
