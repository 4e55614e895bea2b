"""SIGTERM is an interruption like Ctrl-C, and stale temporary checkpoint files are removed (issue 15, finding 6).

``timeout``, Slurm, Kubernetes and ``docker stop`` send SIGTERM: the run folder must then say ``interrupted`` with
``resume_with``, and ``--resume`` must continue. A SIGKILL during a checkpoint write leaves the atomic writer's
temporary file; the next start or resume of the run folder removes it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.engine.record import Terminated, TerminationSignal
from cxrkit.engine.resume import remove_stale_temporaries
from support.paths import REPO

BUNDLE = REPO / "bundles" / "random"


def test_termination_signal_raises_while_installed_and_restores_the_previous_handler():
    def previous(signum, frame):  # pragma: no cover - replaced before any signal
        raise AssertionError("the previous handler must not run while installed")

    old = signal.signal(signal.SIGTERM, previous)
    try:
        handler = TerminationSignal()
        handler.install()
        with pytest.raises(Terminated, match="received SIGTERM") as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes of the main thread
        assert isinstance(info.value, KeyboardInterrupt) and info.value.signum == signal.SIGTERM
        handler.restore()
        assert signal.getsignal(signal.SIGTERM) is previous

        in_thread = TerminationSignal()
        worker = threading.Thread(target=in_thread.install)
        worker.start()
        worker.join()
        assert not in_thread.installed and signal.getsignal(signal.SIGTERM) is previous  # main thread only
    finally:
        signal.signal(signal.SIGTERM, old)


def test_only_the_atomic_writers_temporary_files_are_removed(tmp_path, caplog):
    models = tmp_path / "models"
    models.mkdir()
    stale = [models / "tmpa1b2c3_z", models / ".checkpoint_last.pt.k3j2h1g0.tmp", models / ".model.pt.abcdefgh.tmp"]
    kept = [models / "model.pt", models / "checkpoint_last.pt", models / "model.ts", models / "tmp_notes.txt",
            models / "tmpabc", models / "README.md"]
    for path in stale + kept:
        path.write_bytes(b"x" * 1000)
    with caplog.at_level(logging.WARNING, logger="cxrkit.engine.resume"):
        removed = remove_stale_temporaries(models)
    assert sorted(removed) == sorted(stale)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in kept)
    assert "tmpa1b2c3_z" in caplog.text and "interrupted write" in caplog.text
    assert remove_stale_temporaries(tmp_path / "absent") == []


def _dataset(root: Path, n: int = 8) -> Path:
    from cxrkit.demo import synthetic_xray

    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        for i in range(n):
            Image.fromarray(synthetic_xray(i % 2 == 0, 32, rng)).save(root / "img" / f"{i}.png")
            writer.writerow([f"img/{i}.png", ["COVID", "Normal"][i % 2]])
    return root


def test_sigterm_marks_the_run_interrupted_and_resume_continues_and_cleans(tmp_path, capsys):
    """A real training process (32 px, 8 images, up to 100 epochs) gets SIGTERM once its first checkpoint exists:
    summary.json says interrupted with resume_with, the exit code is 143; resuming removes a stale temporary
    checkpoint file and finishes the run."""
    from cxrkit.cli import main

    data = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cxrkit", "run", "training", str(BUNDLE), "--dataset", "csv", "--dataset_dir",
           str(data), "--image_size", "32", "--epochs", "100", "--batch_size", "4", "--output_dir", str(run),
           "--device", "cpu", "--progress", "false", "--tensorboard_images", "0", "--num_threads", "1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 240
            while not (run / "models" / "checkpoint_last.pt").is_file():
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 240 s:\n" + log.read_text()[-3000:]
                time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            rc = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", (summary, log.read_text()[-3000:])
    assert summary["resume_with"] == f"--resume {run.resolve()}"
    assert "Terminated: received SIGTERM" in summary["error"]
    assert rc == 128 + signal.SIGTERM and "terminated (received SIGTERM" in log.read_text()
    done = summary["epochs_completed"]
    assert done >= 1

    stale = run / "models" / "tmpk2j4h6g8"  # what a SIGKILL during a checkpoint write leaves
    stale.write_bytes(b"\0" * 4096)
    assert main(["run", "training", str(BUNDLE), "--resume", str(run), "--epochs", str(done + 1),
                 "--device", "cpu"]) == 0
    assert not stale.exists()
    assert "removed " + str(stale) in "".join(capsys.readouterr())  # logged (MONAI's logging.conf: console)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == done + 1
    assert json.loads((run / "metrics.json").read_text())["epochs"][-1]["epoch"] == done + 1
