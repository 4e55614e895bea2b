"""``cxrkit weights list|info|check|import``: output, exit codes, atomic import."""

from __future__ import annotations

import hashlib
import re
import shutil

import pytest

from cxrkit.cli import main
from support.weights import TINY, reference, save, tiny_file

# the large checkpoints a test writes to tmp_path are removed after it
pytestmark = pytest.mark.usefixtures("drop_checkpoints")


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table_row(out: str, plugin: str) -> list[str]:
    """The cells of ``plugin``'s row in a ``cxrkit weights list`` table."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    return next(row for row in rows if row[0] == plugin)


def test_check_ok_prints_count_sha_and_hash_status(scratch, tiny, capsys):
    path = tiny_file(scratch)
    assert main(["weights", "check", TINY, str(path)]) == 0
    out = capsys.readouterr().out
    n = len(reference("resnet18"))
    assert f"tensors   {n} of {n} backbone tensors matched (2 head/extra tensors dropped: fc.weight, fc.bias)" in out
    assert f"sha256    {sha(path)}" in out
    assert "hash      none published by the origin" in out
    assert "result    OK" in out


def test_check_hash_mismatch_is_a_warning_unless_strict(scratch, weight_store, capsys):
    path = tiny_file(scratch)
    from cxrkit.registry import weights
    from cxrkit.weights import WeightSource

    weights.register("test_hashed", WeightSource(name="test_hashed", architecture="resnet18", filenames=("r18.pth",),
                                                 origin="o", description="d", hash_prefix="0" * 8
                                                 if not sha(path).startswith("0") else "f" * 8), origin="tests")
    try:
        assert main(["weights", "check", "test_hashed", str(path)]) == 0
        captured = capsys.readouterr()
        assert "hash      MISMATCH (published: sha256" in captured.out
        assert "warning:" in captured.err and "hash mismatch for plugin 'test_hashed'" in captured.err
        assert main(["weights", "check", "test_hashed", str(path), "--strict-hash"]) == 1
        assert "FAILED (hash mismatch, --strict_hash)" in capsys.readouterr().out
    finally:
        weights.unregister("test_hashed")


def test_check_mismatch_exits_1_with_the_reason(scratch, weight_store, capsys):
    path = save(reference("resnet18"), scratch / "resnet50-0676ba61.pth")
    assert main(["weights", "check", "imagenet", str(path)]) == 1
    err = capsys.readouterr().err
    assert "cxrkit weights: error: " in err and "looks like a ResNet18" in err


def test_check_unsafe_file_needs_trust(scratch, tiny, capsys):
    import torchvision.models as tvm

    path = save(tvm.resnet18(weights=None), scratch / "r18.pth")
    assert main(["weights", "check", TINY, str(path)]) == 1
    assert "--trust" in capsys.readouterr().err
    assert main(["weights", "check", TINY, str(path), "--trust"]) == 0
    captured = capsys.readouterr()
    assert "result    OK" in captured.out and "warning: fully unpickling" in captured.err


def test_check_errors_for_unknown_plugin_missing_file_and_random(weight_store, capsys):
    assert main(["weights", "check", "imagenett"]) == 2
    assert "Did you mean 'imagenet'" in capsys.readouterr().err
    assert main(["weights", "check", "moco_v1"]) == 1
    assert "cxrkit weights import moco_v1" in capsys.readouterr().err
    assert main(["weights", "check", "random"]) == 2


def test_import_then_list_and_check_find_the_file(scratch, tiny, weight_store, capsys):
    path = tiny_file(scratch, name="downloaded.bin")
    assert main(["weights", "list"]) == 0
    assert table_row(capsys.readouterr().out, TINY) == [TINY, "resnet18", "r18.pth", "no", "-", "-"]
    assert main(["weights", "import", TINY, str(path)]) == 0
    out = capsys.readouterr().out
    dest = weight_store / TINY / "r18.pth"
    assert f"installed: {path} -> {dest}" in out and sha(dest) == sha(path)
    assert main(["weights", "import", TINY, str(path)]) == 0
    assert "already installed" in capsys.readouterr().out
    assert main(["weights", "list"]) == 0
    assert table_row(capsys.readouterr().out, TINY) == [TINY, "resnet18", "r18.pth", "yes",
                                                             "unverifiable (no published hash)", str(dest)]
    assert main(["weights", "check", TINY]) == 0
    assert f"file      {dest}" in capsys.readouterr().out


def test_import_refuses_a_bad_file_and_a_different_installed_one(scratch, tiny, weight_store, capsys):
    bad = save(reference("resnet50"), scratch / "r18.pth")
    assert main(["weights", "import", TINY, str(bad)]) == 1
    assert "does not fit plugin" in capsys.readouterr().err and not (weight_store / TINY).exists()
    good = tiny_file(scratch / "a")
    assert main(["weights", "import", TINY, str(good)]) == 0
    other = tiny_file(scratch / "b", extra_key=1)
    assert main(["weights", "import", TINY, str(other)]) == 1
    assert "already exists with different content" in capsys.readouterr().err
    assert sha(weight_store / TINY / "r18.pth") == sha(good)
    assert main(["weights", "import", TINY, str(other), "--force"]) == 0
    assert sha(weight_store / TINY / "r18.pth") == sha(other)


def test_import_is_atomic_when_the_copy_fails(scratch, tiny, weight_store, monkeypatch, capsys):
    good = tiny_file(scratch / "a")
    assert main(["weights", "import", TINY, str(good)]) == 0
    other = tiny_file(scratch / "b", extra_key=2)

    def copy_half_then_fail(src, dst, length=0):
        dst.write(src.read(1000))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", copy_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        main(["weights", "import", TINY, str(other), "--force"])
    assert sha(weight_store / TINY / "r18.pth") == sha(good)  # the installed file is untouched
    assert sorted(p.name for p in (weight_store / TINY).iterdir()) == ["r18.pth"]  # no temporary left behind


def test_info_shows_the_record(capsys):
    assert main(["weights", "info", "moco_v2"]) == 0
    out = capsys.readouterr().out
    assert "moco_v2_800ep_pretrain.pth.tar" in out and "module.encoder_q." in out
    assert re.search(r"published_hashes\s+\{'md5': \('a04e12f8',\)\}", out)
