"""Resumable, reproducible training: RNG state, per-epoch data order, the last checkpoint.

A run stopped at any point continues from ``models/checkpoint_last.pt`` and
ends exactly where an uninterrupted run with the same seed ends:

* the data order of epoch ``e`` comes from a generator seeded with
  ``(seed, e)`` (:class:`EpochSeededSampler`), which hands the loader
  ``(index, epoch)`` pairs: each item's random transforms are seeded from
  ``(seed, epoch, index)`` where the item is made (:class:`cxrkit.engine.loaders.EpochItems`,
  :class:`cxrkit.data.imagecache.CachedImages`), in the main process or in a loader
  worker kept alive across epochs, so nothing about an epoch's data depends on
  earlier epochs or on which process made it;
* everything else random (dropout) draws from the global RNGs, whose state is
  saved with the model, optimiser, trainer counters, metric history, best-model
  tracking and early-stopping counters (:class:`RNGState`, :class:`RunCheckpoint`);
* the checkpoint is written at the end of every ``checkpoint_interval``-th
  epoch (and of the last one, and when early stopping ends the run), after
  validation, atomically (temporary file + ``os.replace``): an exception never
  leaves a half-written file, and the previous checkpoint stays until the new
  one is complete. With a :class:`cxrkit.engine.background.BackgroundWriter`
  the state is copied at the epoch's end and written while the next epoch
  trains; the next save, and the run's last, wait for it, and a failed write
  is raised there. A process killed outright (SIGKILL, power loss) while
  writing leaves its temporary file behind; the next start or resume of the
  run folder removes such files (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sized

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from torch.utils.data import Sampler

from cxrkit import options

__all__ = [
    "RNGState",
    "EpochSeededSampler",
    "EpochSeeding",
    "AtomicDiskSaver",
    "RunCheckpoint",
    "epoch_seed",
    "LAST_CHECKPOINT",
    "TEMPORARY_PATTERNS",
    "remove_stale_temporaries",
]

logger = logging.getLogger(__name__)

#: file name of the resume checkpoint inside ``<run>/models/``.
LAST_CHECKPOINT = "checkpoint_last.pt"
#: names of the temporary files the atomic writers make in ``models/``: ignite's ``DiskSaver(atomic=True)``
#: (``tempfile.NamedTemporaryFile``: ``tmp`` + 8 characters) and :mod:`cxrkit.atomic` (``.<name>.<8>.tmp``).
TEMPORARY_PATTERNS = (re.compile(r"tmp[a-z0-9_]{8}"), re.compile(r"\..+\.[a-z0-9_]{8}\.tmp"))


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the atomic writers' temporary files left in ``folder`` by a process that was killed while writing.

    Only names matching :data:`TEMPORARY_PATTERNS` are touched (never ``model.pt`` or
    ``checkpoint_last.pt``); call it only when no other process writes there (the start of a run).

    Returns:
        The files removed (each is logged with its size).
    """
    removed = []
    base = Path(folder)
    if not base.is_dir():
        return removed
    for path in sorted(base.iterdir()):
        if path.is_file() and not path.is_symlink() and any(p.fullmatch(path.name) for p in TEMPORARY_PATTERNS):
            size = path.stat().st_size
            path.unlink()
            removed.append(path)
            logger.warning("removed %s (%.1f MB): a temporary checkpoint file of an interrupted write", path,
                           size / 1e6)
    return removed


def epoch_seed(seed: int, epoch: int, stream: int = 0, *more: int) -> int:
    """A 63-bit seed derived from the run seed, the epoch, a stream number (order, workers...) and more numbers
    (e.g. an item's index)."""
    entropy = [int(seed), int(epoch), int(stream), *(int(m) for m in more)]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0]) >> 1


class RNGState:
    """The global random number generators (torch CPU and CUDA, numpy, ``random``) as a checkpointable object.

    ``state_dict`` holds only tensors, ints, floats and tuples, so the checkpoint
    loads with ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": str(kind),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"].cpu())
        npst = state["numpy"]
        np.random.set_state(
            (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
        )
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        # the CUDA generators of a GPU run; a CPU-only machine (or one with fewer GPUs) resumes without them
        cuda_states = list(state.get("cuda") or ()) if torch.cuda.is_available() else []
        for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_state).cpu(), index)


class EpochSeededSampler(Sampler):
    """Random (or sequential) order whose permutation depends only on ``(seed, epoch)``.

    Args:
        data_source: the dataset (only its length is used).
        seed: the run seed.
        shuffle: ``False`` gives ``0..n-1`` every epoch (validation).
        with_epoch: yield ``(index, epoch)`` pairs instead of indices, so that whoever makes the item
            (a loader worker that lives across epochs included) knows the epoch and can seed the item's
            random transforms from ``(seed, epoch, index)`` (:class:`cxrkit.engine.loaders.EpochItems`).
    """

    def __init__(self, data_source: Sized, seed: int = 0, shuffle: bool = True, with_epoch: bool = False) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.with_epoch = bool(with_epoch)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (1-based, as Ignite counts)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data_source)

    def order(self) -> list[int]:
        """This epoch's indices."""
        n = len(self.data_source)
        if not self.shuffle:
            return list(range(n))
        generator = torch.Generator()
        generator.manual_seed(epoch_seed(self.seed, self.epoch, 0))
        return torch.randperm(n, generator=generator).tolist()

    def __iter__(self) -> Iterator[Any]:
        order = self.order()
        if self.with_epoch:
            return iter([(index, self.epoch) for index in order])
        return iter(order)


class EpochSeeding:
    """Ignite handler: at every epoch start, derive the data order and augmentation seeds from ``(seed, epoch)``.

    Sets the loader's :class:`EpochSeededSampler` epoch, reseeds the loader's
    ``generator`` (which seeds the worker processes and, through MONAI's worker
    init, their random transforms) and, for ``num_workers=0``, the random
    transforms of the dataset in this process.

    Args:
        loader: a DataLoader built by :func:`cxrkit.engine.workflow.make_loader`.
        seed: the run seed.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, seed: int = 0) -> None:
        if not isinstance(getattr(loader, "sampler", None), EpochSeededSampler):
            raise TypeError("EpochSeeding needs a loader whose sampler is an EpochSeededSampler (use make_loader)")
        if getattr(loader, "generator", None) is None:
            raise TypeError("EpochSeeding needs a loader with its own torch.Generator (use make_loader)")
        self.loader = loader
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from monai.data.utils import set_rnd

        epoch = engine.state.epoch
        self.loader.sampler.set_epoch(epoch)
        self.loader.generator.manual_seed(epoch_seed(self.seed, epoch, 1))
        set_rnd(self.loader.dataset, epoch_seed(self.seed, epoch, 2) % (2**32))


def open_resume_checkpoint(path: Path) -> Mapping[str, Any]:
    """Open ``checkpoint_last.pt`` with cxrkit's safe opener (static pickle scan, then ``weights_only=True``).

    Raises:
        ValueError: the file is damaged, or would run code when unpickled (then it was not written
            by a cxrkit training run: its checkpoints hold only tensors, numbers and strings).
    """
    from cxrkit.weights.checkpoint import open_checkpoint
    from cxrkit.weights.errors import UnsafeCheckpointError, WeightError

    try:
        checkpoint = open_checkpoint(path)
    except UnsafeCheckpointError as exc:
        raise ValueError(
            f"cannot resume: {path} would run code when opened (it references "
            f"{', '.join(exc.globals) or 'unknown objects'}); cxrkit's run checkpoints hold only tensors and "
            "numbers, so this file was not written by cxrkit. Start the run again without --resume."
        ) from None
    except WeightError as exc:
        raise ValueError(f"cannot resume: {exc}") from exc
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"cannot resume: {path} holds a {type(checkpoint).__name__}, not a run checkpoint")
    return checkpoint


class AtomicDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` that writes atomically, optionally in the background, and never deletes a
    fixed-name file before replacing it.

    Ignite removes the previous file of a :class:`~ignite.handlers.Checkpoint`
    before saving the next one; with a fixed file name (``model.pt``) that would
    leave a moment with no file at all. Here the new file is written to a
    temporary name and moved over the old one with ``os.replace``, and removing
    a name in ``keep`` is a no-op. Saved files hold CPU tensors (a checkpoint
    written on a GPU loads on a CPU-only machine) and are made readable by the
    group, like ``torch.save`` would.

    Args:
        dirname: folder of the files (created if needed).
        keep: file names that are only ever replaced, never removed.
        writer: write on this :class:`~cxrkit.engine.background.BackgroundWriter`'s thread: the state is
            copied now (:func:`~cxrkit.engine.background.snapshot`) and written while training goes on;
            ``None`` writes before returning.
    """

    def __init__(self, dirname: str | os.PathLike[str], keep: tuple[str, ...] = (), writer: Any = None) -> None:
        super().__init__(str(dirname), atomic=True, create_dir=True, require_empty=False)
        self.keep = tuple(keep)
        if writer is not None and not callable(getattr(writer, "submit", None)):
            raise TypeError(f"writer must be a BackgroundWriter, got {type(writer).__name__}")
        self.writer = writer

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        from cxrkit.engine.background import snapshot, to_host

        if self.writer is None:
            self._write(to_host(checkpoint), filename, metadata)
            return
        copy, ready = snapshot(checkpoint)
        self.writer.submit(lambda: self._write(to_host(copy, ready), filename, metadata), name=filename)

    def _write(self, checkpoint: Mapping, filename: str, metadata: Mapping | None) -> None:
        super().__call__(checkpoint, filename, metadata)
        try:
            os.chmod(Path(self.dirname) / filename, 0o644)
        except OSError:  # pragma: no cover - permissions are a nicety
            pass

    def remove(self, filename: str) -> None:
        if filename in self.keep:
            return
        super().remove(filename)


class RunCheckpoint:
    """Ignite handler: save everything needed to resume after validation; load it at start when resuming.

    Attach it LAST to the trainer, after validation and the metric recorder, so
    the saved state includes this epoch's validation. It saves every
    ``interval``-th epoch, the last epoch, and the epoch at which early stopping
    ends the run; with a ``writer`` the file is written in the background and the
    run's last save waits until it is on disk.

    Args:
        save_dir: the run's ``models/`` folder.
        objects: objects with ``state_dict``/``load_state_dict`` (model, optimizer, RNG, metric
            history, best-model checkpoint, early stopping); ``None`` values are skipped.
            The trainer is added as ``"trainer"`` when attached.
        resume: load ``save_dir/checkpoint_last.pt`` when the trainer starts.
        filename: checkpoint file name.
        interval: save every this many epochs (``checkpoint_interval``; the last epoch always saves).
        writer: a :class:`~cxrkit.engine.background.BackgroundWriter` (shared with the best-model
            checkpoint, so the last save also waits for ``model.pt``), or ``None`` to write in place.

    Raises:
        ValueError: an object cannot be checkpointed, or ``interval`` below 1.
        FileNotFoundError: ``resume`` is set but the checkpoint is missing (at start).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        objects: Mapping[str, Any],
        resume: bool = False,
        filename: str = LAST_CHECKPOINT,
        interval: Any = 1,
        writer: Any = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.objects = {k: v for k, v in dict(objects).items() if v is not None}
        for name, obj in self.objects.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise ValueError(f"cannot checkpoint '{name}': {type(obj).__name__} has no state_dict/load_state_dict")
        if "trainer" in self.objects:
            raise ValueError("'trainer' is added by attach(); do not pass it in objects")
        self.resume = bool(resume)
        self.filename = filename
        self.interval = int(options.integer(interval, "checkpoint_interval", minimum=1))
        self.writer = writer
        self.saved_epoch: int | None = None
        self._checkpoint: Checkpoint | None = None

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    def attach(self, engine: Engine) -> None:
        to_save = dict(self.objects, trainer=engine)
        self._checkpoint = Checkpoint(
            to_save,
            AtomicDiskSaver(self.save_dir, keep=(self.filename,), writer=self.writer),
            filename_pattern=self.filename,
            n_saved=1,
        )
        engine.add_event_handler(Events.STARTED, self.clean)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load, to_save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def clean(self, engine: Engine) -> None:
        """Remove temporary files a killed run left in ``save_dir`` (rank 0: the one that writes there)."""
        import ignite.distributed as idist

        if idist.get_rank() == 0:
            remove_stale_temporaries(self.save_dir)

    def load(self, engine: Engine, to_load: dict[str, Any]) -> None:
        """Restore every object from the checkpoint (``weights_only=True``, tensors read onto the CPU first)."""
        if not self.path.is_file():
            raise FileNotFoundError(
                f"cannot resume: {self.path} does not exist (the run ended before its first epoch finished); "
                "start the run again without --resume"
            )
        checkpoint = open_resume_checkpoint(self.path)
        missing = sorted(set(to_load) - set(checkpoint))
        if missing:
            raise KeyError(f"{self.path} lacks {', '.join(missing)}; it was not written by this kind of run")
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint)
        if max_epochs is not None:
            engine.state.max_epochs = max(int(max_epochs), int(engine.state.epoch))
        self.saved_epoch = int(engine.state.epoch)
        logger.info("resumed from %s at epoch %d (of %s)", self.path, engine.state.epoch, engine.state.max_epochs)

    def is_last(self, engine: Engine) -> bool:
        """Whether the epoch that just ended is the run's last (its end, or early stopping)."""
        return bool(engine.should_terminate) or int(engine.state.epoch) >= int(engine.state.max_epochs or 0)

    def __call__(self, engine: Engine) -> None:
        """At an epoch's end: save when the interval says so, or when the run ends here (and wait for it)."""
        last = self.is_last(engine)
        if last or int(engine.state.epoch) % self.interval == 0:
            self.save(engine)
        if last:
            self.wait()

    def finish(self, engine: Engine) -> None:
        """At the run's end: save the final epoch if it was not saved yet, and wait until every file is written."""
        if self.saved_epoch != int(engine.state.epoch):
            self.save(engine)
        self.wait()

    def wait(self) -> None:
        """Wait for the background writer (nothing without one).

        Raises:
            Exception: a background write failed.
        """
        if self.writer is not None:
            self.writer.wait()

    def save(self, engine: Engine) -> None:
        """Write ``checkpoint_last.pt`` atomically (in the background with a writer)."""
        assert self._checkpoint is not None, "attach() first"
        # a fixed file name: make ignite treat every epoch as a new save
        self._checkpoint.reset()
        self._checkpoint(engine)
        self.saved_epoch = int(engine.state.epoch)
        logger.debug("saved %s (epoch %d)", self.path, engine.state.epoch)
