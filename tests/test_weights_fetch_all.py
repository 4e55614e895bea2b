"""``cxrkit weights fetch --all`` against the loopback server, then ``cxrkit compare`` trains every fetched source.

Every direct-link source's file is fabricated in its real layout and served at its real published URL (through
``CXRKIT_WEIGHTS_MIRROR``); torchvision's V1 file is put in torch hub's cache beforehand, where it must be used as
it is. The NeWT sources have no direct link and must come out as "manual".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cxrkit.cli import main
from cxrkit.weights import FetchError, fetch, get_source
from cxrkit.weights.fetching import fetchable_sources
from support.paths import RADIOGRAPHY, shared_data
from support.published import published_bytes, serve_published, with_digests_of
from support.weightserver import Route

pytestmark = pytest.mark.usefixtures("scratch")
FOUNDATION = {"dinov2", "rad_dino", "biomedclip", "chexzero", "medsiglip", "imagenet_vit"}


def test_real_records_refuse_a_file_that_is_not_the_published_one(weight_server, weight_store):
    source = get_source("imagenet_v2")  # sha256 prefix 11ad3fa6 in its name: a fabricated file cannot match it
    weight_server.add(source.fetch.url, Route(body=published_bytes(source)))
    with pytest.raises(FetchError, match="does not match the hash its origin publishes; nothing was installed"):
        fetch(source, progress=False)
    assert sorted(p.name for p in (weight_store / "imagenet_v2").iterdir()) == [".resnet50-11ad3fa6.pth.lock"]


@pytest.mark.slow
def test_fetch_all_installs_every_fetchable_source_and_compare_trains_them(weight_server, weight_store, tmp_path,
                                                                          capsys, monkeypatch):
    root = shared_data(*RADIOGRAPHY)
    # The study's sources and the third-party plugin: the foundation encoders' files are ViT-B/SO400M (340 MB to
    # 1.6 GB each, unfit to fabricate here and to train at 32 px); their hub and direct paths are proven by
    # test_weights_fetch_hub.py / test_weights_fetch.py and their loading by test_weights_foundation.py.
    study = [n for n in fetchable_sources() if n not in FOUNDATION]
    monkeypatch.setattr("cxrkit.weights.fetching.fetchable_sources", lambda: study)
    direct = [get_source(n) for n in study if get_source(n).fetch is not None and get_source(n).fetch.kind == "url"]
    manual = [n for n in study if n not in {s.name for s in direct}]
    assert {"imagenet", "moco_v2", "chexnet", "swav"} <= {s.name for s in direct}
    assert {"inat_swav", "inat2021_supervised"} <= set(manual)
    files = serve_published(weight_server, [s for s in direct if s.name != "imagenet"])
    files["imagenet"] = published_bytes(get_source("imagenet"))
    hub_cache = tmp_path / "torch" / "hub" / "checkpoints"
    hub_cache.mkdir(parents=True)
    (hub_cache / "resnet50-0676ba61.pth").write_bytes(files["imagenet"])

    with with_digests_of(files):
        assert main(["weights", "fetch", "--all", "--accept_license", "--retries", "0"]) == 1  # the manual ones
        captured = capsys.readouterr()
        rows = {line.split()[0]: line for line in captured.out.splitlines()[1:] if line.strip()}
        for name in manual:
            assert "manual" in rows[name] and f"cxrkit weights import {name}" in captured.err
        for source in direct:
            expected = "already installed" if source.name == "imagenet" else "downloaded"
            status = "verified" if source.published_hashes() else "unverifiable"
            assert expected in rows[source.name] and status in rows[source.name], rows[source.name]
        assert weight_server.seen("resnet50-0676ba61.pth") == []  # torch hub's file used as it is
        for source in direct:
            path = weight_store / source.name / source.fetch_filename
            if source.name != "imagenet":
                assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(files[source.name]).hexdigest()

        # The linear probe plans, finds and loads each plugin's weights exactly as fine-tuning does, and trains a
        # head on the frozen backbone's features: a dozen sources fine-tuned would take minutes on 2 cores.
        out = tmp_path / "cmp"
        plugins = ",".join(["random", *(s.name for s in direct)])
        assert main(["compare", "--dataset", "radiography", "--dataset_dir", str(root), "--plugins", plugins,
                     "--mode", "linear_probe", "--feature_cache", str(tmp_path / "features"), "--epochs", "1",
                     "--image_size", "32", "--batch_size", "4", "--max_items", "12", "--output_dir", str(out),
                     "--device", "cpu", "--bootstrap", "20", "--no_progress"]) == 0
    record = json.loads((out / "compare.json").read_text())
    assert record["skipped"] == {}
    assert sorted(r["plugin"] for r in record["runs"]) == sorted(plugins.split(","))
    assert {r["status"] for r in record["runs"]} == {"finished"}
    for source in direct:
        used = json.loads((out / "runs" / source.name / "weights.json").read_text())
        assert used["pretrained"] is True and Path(used["path"]).name == source.fetch_filename
