"""The MONAI Label server's processes: started in a process group of their own, stopped as a whole.

``monailabel start_server`` is a child of ``cxrkit label serve``. Started in
its own session (:func:`start_group`), it does not get the terminal's Ctrl-C
directly: ``cxrkit label serve`` catches SIGINT, SIGTERM and SIGHUP
(:func:`stop_signals`) and ends the child's whole group (:func:`stop_group`),
waiting for it, so no server is left answering on the port. On Linux the child
also gets SIGTERM should its parent die without a word (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from typing import IO, Iterator, Mapping, Sequence

__all__ = ["Stopped", "free_port", "start_group", "stop_group", "stop_signals"]

_PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """A stop signal arrived (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start_group(cmd: Sequence[str], env: Mapping[str, str], output: IO[bytes] | None = None) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new process group (and session).

    Args:
        cmd: the command line.
        env: its environment.
        output: where its stdout and stderr go (default: this process's).
    """
    return subprocess.Popen(
        list(cmd), env=dict(env), start_new_session=True,
        stdout=output, stderr=subprocess.STDOUT if output is not None else None,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def stop_group(process: subprocess.Popen, timeout: float = 20.0) -> int:
    """End ``process`` and every process of its group: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns:
        The process's exit code.
    """
    if process.poll() is None:
        try:
            group = os.getpgid(process.pid)
        except ProcessLookupError:
            return process.wait()
        os.killpg(group, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            process.wait(timeout=timeout)
        try:  # children that outlived their leader
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return int(process.returncode)


@contextmanager
def stop_signals() -> Iterator[None]:
    """Inside the block SIGINT, SIGTERM and SIGHUP raise :class:`Stopped`; the old handlers come back after."""

    def raise_stopped(signum: int, frame: object) -> None:
        raise Stopped(signum)

    old = {}
    for signum in STOP_SIGNALS:
        try:
            old[signum] = signal.signal(signum, raise_stopped)
        except ValueError:  # not the main thread: signals stay as they are
            break
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
