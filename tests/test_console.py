"""The console a person reads: one line per epoch, a closing summary, the whole log in the run's ``log.txt``.

The unit tests route a logger of their own; the slow tests capture the console of
tiny training runs (32 px synthetic images): through MONAI's own runner on a
self-contained bundle, through ``cxrkit -v run training`` and through ``cxrkit demo``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest
from ignite.engine import Engine

from cxrkit import console
from cxrkit.bundle import write_bundle
from cxrkit.cli import main
from cxrkit.demo import make_synthetic_dataset
from cxrkit.engine.console import epoch_line, source_line
from cxrkit.engine.handlers import ProgressBar, batch_length

EPOCH = re.compile(r"^epoch +(\d+)/(\d+)  train loss \S+  val accuracy \S+ AUC \S+  best val_accuracy \S+ "
                   r"\(epoch \d+\)  \d+\.\d s$", re.M)
SUMMARY = ("best epoch     : ", "test part      : ", "run folder     : ", "log            : ", "next           : ")
PER_CLASS = re.compile(r"val_\w+/COVID: \d")  # MONAI StatsHandler's per-class metrics


@pytest.fixture
def routed():
    """The root logger with one console handler writing into a buffer; everything put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, console.is_verbose())
    stream = io.StringIO()
    root.handlers[:] = [logging.StreamHandler(stream)]
    root.setLevel(logging.INFO)
    yield stream
    for logger in [root, *logging.root.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, console.RunLogHandler):
                handler.close()
                logger.removeHandler(handler)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    console.set_verbose(saved[2])


def test_route_logging_keeps_info_off_the_console_and_in_the_run_log(routed, tmp_path, capsys):
    log = logging.getLogger("ignite.engine.engine.SupervisedTrainer")
    console.route_logging(False)
    log.info("Engine run resuming from iteration 0")
    log.warning("something to see")
    own = logging.getLogger("monai.test.own")  # a logger made later with its own console handler (as MONAI's)
    own.propagate = False
    own_stream = io.StringIO()
    own.addHandler(logging.StreamHandler(own_stream))
    path = console.open_run_log(tmp_path / "run" / "log.txt")  # held records first, then every new one
    own.info("Epoch[1] Metrics -- val_f1/COVID: 0.5 val_confusion_matrix: tensor([[1, 0], [0, 1]])")
    console.write("epoch 1/2  the epoch's line")
    shown = routed.getvalue()
    assert "something to see" in shown and "Engine run" not in shown
    assert own_stream.getvalue() == ""  # its INFO record went to the log file only
    assert capsys.readouterr().out == "epoch 1/2  the epoch's line\n"  # once, not again through logging
    text = path.read_text()
    assert text.index("Engine run resuming") < text.index("something to see") < text.index("val_f1/COVID")
    assert "tensor([[1, 0]" in text and "the epoch's line" in text
    with pytest.raises(ValueError, match="verbose"):
        console.route_logging("loud")


def test_verbose_brings_the_whole_log_back_and_a_new_route_closes_the_old_log(routed, tmp_path):
    first = console.route_logging(True)
    console.open_run_log(tmp_path / "a.txt")
    logging.getLogger("cxrkit.x").info("detail one")
    assert "detail one" in routed.getvalue()
    console.route_logging(None)  # None keeps the process's choice (cxrkit -v)
    assert console.is_verbose() and first._file is None
    logging.getLogger("cxrkit.x").info("detail two")
    console.open_run_log(tmp_path / "b.txt")
    assert "detail two" in routed.getvalue() and "detail two" not in (tmp_path / "a.txt").read_text()
    assert "detail two" in (tmp_path / "b.txt").read_text() and console.run_log_path() == tmp_path / "b.txt"


def test_epoch_and_source_lines():
    row = {"epoch": 3, "train_loss": 0.69314, "val_accuracy": 0.75, "val_auc": float("nan"), "time_s": 12.34}
    line = epoch_line(row, 10, "val_accuracy", 0.8, 2)
    assert line == "epoch  3/10  train loss 0.6931  val accuracy 0.750 AUC n/a  best val_accuracy 0.800 (epoch 2)  12.3 s"
    assert "not validated" in epoch_line({"epoch": 1, "train_loss": 1.0, "time_s": 1}, 2, "val_accuracy", None, None)
    assert source_line("swav", "", "skipped", 0.0, "no weight file") == "swav                     skipped   no weight file"
    assert "failed" in source_line("imagenet", "x", "failed", 3.0, "ValueError: bad") and "3.0 s" in source_line(
        "imagenet", "x", "failed", 3.0, "ValueError: bad")


def test_progress_bar_shows_images_per_second_and_only_on_a_terminal(capsys):
    import torch

    batches = [{"image": torch.zeros(4, 1, 8, 8)}, {"image": torch.zeros(3, 1, 8, 8)}]
    assert [batch_length(b) for b in batches] == [4, 3] and batch_length([{"image": 1}] * 5) == 5
    engine = Engine(lambda e, b: {"loss": 0.5})
    ProgressBar(output_transform=lambda out: out["loss"], disable=False).attach(engine)
    engine.run(batches, max_epochs=1)
    drawn = capsys.readouterr().err
    assert "loss=0.5" in drawn and "img/s=" in drawn
    engine = Engine(lambda e, b: {"loss": 0.5})
    ProgressBar(output_transform=lambda out: out["loss"]).attach(engine)  # disable=None: stderr is no terminal
    engine.run(batches, max_epochs=1)
    assert capsys.readouterr().err == "" and not console.is_terminal(io.StringIO())
    assert console.bar_disable(True) is None and console.bar_disable(False) is True


def _synthetic(tmp_path):
    return make_synthetic_dataset(tmp_path / "data", per_class=8, size=32, seed=0)


def _check_quiet(out: str, epochs: int) -> None:
    assert [int(m.group(1)) for m in EPOCH.finditer(out)] == list(range(1, epochs + 1)), out
    assert "tensor(" not in out and "Engine run" not in out and "ignite.engine" not in out, out
    assert " - INFO - " not in out and "Metrics --" not in out, out
    for start in SUMMARY:
        assert start in out, (start, out)
    assert re.search(r"accuracy \d\.\d{3} \(95% CI \d\.\d{3}-\d\.\d{3}\)", out), out


@pytest.mark.slow
def test_monai_runner_console_is_one_line_per_epoch_and_a_summary(tmp_path):
    """``python -m monai.bundle run training`` on a self-contained bundle: the handlers of its config do it all."""
    bundle = write_bundle("inat_swav", tmp_path / "bundle")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
           "--meta_file", "configs/metadata.json", "--dataset_dir", str(_synthetic(tmp_path)), "--epochs", "2",
           "--batch_size", "4", "--image_size", "32", "--allow_missing_weights", "true", "--output_dir", str(run),
           "--device", "cpu", "--tensorboard_images", "0"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_quiet(proc.stdout, 2)
    assert proc.stderr.count("\r") == 0  # no terminal: no progress bar drawn into the pipe
    assert f"run folder     : {run}" in proc.stdout and f"next           : cxrkit report {run}" in proc.stdout
    log = (run / "log.txt").read_text()
    assert log.count("Metrics -- val_") == 2 and PER_CLASS.search(log)  # the whole log: per-class metrics,
    assert "tensor(" in log and "Engine run" in log                     # the confusion matrix, Ignite's messages
    assert "epoch 2/2" in log and "test part" in log


@pytest.mark.slow
def test_verbose_run_shows_the_whole_log_on_the_console(tmp_path, tiny, capsys):
    run = tmp_path / "run"
    rc = main(["run", "training", "test_r18", "-v", "--dataset_dir", str(_synthetic(tmp_path)), "--epochs", "1",
               "--batch_size", "4", "--image_size", "32", "--allow_missing_weights", "true", "--output_dir", str(run),
               "--device", "cpu", "--tensorboard_images", "0", "--no_progress"])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert rc == 0, out
    assert len(EPOCH.findall(out)) == 1 and "best epoch     : 1 of 1" in out
    assert PER_CLASS.search(out) and "Engine run" in out and "tensor(" in out  # what -v brings back
    assert PER_CLASS.search((run / "log.txt").read_text())


@pytest.mark.slow
def test_demo_and_external_consoles_fit_on_a_screen(tmp_path, capsys):
    rc = main(["demo", "--dir", str(tmp_path / "demo"), "--per-class", "8", "--epochs", "2", "--image-size", "32",
               "--batch-size", "8", "--device", "cpu"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out + captured.err
    _check_quiet(out, 2)
    run_dir = next((tmp_path / "demo" / "runs").iterdir())
    assert f"report         : {run_dir / 'report' / 'report.html'}" in out
    assert f"next           : cxrkit run inference {run_dir}" in out
    assert out.count("best epoch") == 1  # the training's own summary gives way to the demo's
    assert len((out + captured.err).splitlines()) < 50
    assert PER_CLASS.search((run_dir / "log.txt").read_text())
    assert "Metrics --" in (run_dir / "evaluation" / "log.txt").read_text()

    # cxrkit external: the evaluate config's console is as quiet; its whole log in external/<name>/log.txt
    data = tmp_path / "demo" / "data" / "COVID-19_Radiography_Dataset"
    assert main(["external", str(run_dir), "--dataset", "radiography", "--dataset_dir", str(data), "--name", "again",
                 "--device", "cpu", "--bootstrap", "50", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "external: again" in out and "tensor(" not in out and "Metrics --" not in out and "Engine run" not in out
    folder = run_dir / "external" / "again"
    assert f"wrote          : {folder}" in out and f"next           : cxrkit report {run_dir}" in out
    assert len(out.splitlines()) < 12 and "Metrics --" in (folder / "log.txt").read_text()
