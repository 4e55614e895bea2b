"""Verified, unverified, unverifiable: a weight file that is not the published one never passes as it.

``cxrkit weights import`` refuses a file whose hash differs from the published one
unless the user accepts that exact sha256; the accepted file is installed under
a marked name and every later use says "unverified": ``weights list``, the run's
``weights.json`` and the run report.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from conftest import REPO, resnet18_weight_file, shared_data
from cxrkit.cli import main


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def list_row(out: str, plugin: str) -> list[str]:
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    return next(row for row in rows if row[0] == plugin)


@pytest.mark.filterwarnings("ignore::cxrkit.weights.WeightHashWarning")  # expected: training warns too
def test_mismatched_file_is_refused_then_accepted_as_unverified_everywhere(tmp_path, weight_plugin, weight_store,
                                                                          capsys):
    file = resnet18_weight_file(tmp_path / "downloads" / "r18.pth")
    digest = sha(file)
    weight_plugin("test_published", hash_prefix="0" * 8 if not digest.startswith("0") else "f" * 8)

    assert main(["weights", "import", "test_published", str(file)]) == 1
    err = capsys.readouterr().err
    assert f"sha256 {digest} does not match" in err and "Nothing was installed" in err
    assert f"cxrkit weights import test_published {file} --accept_sha256 {digest}" in err
    assert not weight_store.exists()
    other = "ab" * 32
    assert main(["weights", "import", "test_published", str(file), "--accept_sha256", other]) == 1
    assert f"--accept_sha256 {other} is not the sha256 of {file}" in capsys.readouterr().err
    assert main(["weights", "import", "test_published", str(file), "--accept-sha256", "abc"]) == 1
    assert "full sha256 (64 hex digits)" in capsys.readouterr().err
    assert not weight_store.exists()

    assert main(["weights", "import", "test_published", str(file), "--accept_sha256", digest.upper()]) == 0
    out = capsys.readouterr().out
    installed = weight_store / "test_published" / "unverified-r18.pth"
    assert installed.is_file() and sha(installed) == digest and "UNVERIFIED" in out
    assert not (weight_store / "test_published" / "r18.pth").exists()  # never under the official name

    assert main(["weights", "list"]) == 0
    assert list_row(capsys.readouterr().out, "test_published")[3:] == [
        "installed (UNVERIFIED)", "unknown", "manual", str(installed)]
    assert main(["weights", "check", "test_published"]) == 0
    assert "UNVERIFIED weights" in capsys.readouterr().out

    run = tmp_path / "run"
    rc = main(["run", "training", str(REPO / "bundles" / "imagenet"), "--plugin", "test_published",
               "--dataset_dir", str(shared_data("radiography")), "--image_size", "32", "--epochs", "1",
               "--batch_size", "8", "--max_items", "16", "--output_dir", str(run), "--device", "cpu",
               "--progress", "false", "--tensorboard_images", "0"])
    assert rc == 0
    recorded = json.loads((run / "weights.json").read_text())
    assert recorded["verification"] == "unverified" and recorded["hash_ok"] is False
    assert recorded["sha256"] == digest and recorded["path"] == str(installed)

    from cxrkit.report.report import write_report

    report = write_report(run, bootstrap=0).read_text()
    assert "Run report: test_published (UNVERIFIED weights)" in report
    assert "**UNVERIFIED**: does not match the hash its origin publishes" in report


def test_matching_and_unpublished_hashes_install_under_the_official_name(tmp_path, weight_plugin, weight_store,
                                                                         capsys):
    file = resnet18_weight_file(tmp_path / "r18.pth")
    weight_plugin("test_matching", hash_prefix=sha(file)[:8])
    weight_plugin("test_unpublished")
    assert main(["weights", "import", "test_matching", str(file)]) == 0
    assert "published hash: verified" in capsys.readouterr().out
    assert main(["weights", "import", "test_unpublished", str(file)]) == 0
    assert "published hash: unverifiable" in capsys.readouterr().out
    assert (weight_store / "test_matching" / "r18.pth").is_file()
    assert (weight_store / "test_unpublished" / "r18.pth").is_file()
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert list_row(out, "test_matching")[3] == "installed (verified)"
    assert list_row(out, "test_unpublished")[3] == "installed (unverifiable)"


def test_an_official_file_wins_over_an_accepted_unverified_one(tmp_path, weight_plugin, weight_store):
    from cxrkit.weights import find_weight_file, import_weight_file
    from cxrkit.weights.errors import UnverifiedWeightError

    good = resnet18_weight_file(tmp_path / "a" / "r18.pth", seed=1)
    bad = resnet18_weight_file(tmp_path / "b" / "r18.pth", seed=2)
    source = weight_plugin("test_two", hash_prefix=sha(good)[:10])
    with pytest.raises(UnverifiedWeightError) as err:
        import_weight_file(source, bad)
    assert err.value.sha256 == sha(bad) and f'accept_sha256="{sha(bad)}"' in str(err.value)
    result = import_weight_file(source, bad, accept_sha256=sha(bad))
    assert result.verification == "unverified" and result.shadowed_by is None
    assert find_weight_file(source).name == "unverified-r18.pth"
    assert import_weight_file(source, good).verification == "verified"
    assert find_weight_file(source) == (weight_store / "test_two" / "r18.pth").resolve()
    again = import_weight_file(source, bad, accept_sha256=sha(bad))
    assert not again.copied and again.shadowed_by == (weight_store / "test_two" / "r18.pth").resolve()


def test_older_run_records_are_marked_from_hash_ok(tmp_path):
    from cxrkit.report.runfolder import RunFolder

    import numpy as np

    empty = np.zeros(0)
    run = RunFolder(tmp_path, ["a", "b"], None, None, None, [], [], empty, empty, empty,
                    weights={"plugin": "imagenet", "pretrained": True, "sha256": "ab" * 32, "hash_ok": False})
    assert run.weights_verification == "unverified" and run.source_label == "imagenet (UNVERIFIED weights)"
    run.weights["hash_ok"] = None
    assert run.weights_verification == "unverifiable" and run.source_label == "imagenet"
    run.weights.update(pretrained=False, sha256=None)
    assert run.weights_verification is None
