"""Multi-process training through ``torchrun`` and :mod:`ignite.distributed`.

``torchrun --nproc_per_node N -m cxrkit run training BUNDLE ...`` starts N
copies of the same bundle run; this module makes them one training run:

* :func:`initialize` opens the process group from torchrun's environment
  (``gloo`` on CPU, ``nccl`` on GPU) through ``idist.initialize``;
* :func:`auto_model` / :func:`auto_optim` wrap the network in
  ``DistributedDataParallel`` and the optimiser (``idist.auto_model`` /
  ``idist.auto_optim``) for the trainer only; the evaluator, the checkpoints and
  ``models/model.pt`` use the plain network, so saved ``state_dict`` keys never
  carry a ``module.`` prefix;
* :class:`ShardedEpochSampler` gives each rank its share of the seeded epoch
  permutation: padded for training (equal batch counts, as DDP needs), not
  padded for validation, so validation metrics, reduced across processes by
  Ignite, are exactly those of the whole validation set (:func:`shard_safe_metrics`
  and :class:`ShardedPredictionsWriter` gather unequal shards);
* only rank 0 writes the run folder: :func:`run_paths` creates the folder on
  rank 0 and broadcasts its path, :func:`summary_writer` gives the other ranks a
  writer that writes nothing, :func:`on_main` detaches rank-0-only handlers;
* :class:`BufferSync` copies rank 0's batch-norm statistics to every rank before
  validation (DDP trains the weights in lockstep, but each rank's running
  statistics see only its own batches).

In a single process every function here is a no-op, so the same bundle config
runs with or without ``torchrun``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sized

import torch
from ignite.engine import Engine, Events

from cxrkit.engine.metrics import epoch_scores
from cxrkit.engine.resume import EpochSeededSampler
from cxrkit.engine.writers import PredictionsWriter
from cxrkit.runfolder import RunDirError, RunPaths

__all__ = [
    "launched_by_torchrun",
    "initialize",
    "finalize",
    "rank",
    "world_size",
    "is_main",
    "auto_model",
    "auto_optim",
    "ShardedEpochSampler",
    "run_paths",
    "summary_writer",
    "NullSummaryWriter",
    "on_main",
    "MainRankOnly",
    "BufferSync",
    "all_gather_uneven",
    "shard_safe_metrics",
    "ShardedPredictionsWriter",
]

logger = logging.getLogger(__name__)
_STARTED_HERE = False


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def initialize(device: Any = "auto") -> int:
    """Open the process group from torchrun's environment; nothing in a single process.

    Args:
        device: the run's ``device`` setting: ``cpu`` selects ``gloo``; ``auto`` or ``cuda``
            select ``nccl`` when CUDA is available, else ``gloo``.

    Returns:
        The world size (1 when not launched by torchrun).

    Raises:
        ValueError: launched by torchrun with an incomplete environment (``RANK``, ``LOCAL_RANK``,
            ``MASTER_ADDR``, ``MASTER_PORT``).
    """
    global _STARTED_HERE
    import ignite.distributed as idist

    if not launched_by_torchrun():
        return 1
    if idist.get_world_size() > 1:
        return idist.get_world_size()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} are not set: start multi-process "
            "training with torchrun (torchrun --nproc_per_node N -m cxrkit run training BUNDLE ...)"
        )
    text = str(device or "auto").strip().lower()
    backend = "nccl" if text != "cpu" and torch.cuda.is_available() else "gloo"
    idist.initialize(backend)
    _STARTED_HERE = True
    logger.info("process group: backend %s, rank %d of %d", backend, idist.get_rank(), idist.get_world_size())
    return idist.get_world_size()


def finalize() -> None:
    """Close the process group opened by :func:`initialize` (after a barrier)."""
    global _STARTED_HERE
    import ignite.distributed as idist

    if _STARTED_HERE:
        idist.barrier()
        idist.finalize()
        _STARTED_HERE = False


def rank() -> int:
    """This process's rank (0 in a single process)."""
    import ignite.distributed as idist

    return int(idist.get_rank())


_current_rank = rank  # for code where a parameter named ``rank`` hides the function


def world_size() -> int:
    """The number of training processes (1 in a single process)."""
    import ignite.distributed as idist

    return int(idist.get_world_size())


def is_main() -> bool:
    """Whether this process writes the run folder and logs progress (rank 0)."""
    return rank() == 0


def auto_model(network: torch.nn.Module) -> torch.nn.Module:
    """``network`` wrapped in ``DistributedDataParallel`` (``idist.auto_model``) under torchrun; else unchanged.

    The single-process case deliberately does not call ``idist.auto_model``,
    which would wrap a multi-GPU machine's model in ``DataParallel``.
    """
    import ignite.distributed as idist

    if world_size() <= 1:
        return network
    return idist.auto_model(network)


def auto_optim(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``idist.auto_optim(optimizer)`` under torchrun (unchanged for native DDP); else ``optimizer``."""
    import ignite.distributed as idist

    return idist.auto_optim(optimizer) if world_size() > 1 else optimizer


class ShardedEpochSampler(EpochSeededSampler):
    """This rank's share of :class:`EpochSeededSampler`'s ``(seed, epoch)`` order.

    Rank ``r`` of ``w`` takes positions ``r, r + w, r + 2w, ...`` of the epoch's
    permutation. With ``pad`` (training), the order is first extended by its own
    beginning to a multiple of ``w`` so every rank runs the same number of
    batches, as ``torch.utils.data.DistributedSampler`` does (a training set whose
    size is a multiple of ``w`` is seen exactly once per epoch). Without ``pad``
    (validation), the shards together hold every item exactly once.

    Args:
        data_source: the dataset (only its length is used).
        seed: the run seed.
        shuffle: seeded random order (training) or ``0..n-1`` (validation).
        rank: this process's rank; default from ``ignite.distributed``.
        num_replicas: the number of processes; default from ``ignite.distributed``.
        pad: pad to equal shard sizes.

    Raises:
        ValueError: ``rank`` not in ``[0, num_replicas)``, or fewer items than processes.
    """

    def __init__(self, data_source: Sized, seed: int = 0, shuffle: bool = True, rank: int | None = None,
                 num_replicas: int | None = None, pad: bool = True, with_epoch: bool = False) -> None:
        super().__init__(data_source, seed=seed, shuffle=shuffle, with_epoch=with_epoch)
        self.num_replicas = int(num_replicas if num_replicas is not None else world_size())
        self.rank = int(rank if rank is not None else _current_rank())
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not within 0..{self.num_replicas - 1}")
        if len(data_source) < self.num_replicas:
            raise ValueError(
                f"{len(data_source)} items cannot be shared by {self.num_replicas} processes: use fewer processes "
                "(torchrun --nproc_per_node) or more data"
            )
        self.pad = bool(pad)

    def __len__(self) -> int:
        n = len(self.data_source)
        if self.pad:
            return math.ceil(n / self.num_replicas)
        return len(range(self.rank, n, self.num_replicas))

    def order(self) -> list[int]:
        """This rank's indices of this epoch."""
        order = super().order()
        if self.pad and len(order) % self.num_replicas:
            extra = self.num_replicas - len(order) % self.num_replicas
            order += (order * math.ceil(extra / len(order)))[:extra]
        return order[self.rank::self.num_replicas]


def run_paths(output_dir: Any = None, plugin: str = "run", resume: Any = False) -> RunPaths:
    """:meth:`cxrkit.runfolder.RunPaths.create` on rank 0; the other ranks get the same folder.

    Rank 0 chooses (the default name carries a timestamp), checks and creates
    the folder; its path is broadcast, so every rank agrees and only rank 0
    touches the disk here.
    """
    import ignite.distributed as idist

    if world_size() <= 1:
        return RunPaths.create(output_dir, plugin, resume)
    paths, message = None, None
    if is_main():
        try:
            paths = RunPaths.create(output_dir, plugin, resume)
            message = f"{int(paths.resuming)}{paths.root}"
        except RunDirError as exc:
            message = f"!{exc}"
    # rank 0 sends "<resuming 0|1><path>" or "!<error>", so the other ranks fail with it instead of hanging
    message = str(idist.broadcast(message, src=0, safe_mode=True))
    if message.startswith("!"):
        raise RunDirError(message[1:])
    return paths if paths is not None else RunPaths(Path(message[1:]), message[0] == "1")


class NullSummaryWriter:
    """A TensorBoard ``SummaryWriter`` stand-in that writes nothing (ranks other than 0)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("add_") or name in ("flush", "close"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def summary_writer(log_dir: str, **kwargs: Any) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on rank 0, a :class:`NullSummaryWriter` elsewhere."""
    if not is_main():
        return NullSummaryWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir, **kwargs)


class MainRankOnly:
    """Ignite handler wrapper: attaches ``handler`` on rank 0 only (progress, run records...)."""

    def __init__(self, handler: Any) -> None:
        if not hasattr(handler, "attach"):
            raise TypeError(f"{type(handler).__name__} is not an Ignite handler (no attach method)")
        self.handler = handler

    def attach(self, engine: Engine) -> None:
        if is_main():
            self.handler.attach(engine)


def on_main(handler: Any) -> MainRankOnly:
    """``handler`` attached on rank 0 only (see :class:`MainRankOnly`)."""
    return MainRankOnly(handler)


class BufferSync:
    """Ignite handler (evaluator): broadcast rank 0's module buffers (batch-norm statistics) before each run.

    Under DDP the weights stay identical on every rank, but a rank's running
    statistics follow its own last batches; validating every shard with rank
    0's statistics makes the global validation metrics those of the model rank
    0 saves.

    Args:
        network: the (unwrapped) network.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if world_size() <= 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for buffer in self.network.buffers():
                dist.broadcast(buffer.data, src=0)


def all_gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (first dimensions may differ) from every rank, in rank order."""
    import ignite.distributed as idist

    if world_size() <= 1:
        return tensor
    device = idist.device()
    local = tensor.to(device)
    sizes = idist.all_gather(torch.tensor([local.shape[0]], device=device))
    longest = int(sizes.max())
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = idist.all_gather(padded).reshape(len(sizes), longest, *local.shape[1:])
    return torch.cat([gathered[i, : int(n)] for i, n in enumerate(sizes)]).to(tensor.device)


def shard_safe_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with every epoch-level classification metric gathering unequal validation shards.

    Ignite's ``EpochMetric`` gathers equal-sized tensors only; the
    :class:`cxrkit.engine.metrics.ClassificationScores` behind ``metrics`` gather
    with :func:`all_gather_uneven` instead, so every rank computes on the whole set.
    """
    for scores in epoch_scores(dict(metrics)):
        scores.gather = all_gather_uneven
    return dict(metrics)


class ShardedPredictionsWriter(PredictionsWriter):
    """:class:`cxrkit.engine.writers.PredictionsWriter` that gathers every rank's rows; rank 0 writes."""

    def __call__(self, engine: Engine) -> None:
        if world_size() > 1:
            import ignite.distributed as idist

            rows = idist.all_gather(list(self._rows))
            if not is_main():
                return
            self._rows = [row for part in rows for row in part]
        super().__call__(engine)
