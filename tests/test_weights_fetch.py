"""``cxrkit weights fetch`` over direct links, against a loopback server (``weight_server``) mirroring the origins.

Each test registers a ResNet18 plugin whose ``fetch`` URL is a made-up origin; ``CXRKIT_WEIGHTS_MIRROR`` sends it to
the server, which serves a fabricated file in the plugin's layout and misbehaves as the test asks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
import textwrap

import pytest

from cxrkit.cli import main
from cxrkit.engine.background import DiskFullError
from cxrkit.weights import FetchError, FetchSpec, WeightFileNotFoundError, fetch, get_source
from cxrkit.weights import download as download_module
from cxrkit.weights.fetchspec import mirrored
from cxrkit.weights.fetching import LicenseNotAcceptedError, ManualFetchError
from cxrkit.weights.store import find_weight_file
from support.paths import REPO
from support.weights import tiny_file
from support.weightserver import Route

pytestmark = pytest.mark.usefixtures("drop_checkpoints")
URL = "https://example.org/models/r18.pth"


@pytest.fixture(scope="module")
def body(tmp_path_factory) -> bytes:
    """A valid ResNet18 file (wrapped, with a 1000-class fc to drop), as bytes."""
    return tiny_file(tmp_path_factory.mktemp("r18")).read_bytes()


def plugin(weight_plugin, name="t_fetch", url=URL, **fields):
    return weight_plugin(name, fetch=FetchSpec(url=url, **fields.pop("spec", {})), **fields)


def installed(store, name="t_fetch"):
    folder = store / name
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_mirror_keeps_host_path_and_query(monkeypatch):
    assert mirrored("https://zenodo.org/records/1/files/a.pth.tar?download=1", "http://127.0.0.1:9/m/") == \
        "http://127.0.0.1:9/m/zenodo.org/records/1/files/a.pth.tar?download=1"
    monkeypatch.delenv("CXRKIT_WEIGHTS_MIRROR", raising=False)
    assert mirrored(URL) == URL


def test_complete_download_is_verified_installed_and_reused(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin, spec={"sha256": hashlib.sha256(body).hexdigest()[:12]})
    weight_server.add(URL, Route(body=body))
    result = fetch("t_fetch", progress=False)
    assert result.action == "downloaded" and result.verification == "verified"
    assert result.path == weight_store / "t_fetch" / "r18.pth" and result.path.read_bytes() == body
    assert result.sha256 == hashlib.sha256(body).hexdigest() and result.size == len(body)
    assert installed(weight_store) == [".r18.pth.lock", "r18.pth"]  # no partial file left
    assert find_weight_file(get_source("t_fetch")) == result.path
    again = fetch("t_fetch", progress=False)
    assert again.action == "already installed" and len(weight_server.seen("/r18.pth")) == 1


def test_a_cut_connection_is_resumed_with_a_range_request(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=body, cut_first=True))
    result = fetch("t_fetch", retries=2, backoff=0.01, progress=False)
    assert result.path.read_bytes() == body
    gets = weight_server.seen("/r18.pth")
    assert len(gets) == 2 and "Range" not in gets[0] and gets[1]["Range"] == f"bytes={len(body) // 2}-"


def test_a_server_ignoring_range_is_read_from_the_start(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=body, cut_first=True, range_ok=False))
    assert fetch("t_fetch", retries=2, backoff=0.01, progress=False).path.read_bytes() == body


def test_404_is_one_line_naming_source_url_and_what_to_do(weight_server, weight_plugin, weight_store):
    plugin(weight_plugin)
    with pytest.raises(FetchError) as info:
        fetch("t_fetch", backoff=0.01, progress=False)
    message = str(info.value)
    assert "\n" not in message and "'t_fetch'" in message and "HTTP 404" in message
    assert weight_server.mirror + "/example.org/models/r18.pth" in message and "cxrkit weights import" in message
    assert len(weight_server.seen("/r18.pth")) == 1  # a 404 is not retried
    assert "r18.pth" not in installed(weight_store)


def test_a_500_is_retried_then_succeeds(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=body, fail=(500, 1)))
    assert fetch("t_fetch", retries=2, backoff=0.01, progress=False).path.read_bytes() == body
    assert len(weight_server.seen("/r18.pth")) == 2


def test_persistent_5xx_gives_up_after_the_retries(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=body, fail=(503, 10)))
    with pytest.raises(FetchError, match=r"failed after 3 tries \(HTTP 503"):
        fetch("t_fetch", retries=2, backoff=0.01, progress=False)
    assert "r18.pth" not in installed(weight_store)


def test_an_html_page_with_status_200_is_refused(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=body, html=True))
    with pytest.raises(FetchError, match="returned an HTML page instead of the weight file"):
        fetch("t_fetch", progress=False)
    assert installed(weight_store) == [".r18.pth.lock"]


def test_a_wrong_digest_is_refused_and_the_download_deleted(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin, spec={"md5": "0123456789abcdef"})
    weight_server.add(URL, Route(body=body))
    with pytest.raises(FetchError) as info:
        fetch("t_fetch", progress=False)
    assert f"md5 {hashlib.md5(body).hexdigest()}" in str(info.value) and "0123456789abcdef" in str(info.value)
    assert "nothing was installed" in str(info.value)
    assert installed(weight_store) == [".r18.pth.lock"]  # neither the file nor its partial download


def test_a_file_that_does_not_verify_is_deleted(weight_server, weight_plugin, weight_store):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=b"PK\x03\x04 not a checkpoint at all" * 100))
    with pytest.raises(FetchError, match="does not verify; nothing was installed"):
        fetch("t_fetch", progress=False)
    assert installed(weight_store) == [".r18.pth.lock"]


def test_a_redirect_is_followed(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin)
    weight_server.add(URL, Route(redirect="/cdn/blob-1"))
    weight_server.add_path("/cdn/blob-1", Route(body=body))
    assert fetch("t_fetch", progress=False).path.read_bytes() == body
    assert len(weight_server.seen("/cdn/blob-1")) == 1


def test_a_stalled_server_times_out(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=body, stall=60))
    with pytest.raises(FetchError, match=r"failed after 1 tries \(.*timed out"):
        fetch("t_fetch", timeout=0.3, retries=0, progress=False)


def test_a_full_disk_is_a_disk_full_error_and_frees_the_space(weight_server, weight_plugin, weight_store, body,
                                                              monkeypatch):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=body))

    class Full:
        def __init__(self, path, mode):
            self.fh = open(path, mode)

        def write(self, data):
            if self.fh.tell() > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(download_module, "open", Full, raising=False)
    with pytest.raises(DiskFullError, match="'t_fetch': no space left on the disk") as info:
        fetch("t_fetch", progress=False)
    assert info.value.errno == errno.ENOSPC
    assert installed(weight_store) == [".r18.pth.lock"]


def test_two_processes_fetching_one_file_download_it_once(weight_server, weight_store, body, tmp_path):
    weight_server.add(URL, Route(body=body, stall=0.5))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from cxrkit.registry import weights
        from cxrkit.weights import FetchSpec, WeightSource, fetch
        weights.register("t_fetch", WeightSource(name="t_fetch", architecture="resnet18", filenames=("r18.pth",),
                         origin="x", description="x", fetch=FetchSpec(url={URL!r})), origin="tests")
        result = fetch("t_fetch", progress=False)
        print(result.action, result.sha256)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    actions = sorted(out.strip().rsplit(" ", 1)[0] for out, _ in outputs)
    assert actions == ["already installed", "downloaded"]
    assert {out.split()[-1] for out, _ in outputs} == {hashlib.sha256(body).hexdigest()}
    assert len(weight_server.seen("/r18.pth")) == 1
    assert (weight_store / "t_fetch" / "r18.pth").read_bytes() == body


def test_a_restricted_licence_needs_acceptance_once(weight_server, weight_plugin, weight_store, body, tmp_path):
    plugin(weight_plugin, license="CC-BY-NC-4.0", license_restricted=True)
    weight_server.add(URL, Route(body=body))
    with pytest.raises(LicenseNotAcceptedError, match="CC-BY-NC-4.0.*cxrkit weights fetch t_fetch --accept_license"):
        fetch("t_fetch", progress=False)
    assert weight_server.seen("/r18.pth") == []
    assert fetch("t_fetch", accept_license=True, progress=False).action == "downloaded"
    record = json.loads((tmp_path / "config" / "licenses.json").read_text())
    assert record["t_fetch"]["license"] == "CC-BY-NC-4.0"
    assert fetch("t_fetch", force=True, progress=False).action == "downloaded"  # recorded: no option needed


def test_manual_source_prints_steps_and_the_import_command(weight_server, weight_plugin, capsys):
    weight_plugin("t_manual", fetch=FetchSpec(manual="fill in the form at https://example.org/form"))
    with pytest.raises(ManualFetchError, match="form at https://example.org/form"):
        fetch("t_manual")
    assert main(["weights", "fetch", "inat_swav"]) == 1
    err = capsys.readouterr().err
    assert "cornell.box.com" in err and "cxrkit weights import inat_swav /path/to/inat2021_swav_mini_1000_ep.pth" in err


def test_cli_fetches_several_with_a_summary_and_list_shows_states(weight_server, weight_plugin, weight_store, body,
                                                                  capsys):
    plugin(weight_plugin, name="t_a", url="https://example.org/a/r18.pth", license="MIT")
    plugin(weight_plugin, name="t_b", url="https://example.org/b/r18.pth", license="research-only",
           license_restricted=True)
    plugin(weight_plugin, name="t_c", url="https://example.org/c/r18.pth")
    weight_server.add("https://example.org/a/r18.pth", Route(body=body))
    weight_server.add("https://example.org/b/r18.pth", Route(body=body))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "fetchable (licence)" in out and "research-only (restricted)" in out
    assert main(["weights", "fetch", "t_a", "t_b", "t_c", "--retries", "0"]) == 1
    captured = capsys.readouterr()
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:] if line.strip()}
    assert "downloaded" in rows["t_a"] and "unverifiable" in rows["t_a"]
    assert "licence" in rows["t_b"] and "FAILED" in rows["t_c"] and "HTTP 404" in captured.err
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[0] == "t_a" and "installed (unverifiable)" in line and "MIT" in line
               for line in out.splitlines() if line.strip())
    assert main(["weights", "fetch"]) == 2 and main(["weights", "fetch", "nope"]) == 2


def test_a_missing_file_names_the_fetch_command(weight_store):
    with pytest.raises(WeightFileNotFoundError, match="cxrkit weights fetch moco_v1 --accept_license"):
        find_weight_file(get_source("moco_v1"))


def test_a_failed_download_is_resumed_by_the_next_fetch(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=body, cut_first=True))
    with pytest.raises(FetchError, match=rf"{len(body) // 2} bytes are kept in .*\.r18\.pth\.partial"):
        fetch("t_fetch", retries=0, progress=False)
    assert not (weight_store / "t_fetch" / "r18.pth").exists()
    assert fetch("t_fetch", retries=0, progress=False).path.read_bytes() == body
    assert weight_server.seen("/r18.pth")[-1]["Range"] == f"bytes={len(body) // 2}-"


def test_a_damaged_installed_file_is_named_and_replaced_with_force(weight_server, weight_plugin, weight_store, body):
    plugin(weight_plugin)
    weight_server.add(URL, Route(body=body))
    damaged = weight_store / "t_fetch" / "r18.pth"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(body[: len(body) // 3])
    with pytest.raises(FetchError, match=f"the installed file {damaged} is the problem: fetch again with --force"):
        fetch("t_fetch", progress=False)
    assert fetch("t_fetch", force=True, progress=False).path.read_bytes() == body


def test_a_fetch_digest_belongs_to_the_published_file_only():
    from cxrkit.weights import WeightSource

    source = WeightSource(name="x", architecture="resnet18", filenames=("a.pth.tar", "a.pth"), origin="o",
                          description="d", fetch=FetchSpec(url=URL, md5="abcd1234"))
    assert source.published_hashes("a.pth.tar") == {"md5": ("abcd1234",)}
    assert source.published_hashes("unverified-a.pth.tar") == {"md5": ("abcd1234",)}
    assert source.published_hashes("downloaded.bin") == {"md5": ("abcd1234",)}  # a renamed copy of it
    assert source.published_hashes("a.pth") == {}  # the flat re-save is another file
    with pytest.raises(ValueError, match="fetch.filename 'b.pth' is not one of"):
        WeightSource(name="x", architecture="resnet18", filenames=("a.pth",), origin="o", description="d",
                     fetch=FetchSpec(url=URL, filename="b.pth"))
