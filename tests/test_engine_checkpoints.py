"""Checkpoints: written in the background without losing an error, every N epochs, readable on any machine.

A checkpoint written on a GPU is imitated here by saving with CUDA storage
tags (``torch.load`` without ``map_location`` then refuses it on a CPU-only
machine, exactly as a real GPU file does).
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import torch
from ignite.engine import Engine, Events

from cxrkit.engine.background import BackgroundWriter, snapshot, to_host
from cxrkit.engine.resume import AtomicDiskSaver, RNGState, RunCheckpoint
from support.paths import REPO, RADIOGRAPHY, shared_data
from support.weights import save_as_if_on_gpu


def test_background_writer_keeps_order_bounds_pending_jobs_and_raises_errors_once():
    writer = BackgroundWriter(max_pending=2)
    done: list[int] = []
    gate = threading.Event()
    writer.submit(lambda: (gate.wait(10), done.append(1)), "first")
    writer.submit(lambda: done.append(2), "second")
    assert writer.pending == 2
    third = threading.Thread(target=writer.submit, args=(lambda: done.append(3), "third"))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # two jobs pending: the third waits for the oldest
    gate.set()
    third.join(10)
    writer.wait()
    assert done == [1, 2, 3] and writer.pending == 0

    writer.submit(lambda: 1 / 0, "broken")
    with pytest.raises(ZeroDivisionError):
        writer.wait()
    writer.wait()  # reported once
    writer.submit(lambda: 1 / 0, "broken again")
    deadline = time.monotonic() + 10
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ZeroDivisionError):
        writer.submit(lambda: None, "next")  # the next save surfaces the failed one
    writer.submit(lambda: 1 / 0, "while a run fails")
    errors = writer.drain()  # a failed run waits for its writes without hiding its own error
    assert [type(e) for e in errors] == [ZeroDivisionError] and writer.pending == 0
    writer.close()
    with pytest.raises(ValueError, match="max_pending"):
        BackgroundWriter(max_pending=0)


def test_a_full_disk_is_named_as_such_and_reaches_the_user(tmp_path):
    """torch reports a full disk as an 'enforce fail' of its zip writer; the OSError is only in the chain."""
    import errno

    from cxrkit.bundle.runner import user_error
    from cxrkit.engine.background import DiskFullError

    def torch_like_failure():
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 271954624 vs 271954516")

    writer = BackgroundWriter()
    writer.submit(torch_like_failure, "checkpoint_last.pt")
    with pytest.raises(DiskFullError, match="no space left on the disk while writing checkpoint_last.pt") as info:
        writer.wait()
    assert info.value.errno == errno.ENOSPC and "--resume RUN_DIR" in str(info.value)
    wrapped = RuntimeError("Failed to evaluate ConfigExpression")
    wrapped.__cause__ = info.value
    assert user_error(wrapped) is info.value  # `cxrkit run` shows it in one line, no traceback
    writer.submit(lambda: 1 / 0, "other")
    with pytest.raises(ZeroDivisionError):  # other errors stay as they are
        writer.wait()
    writer.close()


def test_background_save_writes_the_state_of_the_moment_it_was_taken(tmp_path):
    writer = BackgroundWriter()
    gate = threading.Event()
    writer.submit(lambda: gate.wait(10), "a slow earlier write")
    weights = torch.zeros(1000)
    state = {"model": {"w": weights}, "epochs": [1, 2], "rows": ({"loss": 0.5},)}
    AtomicDiskSaver(tmp_path, keep=("ckpt.pt",), writer=writer)(state, "ckpt.pt")
    weights.fill_(7.0)  # training goes on while the file waits to be written
    gate.set()
    writer.wait()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert torch.equal(saved["model"]["w"], torch.zeros(1000)) and saved["epochs"] == [1, 2]
    assert saved["rows"] == ({"loss": 0.5},)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left
    copy, ready = snapshot(state)
    assert ready == {} and copy["model"]["w"] is not weights and torch.equal(to_host(copy)["model"]["w"], weights)
    with pytest.raises(TypeError, match="BackgroundWriter"):
        AtomicDiskSaver(tmp_path, writer="thread")


class _Counter:
    def __init__(self) -> None:
        self.value = torch.zeros(1)

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"].clone()


def _saving_epochs(tmp_path, interval: int, max_epochs: int, stop_at: int | None = None) -> list[int]:
    engine = Engine(lambda e, b: None)
    counter = _Counter()
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: counter.value.add_(1))
    if stop_at is not None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(once=stop_at), lambda e: e.terminate())  # early stopping
    checkpoint = RunCheckpoint(tmp_path, {"counter": counter}, interval=interval, writer=BackgroundWriter())
    saved: list[int] = []
    save = checkpoint.save
    checkpoint.save = lambda e: (saved.append(e.state.epoch), save(e))  # type: ignore[method-assign]
    checkpoint.attach(engine)
    engine.run([0, 1], max_epochs=max_epochs)
    stored = torch.load(checkpoint.path, weights_only=True)
    assert stored["trainer"]["iteration"] == 2 * saved[-1] and float(stored["counter"]["value"]) == saved[-1]
    return saved


def test_checkpoint_interval_saves_every_nth_the_last_and_an_early_stopped_epoch(tmp_path):
    assert _saving_epochs(tmp_path / "a", interval=2, max_epochs=5) == [2, 4, 5]
    assert _saving_epochs(tmp_path / "b", interval=1, max_epochs=3) == [1, 2, 3]
    assert _saving_epochs(tmp_path / "c", interval=4, max_epochs=9, stop_at=3) == [3]
    with pytest.raises(ValueError, match="--checkpoint_interval"):
        RunCheckpoint(tmp_path, {"counter": _Counter()}, interval=0)


def test_rng_state_of_a_gpu_run_resumes_on_a_cpu_only_machine():
    rng = RNGState()
    state = rng.state_dict()
    expected = torch.rand(3)
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # the GPU generators of the run that wrote it
    rng.load_state_dict(state)  # no GPU here: the CUDA states are left out, the rest restored
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_a_run_written_on_a_gpu_resumes_evaluates_predicts_and_exports_on_a_cpu(tiny_run, tmp_path):
    from cxrkit.api import predict
    from cxrkit.cli import main
    from cxrkit.serve.export import export_torchscript

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("model.pt", "checkpoint_last.pt"):
        state = torch.load(run / "models" / name, map_location="cpu", weights_only=True)
        if name == "checkpoint_last.pt":
            state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
        save_as_if_on_gpu(state, run / "models" / name)
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(run / "models" / name, weights_only=True)  # what a GPU file does on this machine
    data = shared_data(*RADIOGRAPHY)
    assert main(["run", "evaluate", str(run), "--dataset_dir", str(data.parent), "--subset", "val", "--device", "cpu",
                 "--progress", "false", "--output_dir", str(tmp_path / "evaluation")]) == 0
    assert json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["n_images"] > 0
    image = sorted((data / "COVID").glob("*.png"))[0]
    assert len(predict(run, [image], device="cpu").predictions) == 1
    assert export_torchscript(run, tmp_path / "model.ts").max_abs_diff is not None
    assert main(["run", "training", str(REPO / "bundles" / "inat_swav"), "--resume", str(run), "--output_dir", str(run),
                 "--epochs", "2", "--device", "cpu", "--progress", "false"]) == 0
    rows = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2]
    trainer = torch.load(run / "models" / "checkpoint_last.pt", weights_only=True)["trainer"]
    assert trainer["iteration"] == 2 * trainer["epoch_length"]
