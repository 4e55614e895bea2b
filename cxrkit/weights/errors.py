"""Errors and warnings raised while finding, opening and verifying weight files.

All errors derive from :class:`WeightError`, so callers can catch one type; each
message names the file, says what is wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "WeightError",
    "WeightFileNotFoundError",
    "WeightMismatchError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "UnverifiedWeightError",
    "WeightHashWarning",
    "TrustedLoadWarning",
]


class WeightError(Exception):
    """Base class of every weight-loading error."""


class WeightFileNotFoundError(WeightError, FileNotFoundError):
    """No file for the source in any place looked; the message lists them and the import command."""


class WeightMismatchError(WeightError):
    """The file's tensors do not fit the backbone (missing, unexpected or wrong-shaped keys).

    Attributes:
        missing: backbone keys absent from the file (after the key filter).
        unexpected: file keys the backbone does not have.
        mismatched: ``(key, file shape, model shape)`` for keys present in both.
        hints: guesses at what the file really is.
    """

    def __init__(
        self,
        message: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple, tuple]] | None = None,
        hints: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])
        self.hints = list(hints or [])


class UnsafeCheckpointError(WeightError):
    """The file needs full unpickling (it could run code) and was not explicitly trusted.

    Attributes:
        globals: the Python objects the pickle would import, where known.
    """

    def __init__(self, message: str, globals_: list[str] | None = None) -> None:
        super().__init__(message)
        self.globals = list(globals_ or [])


class CorruptCheckpointError(WeightError):
    """The file is truncated, empty, or not a PyTorch checkpoint at all."""


class UnverifiedWeightError(WeightError):
    """A file to import does not match the hash its origin publishes, and the user did not accept it.

    Attributes:
        sha256: the file's sha256 (what ``accept_sha256`` / ``--accept_sha256`` must name).
    """

    def __init__(self, message: str, sha256: str) -> None:
        super().__init__(message)
        self.sha256 = sha256


class WeightHashWarning(UserWarning):
    """The file's digest differs from the one its origin publishes."""


class TrustedLoadWarning(UserWarning):
    """A file was fully unpickled because the user trusted it."""
