"""Step timing shared by the benchmarks: per-step wall time and time spent waiting for data.

A step is measured from the moment one batch is requested to the moment the
next one is, so everything the loop does between batches (forward, backward,
optimiser, metrics, handlers) counts, and the data wait is the part spent
inside ``next(loader)``. Summaries use the median step, which is robust to the
occasional slow step on a shared machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["StepStats", "StepTimer", "summarize", "best_round", "pooled"]


@dataclass(frozen=True)
class StepStats:
    """Timing of the measured steps of one loop.

    Attributes:
        steps: number of measured steps (after warm-up).
        batch_size: images per step.
        median_step_s: median wall time of one step.
        mean_step_s: mean wall time of one step.
        images_per_s: ``batch_size / median_step_s``.
        data_wait_share: total time waiting for batches / total step time.
    """

    steps: int
    batch_size: int
    median_step_s: float
    mean_step_s: float
    images_per_s: float
    data_wait_share: float

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def best_round(rounds: list[tuple[list[float], list[float]]], batch_size: int) -> StepStats:
    """The :class:`StepStats` of the round with the shortest median step.

    Like ``timeit``'s "best of N": on a shared machine other jobs only ever slow
    a round down, so the fastest round is the closest to the loop's own cost.

    Raises:
        ValueError: no round measured a step.
    """
    measured = [summarize(steps, waits, batch_size) for steps, waits in rounds if steps]
    if not measured:
        raise ValueError("no step was measured: use more --steps or a larger dataset")
    return min(measured, key=lambda stats: stats.median_step_s)


def pooled(rounds: list[tuple[list[float], list[float]]], batch_size: int) -> StepStats:
    """The :class:`StepStats` of every round's steps together."""
    return summarize([t for steps, _ in rounds for t in steps], [t for _, waits in rounds for t in waits], batch_size)


def summarize(step_s: list[float], wait_s: list[float], batch_size: int) -> StepStats:
    """:class:`StepStats` from per-step wall times and per-step data waits.

    Raises:
        ValueError: no step was measured.
    """
    if not step_s:
        raise ValueError("no step was measured: use more --steps or a larger dataset")
    median = statistics.median(step_s)
    return StepStats(
        steps=len(step_s),
        batch_size=int(batch_size),
        median_step_s=median,
        mean_step_s=statistics.fmean(step_s),
        images_per_s=batch_size / median if median > 0 else float("inf"),
        data_wait_share=sum(wait_s) / sum(step_s) if sum(step_s) > 0 else 0.0,
    )


class StepTimer:
    """Ignite handler: times every step of an engine after ``warmup`` steps.

    A step's time runs from ``GET_BATCH_STARTED`` to the next ``GET_BATCH_STARTED``
    (or to the end of the last iteration), so all handlers count; the data wait
    is ``GET_BATCH_STARTED`` to ``GET_BATCH_COMPLETED``. Epoch-end work
    (validation, checkpoints) is outside every step.

    Args:
        warmup: steps left out at the start of each epoch (first-call allocations, new data iterator).
    """

    def __init__(self, warmup: int = 2) -> None:
        if int(warmup) < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.warmup = int(warmup)
        self.rounds: list[tuple[list[float], list[float]]] = []  # (step times, data waits) per epoch
        self._start: float | None = None
        self._got: float | None = None
        self._count = 0
        self.epoch_s: float | None = None
        self._epoch_start = 0.0
        self._last_done: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_requested)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_received)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_done)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        # every epoch has its own warm-up (a new data iterator); times accumulate over epochs
        self._epoch_start = time.perf_counter()
        self._start = self._got = None
        self._count = 0
        self.rounds.append(([], []))

    def _close_step(self, now: float) -> None:
        if self._start is not None and self._got is not None:
            self._count += 1
            if self._count > self.warmup and self.rounds:
                self.rounds[-1][0].append(now - self._start)
                self.rounds[-1][1].append(self._got - self._start)
        self._start = self._got = None

    def _batch_requested(self, engine: Engine) -> None:
        now = time.perf_counter()
        self._close_step(now)
        self._start = now

    def _batch_received(self, engine: Engine) -> None:
        self._got = time.perf_counter()

    def _iteration_done(self, engine: Engine) -> None:
        self._last_done = time.perf_counter()

    def _epoch_completed(self, engine: Engine) -> None:
        # the last step ends with its iteration, before epoch-end handlers
        self._close_step(self._last_done if self._last_done is not None else time.perf_counter())
        self.epoch_s = time.perf_counter() - self._epoch_start

    @property
    def step_s(self) -> list[float]:
        """Every timed step, all epochs."""
        return [t for steps, _ in self.rounds for t in steps]

    @property
    def wait_s(self) -> list[float]:
        """Every timed step's data wait, all epochs."""
        return [t for _, waits in self.rounds for t in waits]

    def stats(self, batch_size: int, best: bool = False) -> StepStats:
        """The measured steps' :class:`StepStats`: all epochs together, or the fastest epoch (``best``)."""
        return best_round(self.rounds, batch_size) if best else pooled(self.rounds, batch_size)
