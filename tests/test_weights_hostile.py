"""Hostile weight files: every format is accepted or refused within bounded time and memory, nothing runs.

The static pickle scan (:mod:`cxrkit.weights.picklescan`) reads a file's pickles
without unpickling them; these tests plant code-running payloads in each format
(zip, legacy ``torch.save``, a plain ``pickle.dump``), hide their names from a naive
scanner, and check that no payload runs and every answer is one clear error.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from cxrkit.weights.checkpoint import checkpoint_format, open_checkpoint
from cxrkit.weights.errors import CorruptCheckpointError, TrustedLoadWarning, UnsafeCheckpointError
from cxrkit.weights.picklescan import DYNAMIC_GLOBAL, PickleScanError, scan_pickle


class _Shell:
    """Unpickling this runs a shell command: the payload of a hostile weight file."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _raw_evil(folder, marker="marker"):
    """A plain protocol-4 pickle (not torch's format) of ``{"state_dict": <os.system call>}``."""
    path = folder / "evil.pth"
    with path.open("wb") as fh:
        pickle.dump({"state_dict": _Shell(f"echo pwned > {marker}")}, fh, protocol=4)
    return path


# the child imports torch, then caps its address space 2.5 GB above what torch itself maps, so a
# scan that reads the file into memory, or a loader that loops, dies (or times out) instead of passing
_CHILD = textwrap.dedent("""
    import resource, sys
    import torch  # noqa: F401 - mapped before the cap
    size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + (5 << 29), size + (5 << 29)))
    from cxrkit.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _cxrkit_bounded(args, cwd, timeout=60):
    env = {**os.environ, "CXRKIT_WEIGHTS_DIR": str(cwd / "store"), "HOME": str(cwd / "home"),
           "TORCH_HOME": str(cwd / "torch")}
    return subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_raw_protocol4_pickle_is_refused_quickly_in_bounded_memory(tmp_path):
    path = _raw_evil(tmp_path)
    done = _cxrkit_bounded(["weights", "check", "imagenet", str(path)], tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    error = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and str(path) in error[0] and "posix.system" in error[0] and "--trust" in error[0]
    assert not (tmp_path / "marker").exists()
    done = _cxrkit_bounded(["weights", "import", "imagenet", str(path)], tmp_path)
    assert done.returncode == 1 and "posix.system" in done.stderr and not (tmp_path / "store").exists()
    assert not (tmp_path / "marker").exists()


def test_huge_plain_pickle_is_scanned_without_reading_its_data(tmp_path):
    path = tmp_path / "big.pth"
    with path.open("wb") as fh:  # 64 MB of bytes before the payload: the scan seeks past them
        pickle.dump({"blob": bytes(64 << 20), "state_dict": _Shell("echo pwned > marker")}, fh, protocol=4)
    done = _cxrkit_bounded(["weights", "check", "imagenet", str(path)], tmp_path)
    assert done.returncode == 1 and "posix.system" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
def test_every_format_names_the_payload_and_runs_nothing(fmt, tmp_path):
    marker = tmp_path / "ran"
    obj = {"state_dict": {"w": torch.ones(2)}, "x": _Shell(f"touch {marker}")}
    path = tmp_path / "f.pth"
    if fmt == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=5))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    assert checkpoint_format(path) == fmt
    with pytest.raises(UnsafeCheckpointError) as err:
        open_checkpoint(path)
    assert "posix.system" in err.value.globals and not marker.exists()


def _stack_global_via_pop() -> bytes:
    """``posix.system`` assembled so that the two strings right before STACK_GLOBAL look harmless."""
    def s(text):
        data = text.encode()
        return b"\x8c" + bytes([len(data)]) + data
    body = (s("posix") + s("system") + s("torch._utils") + s("_rebuild_tensor_v2") + b"00"  # POP POP
            + b"\x93" + s("echo hi") + b"\x85R.")  # STACK_GLOBAL, TUPLE1, REDUCE, STOP
    return b"\x80\x04" + body


def _stack_global_via_memo() -> bytes:
    """``posix.system`` through memo fetches (what pickle itself writes for repeated names)."""
    def s(text):
        data = text.encode()
        return b"\x8c" + bytes([len(data)]) + data
    return (b"\x80\x04" + s("posix") + b"\x94" + s("system") + b"\x94" + b"0" b"0"  # memoize both, pop both
            + b"h\x00h\x01\x93" + s("id") + b"\x85R.")


def test_scanner_is_not_fooled_by_stack_games():
    allowed = {"torch._utils._rebuild_tensor_v2"}.__contains__
    popped = scan_pickle(io.BytesIO(_stack_global_via_pop()), allowed)
    assert popped.unsafe == [DYNAMIC_GLOBAL]  # cannot be named statically: refused, never guessed
    memo = scan_pickle(io.BytesIO(_stack_global_via_memo()), allowed)
    assert memo.unsafe == ["posix.system"]
    plain = scan_pickle(io.BytesIO(pickle.dumps(os.system, protocol=4)), allowed)
    assert plain.unsafe == ["posix.system"]


def test_scanner_bounds_and_damage():
    with pytest.raises(PickleScanError, match="ends early"):
        scan_pickle(io.BytesIO(pickle.dumps({"a": list(range(100))}, protocol=4)[:-20]))
    with pytest.raises(PickleScanError, match="more than 1,000 pickle instructions"):
        scan_pickle(io.BytesIO(pickle.dumps(list(range(5000)), protocol=2)), max_ops=1000)
    with pytest.raises(PickleScanError, match="runs past the end"):  # a length claiming more bytes than exist
        scan_pickle(io.BytesIO(b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"xx."))
    with pytest.raises(PickleScanError, match="unknown pickle instruction"):
        scan_pickle(io.BytesIO(b"\x80\x04\xff."))


def test_plain_pickles_need_trust_and_truncated_ones_are_damaged(tmp_path):
    state = {"w": torch.arange(4.0)}
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="torch.storage._load_from_bytes"):
        open_checkpoint(path)
    with pytest.warns(TrustedLoadWarning, match="explicitly trusted"):
        assert torch.equal(open_checkpoint(path, trust=True)["w"], state["w"])
    data = tmp_path / "data.pkl"
    data.write_bytes(pickle.dumps({"epoch": 3, "best": 0.5}, protocol=2))
    with pytest.raises(CorruptCheckpointError, match="a plain Python pickle, not a file written by torch.save"):
        open_checkpoint(data)
    data.write_bytes(pickle.dumps({"epoch": 3, "best": 0.5}, protocol=2)[:-3])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        open_checkpoint(data, trust=True)


def test_compressed_zip_members_are_not_a_checkpoint(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(3)}, good)
    packed = tmp_path / "packed.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item))
    with pytest.raises(CorruptCheckpointError, match="compressed members"):
        open_checkpoint(packed)
    assert torch.equal(open_checkpoint(good)["w"], torch.ones(3))


def test_model_files_and_resume_checkpoints_use_the_safe_opener(tmp_path):
    from cxrkit.engine.resume import open_resume_checkpoint
    from cxrkit.serve.model import ModelLoadError, _state_dict

    marker = tmp_path / "ran"
    evil = _raw_evil(tmp_path, marker=marker)
    with pytest.raises(ModelLoadError, match="posix.system.*--trust"):
        _state_dict(evil, trust=False)
    with pytest.raises(ValueError, match=r"cannot resume: .* \(it references posix.system\).*not written by cxrkit"):
        open_resume_checkpoint(evil)
    assert not marker.exists()
    good = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {"w": torch.ones(2)}, "trainer": {"epoch": 2}}, good)
    assert open_resume_checkpoint(good)["trainer"] == {"epoch": 2}
