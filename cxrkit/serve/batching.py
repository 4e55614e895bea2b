"""One inference worker per model: concurrent requests are queued and answered from batched forward passes.

A server thread per request that runs its own forward pass makes a model
slower under load, not faster: every pass uses all CPU threads, so fifty at
once thrash the cores (and the memory). :class:`BatchQueue` instead keeps one
worker thread per model. Request threads put their preprocessed image in a
bounded queue and wait; the worker takes the first waiting image, gathers more
for at most ``max_wait_ms`` (or until ``max_batch``), runs ONE forward pass with
``threads`` torch threads, and hands each request its row. When the queue is
full, :meth:`BatchQueue.submit` refuses at once with :class:`QueueFullError`,
which a server answers with HTTP 503 and ``Retry-After``.

Typical use (what the MONAI Label task does through :meth:`cxrkit.serve.Predictor.queue`)::

    queue = BatchQueue(predictor.probabilities, max_batch=16, max_wait_ms=5, max_queue=64)
    row = queue.submit(image)          # (num_classes,) probabilities of one (C, H, W) image
"""

from __future__ import annotations

import logging
import math
import os
import queue as queues
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

import torch

from cxrkit import options

__all__ = ["BatchQueue", "QueueFullError", "QueueSettings", "QueueClosedError"]

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The queue holds ``max_queue`` requests already; try again after ``retry_after`` seconds (HTTP 503).

    Attributes:
        retry_after: whole seconds after which the queue has probably drained.
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = int(retry_after)


class QueueClosedError(RuntimeError):
    """The queue was closed (its model was replaced or the server is stopping)."""


@dataclass(frozen=True)
class QueueSettings:
    """How a :class:`BatchQueue` batches; read from the environment by :meth:`from_env`.

    Attributes:
        max_batch: images per forward pass (``$CXRKIT_INFER_MAX_BATCH``, default 16).
        max_wait_ms: how long the worker waits for more images once one arrived (``$CXRKIT_INFER_MAX_WAIT_MS``,
            default 5).
        max_queue: requests waiting at most; more are refused (``$CXRKIT_INFER_MAX_QUEUE``, default 64).
        threads: torch threads of the forward pass (``$CXRKIT_INFER_THREADS``; default: all cores).
    """

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 64
    threads: int | None = None

    @classmethod
    def from_env(cls, environ: Any = None) -> "QueueSettings":
        """The settings from ``$CXRKIT_INFER_*`` (unset: the defaults).

        Raises:
            ValueError: a value that is not a number in range; the message names the variable.
        """
        env = os.environ if environ is None else environ
        return cls(
            max_batch=options.integer(env.get("CXRKIT_INFER_MAX_BATCH", cls.max_batch), "CXRKIT_INFER_MAX_BATCH",
                                      minimum=1),
            max_wait_ms=options.number(env.get("CXRKIT_INFER_MAX_WAIT_MS", cls.max_wait_ms),
                                       "CXRKIT_INFER_MAX_WAIT_MS", minimum=0.0, maximum=10_000.0),
            max_queue=options.integer(env.get("CXRKIT_INFER_MAX_QUEUE", cls.max_queue), "CXRKIT_INFER_MAX_QUEUE",
                                      minimum=1),
            threads=options.integer(env.get("CXRKIT_INFER_THREADS"), "CXRKIT_INFER_THREADS", minimum=1,
                                    allow_none=True),
        )


@dataclass
class _Request:
    image: torch.Tensor
    future: Future
    queued: float


class BatchQueue:
    """A bounded request queue in front of one worker thread that runs batched forward passes.

    Args:
        forward: ``(B, C, H, W)`` images -> ``(B, ...)`` rows (e.g. :meth:`cxrkit.serve.Predictor.probabilities`).
        settings: batch size, wait, queue bound and torch threads (default :meth:`QueueSettings.from_env`).
        name: for the worker thread's name and the log.

    Attributes:
        batches: forward passes run so far.
        answered: requests answered so far (the mean batch is ``answered / batches``).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], settings: QueueSettings | None = None,
                 name: str = "model") -> None:
        self.forward = forward
        self.settings = settings or QueueSettings.from_env()
        self.name = name
        self._queue: queues.Queue[_Request | None] = queues.Queue(maxsize=self.settings.max_queue)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.batches = 0
        self.answered = 0
        self._seconds_per_image = 0.05  # refined from measured passes; for Retry-After
        self._worker = threading.Thread(target=self._run, name=f"cxrkit-infer-{name}", daemon=True)
        self._worker.start()

    # -- requests --------------------------------------------------------------------------------------------
    def submit(self, image: torch.Tensor, timeout: float | None = None) -> torch.Tensor:
        """The row of one preprocessed ``(C, H, W)`` image, computed in a batch with the other waiting ones.

        Args:
            image: the preprocessed image.
            timeout: seconds to wait for the answer (``None``: as long as it takes).

        Raises:
            QueueFullError: ``max_queue`` requests are waiting already.
            QueueClosedError: the queue was closed.
            TimeoutError: no answer within ``timeout``.
            Exception: whatever the forward pass raised for the batch.
        """
        if self._closed.is_set():
            raise QueueClosedError(f"the inference queue of {self.name} is closed")
        request = _Request(image, Future(), time.monotonic())
        try:
            self._queue.put_nowait(request)
        except queues.Full:
            raise QueueFullError(
                f"{self.name}: {self.settings.max_queue} requests are waiting for the model; retry shortly",
                self.retry_after(),
            ) from None
        return request.future.result(timeout=timeout)

    def retry_after(self) -> int:
        """Whole seconds in which the waiting requests will probably have been answered (at least 1)."""
        pending = self._queue.qsize() + self.settings.max_batch
        return max(1, min(60, math.ceil(pending * self._seconds_per_image)))

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        return self._queue.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the requests already queued; later :meth:`submit` calls fail."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._queue.put(None, timeout=timeout)  # after the waiting requests: wakes and stops the worker
        except queues.Full:
            pass
        self._worker.join(timeout)

    # -- the worker -------------------------------------------------------------------------------------------
    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """``(batch, stop)``: ``first`` and whatever else arrives within ``max_wait_ms``, up to ``max_batch``."""
        batch = [first]
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000.0
        while len(batch) < self.settings.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queues.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        if self.settings.threads:
            torch.set_num_threads(int(self.settings.threads))
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            # one forward pass per input shape (a model's preprocessing gives one shape)
            groups: dict[tuple[int, ...], list[_Request]] = {}
            for request in batch:
                groups.setdefault(tuple(request.image.shape), []).append(request)
            for requests in groups.values():
                self._answer(requests)
        while True:  # a request that slipped in while closing: answer it with the reason
            try:
                item = self._queue.get_nowait()
            except queues.Empty:
                return
            if item is not None:
                item.future.set_exception(QueueClosedError(f"the inference queue of {self.name} is closed"))

    def _answer(self, requests: list[_Request]) -> None:
        started = time.monotonic()
        try:
            with torch.inference_mode():
                rows = self.forward(torch.stack([r.image for r in requests]))
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
            for request in requests:
                request.future.set_exception(exc)
            return
        took = time.monotonic() - started
        with self._lock:
            self.batches += 1
            self.answered += len(requests)
            self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * took / len(requests)
        for request, row in zip(requests, rows):
            request.future.set_result(row)
