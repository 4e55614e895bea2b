"""Multi-process training: sharded sampling, rank-0-only records, global validation metrics.

The end-to-end test starts ``torchrun --nproc_per_node 2 --standalone -m cxrkit
run training`` on CPU (gloo) and checks that every training image was trained
on exactly once per epoch across the two processes, that only rank 0 wrote the
run folder, and that a single-process ``cxrkit run evaluate`` of the saved model
reproduces the validation metrics the two processes computed together on
unequal shards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrkit.cli import main
from cxrkit.engine.distributed import (NullSummaryWriter, ShardedEpochSampler, all_gather_uneven, run_paths,
                                       shard_safe_metrics, summary_writer)
from cxrkit.engine.metrics import ClassificationScores, classification_metrics
from support.paths import REPO, shared_data


# ---- sampler and single-process behaviour (fast) ----------------------------------------

@pytest.mark.parametrize("n", [10, 11, 13])
def test_sharded_sampler_partitions_each_epoch(n):
    data = list(range(n))
    for pad in (True, False):
        for epoch in (1, 2):
            shards = []
            for r in range(3):
                sampler = ShardedEpochSampler(data, seed=5, shuffle=True, rank=r, num_replicas=3, pad=pad)
                sampler.set_epoch(epoch)
                shards.append(list(sampler))
                assert len(shards[-1]) == len(sampler)
            flat = [i for s in shards for i in s]
            assert set(flat) == set(range(n))
            if pad:  # equal shards (DDP needs equal batch counts); only the padding repeats
                assert len({len(s) for s in shards}) == 1 and len(flat) == -(-n // 3) * 3
            else:  # exact: every item once
                assert sorted(flat) == list(range(n))
    first = ShardedEpochSampler(data, seed=5, rank=0, num_replicas=3)
    second = ShardedEpochSampler(data, seed=5, rank=0, num_replicas=3)
    second.set_epoch(2)
    assert list(first) != list(second)  # the order follows the epoch


def test_sharded_sampler_rejects_bad_setups():
    with pytest.raises(ValueError, match="rank 3"):
        ShardedEpochSampler(list(range(8)), rank=3, num_replicas=2)
    with pytest.raises(ValueError, match="cannot be shared by 4 processes"):
        ShardedEpochSampler(list(range(3)), rank=0, num_replicas=4)


def test_single_process_helpers_are_no_ops(tmp_path):
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(all_gather_uneven(x), x)
    writer = summary_writer(str(tmp_path / "tb"))
    assert not isinstance(writer, NullSummaryWriter)  # rank 0 writes TensorBoard
    writer.close()
    NullSummaryWriter().add_scalar("a", 1.0, 1)  # other ranks: accepted, nothing written
    paths = run_paths(tmp_path / "run", "random", False)
    assert paths.root == (tmp_path / "run").resolve() and paths.root.is_dir()
    metrics = shard_safe_metrics(classification_metrics(["A", "B"], positive_index=1))
    scores = metrics["val_auc"].args[0]  # every key reads one epoch-level metric, which gathers unequal shards
    assert isinstance(scores, ClassificationScores) and scores.gather is all_gather_uneven
    assert all(m.args[0] is scores for k, m in metrics.items() if k != "val_loss")
    scores.update((torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1]]), torch.tensor([1, 0, 1])))
    assert metrics["val_auc"].compute() == pytest.approx(1.0)


# ---- two processes through torchrun (gloo) ---------------------------------------------

@pytest.mark.slow
def test_torchrun_two_processes_train_once_per_sample_and_validate_globally(tmp_path):
    data = shared_data("radiography", "COVID-19_Radiography_Dataset")
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd = torchrun + [
        "-m", "cxrkit", "run", "training", str(REPO / "bundles" / "random"), "--dataset_dir", str(data),
        "--max_items", "24", "--val_fraction", "0.2", "--seed", "3", "--image_size", "32", "--batch_size", "4",
        "--epochs", "1", "--output_dir", str(run), "--device", "cpu", "--progress", "false",
        "--tensorboard_images", "0", "--record_sample_ids", "true", "--num_threads", "1",
    ]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    split = json.loads((run / "split.json").read_text())
    n_train, n_val, n_test = len(split["train"]), len(split["val"]), len(split["test"])
    # even training set (no padding), unequal validation and test shards
    assert n_train % 2 == 0 and n_val % 2 == 1 and n_test % 2 == 1

    ranks = [json.loads((run / "debug" / f"sample_ids_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    seen = ranks[0]["epochs"]["1"] + ranks[1]["epochs"]["1"]
    assert sorted(seen) == list(range(n_train))  # every training image exactly once
    assert set(ranks[0]["epochs"]["1"]).isdisjoint(ranks[1]["epochs"]["1"])

    # rank 0 alone wrote the records: one TensorBoard file, one metrics row, all validation predictions
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1]
    assert len((run / "predictions.csv").read_text().strip().splitlines()) == 1 + n_val
    trained = metrics["epochs"][0]
    assert torch.load(run / "models" / "model.pt", weights_only=True)  # plain state_dict, no "module." keys
    assert not any(k.startswith("module.") for k in torch.load(run / "models" / "model.pt", weights_only=True))

    # a single-process evaluation of the saved model on the same validation images agrees
    assert main(["run", "evaluate", str(run), "--dataset_dir", str(data), "--subset", "val", "--device", "cpu",
                 "--progress", "false"]) == 0
    evaluated = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert evaluated["n_images"] == n_val
    assert evaluated["metrics"]["accuracy"] == pytest.approx(trained["val_accuracy"], abs=1e-9)
    assert evaluated["metrics"]["auc"] == pytest.approx(trained["val_auc"], abs=1e-5)
    assert evaluated["metrics"]["loss"] == pytest.approx(trained["val_loss"], rel=1e-4)
    assert evaluated["metrics"]["confusion_matrix"] == trained["val_confusion_matrix"]

    # the held-out test part was evaluated once by both processes, gathered and written by rank 0
    test = json.loads((run / "test" / "metrics.json").read_text())
    assert test["n_images"] == n_test and len((run / "test" / "predictions.csv").read_text().splitlines()) == 1 + n_test
    assert main(["run", "evaluate", str(run), "--dataset_dir", str(data), "--subset", "test", "--device", "cpu",
                 "--progress", "false", "--output_dir", str(tmp_path / "test-again")]) == 0
    again = json.loads((tmp_path / "test-again" / "metrics.json").read_text())
    assert again["metrics"]["accuracy"] == pytest.approx(test["metrics"]["accuracy"], abs=1e-9)
    assert again["metrics"]["auc"] == pytest.approx(test["metrics"]["auc"], abs=1e-5)
