"""``cxrkit weights fetch`` from a Hugging Face hub repository through ``huggingface_hub``.

``HF_ENDPOINT`` points at the loopback server (``weight_server``), which answers the hub's
``HEAD``/``GET /{repo}/resolve/{revision}/{filename}`` with the headers ``huggingface_hub`` reads; ``HF_HOME`` is a
temporary folder, so the hub cache is private. The offline test builds a hub cache folder by hand, in the layout
``huggingface_hub`` writes (``models--org--name/blobs/<sha256>``, ``snapshots/<commit>/<file>`` -> the blob).
"""

from __future__ import annotations

import hashlib
import os

import pytest

from cxrkit.weights import FetchError, FetchSpec, fetch

pytest.importorskip("huggingface_hub", reason="the hub path needs huggingface_hub (pip install 'cxrkit[hub]')")
pytestmark = pytest.mark.usefixtures("drop_checkpoints")

REPO_ID, COMMIT = "org/r18-test", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def body(tmp_path_factory) -> bytes:
    from support.weights import tiny_file

    return tiny_file(tmp_path_factory.mktemp("r18")).read_bytes()


@pytest.fixture
def hub_plugin(weight_plugin):
    return weight_plugin("t_hub", license="MIT",
                         fetch=FetchSpec(hf_hub_id=REPO_ID, hf_revision=COMMIT, hf_filename="weights/r18.pth"))


def test_hub_file_is_downloaded_into_the_hub_cache_verified_and_installed(weight_server, hub_plugin, weight_store,
                                                                         body, tmp_path):
    weight_server.add_hub(REPO_ID, COMMIT, "weights/r18.pth", body)
    result = fetch("t_hub", progress=False)
    sha = hashlib.sha256(body).hexdigest()
    assert result.action == "from hub cache" and result.verification == "verified" and result.sha256 == sha
    assert result.path == weight_store / "t_hub" / "r18.pth" and result.path.read_bytes() == body
    cached = tmp_path / "hf" / "hub" / "models--org--r18-test" / "snapshots" / COMMIT / "weights" / "r18.pth"
    assert cached.read_bytes() == body and cached.resolve().name == sha  # huggingface_hub's own cache layout
    assert weight_server.seen(f"/{REPO_ID}/resolve/{COMMIT}/weights/r18.pth", method="HEAD")
    again = fetch("t_hub", force=True, progress=False)  # past cxrkit's own store: the hub cache answers
    assert again.path.read_bytes() == body
    assert len(weight_server.seen(f"/{REPO_ID}/resolve/{COMMIT}/weights/r18.pth")) == 1  # no second download


def test_a_gated_repository_needs_the_users_token(weight_server, hub_plugin, weight_store, body, monkeypatch):
    weight_server.add_hub(REPO_ID, COMMIT, "weights/r18.pth", body).hub_gated = "hf_user_token"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(weight_store / "no-token"))
    with pytest.raises(FetchError, match=f"{REPO_ID}.*is a gated repository: accept its terms.*HF_TOKEN"):
        fetch("t_hub", progress=False)
    monkeypatch.setenv("HF_TOKEN", "hf_user_token")
    assert fetch("t_hub", progress=False).path.read_bytes() == body
    heads = weight_server.seen(f"/{REPO_ID}/resolve/{COMMIT}/weights/r18.pth", method="HEAD")
    assert heads[-1]["Authorization"] == "Bearer hf_user_token"


def test_a_hub_file_whose_sha256_is_not_the_published_one_is_refused(weight_server, hub_plugin, weight_store, body):
    route = weight_server.add_hub(REPO_ID, COMMIT, "weights/r18.pth", body)
    route.hub_etag = "f" * 64
    with pytest.raises(FetchError, match="but the hub publishes f{64}; .*nothing was installed"):
        fetch("t_hub", progress=False)
    assert not (weight_store / "t_hub" / "r18.pth").exists()


def test_a_file_missing_on_the_hub_is_a_clear_error(weight_server, hub_plugin, weight_store):
    with pytest.raises(FetchError, match=f"'t_hub': weights/r18.pth is not in {REPO_ID} at {COMMIT}"):
        fetch("t_hub", progress=False)
    assert not (weight_store / "t_hub" / "r18.pth").exists()


def test_offline_mode_reads_a_cached_file_without_any_request(weight_server, hub_plugin, weight_store, body,
                                                             tmp_path, monkeypatch):
    sha = hashlib.sha256(body).hexdigest()
    repo = tmp_path / "hf" / "hub" / "models--org--r18-test"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha).write_bytes(body)
    snapshot = repo / "snapshots" / COMMIT / "weights"
    snapshot.mkdir(parents=True)
    os.symlink(os.path.join("..", "..", "..", "blobs", sha), snapshot / "r18.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = fetch("t_hub", progress=False)
    assert result.verification == "verified" and result.path.read_bytes() == body
    assert weight_server.requests == []


def test_offline_mode_without_the_file_says_so(weight_server, hub_plugin, weight_store, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FetchError, match="HF_HUB_OFFLINE is set and the file is not in the hub cache"):
        fetch("t_hub", progress=False)
    assert weight_server.requests == []


def test_fetch_spec_needs_a_commit_and_one_kind():
    with pytest.raises(ValueError, match="40-hex commit"):
        FetchSpec(hf_hub_id=REPO_ID, hf_revision="main")
    with pytest.raises(ValueError, match="exactly one of"):
        FetchSpec(url="https://example.org/a.pth", manual="ask")
    with pytest.raises(ValueError, match="http"):
        FetchSpec(url="file:///etc/passwd")
