"""Checkpoint files written on a background thread, so that training never waits for the disk.

Saving a checkpoint has two parts: taking a copy of the state (it must not
change while it is written) and writing the copy. :func:`snapshot` takes the
copy where the tensors are: a GPU tensor is cloned on its GPU (a device-to-device
copy, microseconds, queued behind the training step that made it), a CPU tensor
is cloned in memory. :class:`BackgroundWriter` then runs the write on one
thread, jobs in the order they were submitted: :func:`to_host` moves the GPU
copies to the CPU on a side CUDA stream (the copy engine works while the GPU
computes) and the job writes the file (atomically, see
:class:`cxrkit.engine.resume.AtomicDiskSaver`). Files therefore always hold
CPU tensors and load on any machine.

A failed write is raised by the next :meth:`BackgroundWriter.submit` or by
:meth:`BackgroundWriter.wait` (the run's last save waits), so no error is lost;
a full disk is raised as :class:`DiskFullError`, which says so (torch reports it
as an ``enforce fail`` of its zip writer, the ``OSError`` only in the chain).
At most ``max_pending`` jobs are queued or running; a further one waits for
the oldest, which bounds the memory the copies take.
"""

from __future__ import annotations

import errno
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Mapping

import torch

__all__ = ["BackgroundWriter", "DiskFullError", "snapshot", "to_host"]

logger = logging.getLogger(__name__)


class DiskFullError(OSError):
    """A file could not be written because its disk (or the user's quota) is full."""


def disk_full(exc: BaseException, name: str) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``name`` when ``exc`` or an error in its chain is ENOSPC / EDQUOT."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            full = DiskFullError(f"no space left on the disk while writing {name}: free some space (or choose "
                                 "another --output_dir), then continue the run with --resume RUN_DIR; the "
                                 "checkpoints written before are kept")
            full.errno = current.errno
            return full
        current = current.__cause__ or current.__context__
    return None


def _map(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside dicts, lists, tuples and named tuples."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        items = [(k, _map(v, fn)) for k, v in obj.items()]
        try:
            return type(obj)(items)
        except TypeError:
            return dict(items)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return obj


def _devices(obj: Any) -> set[torch.device]:
    found: set[torch.device] = set()

    def note(tensor: torch.Tensor) -> torch.Tensor:
        found.add(tensor.device)
        return tensor

    _map(obj, note)
    return found


def snapshot(obj: Any) -> tuple[Any, dict[torch.device, Any]]:
    """A copy of every tensor in ``obj`` (a state dict, nested), taken where the tensor is.

    Args:
        obj: dicts, lists and tuples of tensors and plain values (what ``state_dict()`` returns).

    Returns:
        ``(copy, ready)``: the copy and, per CUDA device, an event recorded after its clones
        (:func:`to_host` waits for it on a side stream). A GPU that cannot hold the copy gets it
        on the CPU instead (then ``ready`` has no entry for it).
    """
    ready: dict[torch.device, Any] = {}

    def clone(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.device.type != "cuda":
            return tensor.clone()
        try:
            return tensor.clone()
        except torch.cuda.OutOfMemoryError:
            return tensor.to("cpu")  # no room for a second copy: take it on the CPU now (waits for the GPU)

    copy = _map(obj, clone)
    for device in _devices(copy):
        if device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            ready[device] = event
    return copy, ready


def to_host(obj: Any, ready: Mapping[torch.device, Any] | None = None) -> Any:
    """``obj`` with every tensor on the CPU (CPU tensors are kept as they are, not copied).

    Args:
        obj: a state dict, nested.
        ready: events from :func:`snapshot`; the copies to the CPU run on a side CUDA stream
            after them, so the training stream does not wait.
    """
    streams: dict[torch.device, Any] = {}
    for device, event in (ready or {}).items():
        stream = torch.cuda.Stream(device)
        stream.wait_event(event)
        streams[device] = stream

    def host(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "cpu":
            return tensor
        stream = streams.get(tensor.device)
        if stream is None:
            return tensor.detach().to("cpu")
        with torch.cuda.stream(stream):
            return tensor.to("cpu")  # synchronises this side stream only

    return _map(obj, host)


class BackgroundWriter:
    """Runs file-writing jobs on one background thread, in submission order, and surfaces their errors.

    Args:
        max_pending: jobs queued or running at once; submitting another waits for the oldest.

    Raises:
        ValueError: ``max_pending`` below 1.
    """

    def __init__(self, max_pending: int = 2) -> None:
        if int(max_pending) < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = int(max_pending)
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: list[tuple[str, Future]] = []
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return sum(1 for _, job in self._jobs if not job.done())

    def submit(self, job: Callable[[], Any], name: str = "file") -> None:
        """Queue ``job`` (it writes ``name``).

        Raises:
            Exception: the error of an earlier job that failed (it is raised once).
        """
        self._collect(block=False)
        while True:
            with self._lock:
                if len(self._jobs) < self.max_pending:
                    break
                oldest = self._jobs[0]
            self._finish(oldest)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrkit-writer")
            self._jobs.append((name, self._pool.submit(job)))

    def wait(self) -> None:
        """Wait for every job.

        Raises:
            Exception: the first error of a failed job (each error is raised once).
        """
        self._collect(block=True)

    def drain(self) -> list[BaseException]:
        """Wait for every job without raising (a run that failed already): their errors are logged and returned."""
        errors: list[BaseException] = []
        while True:
            with self._lock:
                if not self._jobs:
                    return errors
                oldest = self._jobs[0]
            try:
                self._finish(oldest)
            except BaseException as exc:  # noqa: BLE001 - logged by _finish; the run's own error is the one raised
                errors.append(exc)

    def _collect(self, block: bool) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for entry in jobs:
            if block or entry[1].done():
                self._finish(entry)

    def _finish(self, entry: tuple[str, Future]) -> None:
        name, job = entry
        try:
            job.result()
        except BaseException as exc:
            with self._lock:
                if entry in self._jobs:
                    self._jobs.remove(entry)
            full = disk_full(exc, name)
            logger.error("writing %s failed: %s", name, full or exc)
            if full is not None:
                raise full from exc
            raise
        with self._lock:
            if entry in self._jobs:
                self._jobs.remove(entry)

    def close(self) -> None:
        """Wait for every job and stop the thread (a later :meth:`submit` starts a new one).

        Raises:
            Exception: the first error of a failed job.
        """
        try:
            self.wait()
        finally:
            with self._lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True)
