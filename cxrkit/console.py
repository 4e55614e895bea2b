"""The console of a run: what a person reads, and the log file that keeps everything else.

A training run shows one progress bar per epoch, one line per epoch and a short
summary (:mod:`cxrkit.engine.console` builds them); every other log record
(Ignite's and MONAI's messages, the per-class metrics of
``monai.handlers.StatsHandler``, cxrkit's INFO lines) goes to the run folder's
``log.txt``. Verbose mode (``cxrkit -v``, or ``--verbose true`` of a bundle) shows
those records on the console as well.

:func:`route_logging` (a bundle config's ``initialize`` calls it) does the
routing: every console ``StreamHandler`` becomes a :class:`ConsoleHandler`,
which writes through ``tqdm.write`` (a log line never lands inside a progress
bar) and passes only warnings and errors unless verbose; one
:class:`RunLogHandler` collects every record, holding them until the run folder
is known (:func:`open_run_log`), then writing them to its ``log.txt``.
:func:`write` prints a console line the same safe way and keeps it in the log.

Progress bars are drawn only on a terminal: on a pipe or in CI
(:func:`is_terminal` false) the console stays line-oriented.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cxrkit.options import optional_flag

__all__ = [
    "ConsoleHandler",
    "RunLogHandler",
    "set_verbose",
    "is_verbose",
    "route_logging",
    "open_run_log",
    "run_log_path",
    "write",
    "is_terminal",
    "bar_disable",
    "LOG_FILE",
]

#: the log file's name in a run (or evaluation) folder.
LOG_FILE = "log.txt"
#: records of this logger are console lines already printed by :func:`write` (kept in the log file only).
LINES_LOGGER = "cxrkit.console"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_BUFFER_LIMIT = 20000  # records held before the run folder is known (then the oldest are dropped)

_state: dict[str, Any] = {"verbose": False, "log": None}


def set_verbose(on: Any) -> None:
    """Whether the whole log shows on the console (``cxrkit -v`` sets it for the process)."""
    _state["verbose"] = bool(on)


def is_verbose() -> bool:
    """Whether the whole log shows on the console."""
    return bool(_state["verbose"])


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default: ``sys.stderr``, where progress bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def bar_disable(progress: Any) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` setting: ``True`` when off, ``None`` (bars on a terminal only) when on."""
    return None if progress else True


class ConsoleHandler(logging.StreamHandler):
    """A console ``StreamHandler`` that writes through ``tqdm.write`` and hides INFO records unless verbose.

    Lines printed by :func:`write` (logger ``cxrkit.console``) are on the console already and are not repeated.
    A handler made for the process's ``sys.stdout``/``sys.stderr`` writes to whatever they are when a record
    comes (a captured or replaced stream is followed, never written to after it was closed).

    Args:
        stream: the stream of the handler it replaces.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.which = "stdout" if stream is sys.stdout else "stderr" if stream is sys.stderr else None

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if record.name == LINES_LOGGER:
            return False
        if record.levelno < logging.WARNING and not is_verbose():
            return False
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = getattr(sys, self.which) if self.which else self.stream
            tqdm.write(self.format(record), file=stream)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class RunLogHandler(logging.Handler):
    """Every record, in the run folder's ``log.txt`` once it is known; held in memory until then."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(_FORMAT))
        self.buffer: list[logging.LogRecord] = []
        self.path: Path | None = None
        self._file: Any = None

    def open(self, path: str | Path) -> None:
        """Write to ``path`` (appending: a resumed run continues its log), the held records first."""
        path = Path(path)
        if self._file is not None and self.path == path:
            return
        self.close_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close_file
        self.path = path
        held, self.buffer = self.buffer, []
        for record in held:
            self.emit(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            self.buffer.append(record)
            del self.buffer[:-_BUFFER_LIMIT]
            return
        try:
            self._file.write(self.format(record) + "\n")
            self._file.flush()
        except Exception:  # noqa: BLE001 - a full disk must not stop the run; logging reports it
            self.handleError(record)

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def close(self) -> None:
        self.close_file()
        super().close()


def _loggers() -> list[logging.Logger]:
    """The root logger and every logger that writes on its own (MONAI's loggers do not propagate)."""
    found = [logging.getLogger()]
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate and logger.handlers:
            found.append(logger)
    return found


def _is_console(handler: logging.Handler) -> bool:
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) is not None


def _adopt(run_log: RunLogHandler) -> None:
    """Quiet every console handler and add ``run_log`` to every writing logger (also those created since)."""
    for logger in _loggers():
        for handler in list(logger.handlers):
            if isinstance(handler, RunLogHandler) and handler is not run_log:
                logger.removeHandler(handler)
            elif _is_console(handler):
                console = ConsoleHandler(handler.stream)
                console.setLevel(logging.NOTSET)  # the filter decides: warnings, or everything when verbose
                console.setFormatter(handler.formatter)
                logger.removeHandler(handler)
                logger.addHandler(console)
        if run_log not in logger.handlers:
            logger.addHandler(run_log)


def route_logging(verbose: Any = None) -> RunLogHandler:
    """Route the process's logging: console handlers quiet below WARNING (unless verbose), everything to a new
    run log (held until :func:`open_run_log` names its file). Safe to call again: the previous run log is closed.

    Args:
        verbose: ``True``/``False`` sets :func:`set_verbose`; ``None`` keeps the process's choice (``cxrkit -v``).

    Returns:
        The run log handler.

    Raises:
        ValueError: ``verbose`` is not a boolean.
    """
    verbose = optional_flag(verbose, "verbose")
    if verbose is not None:
        set_verbose(verbose)
    previous = _state["log"]
    run_log = RunLogHandler()
    _adopt(run_log)
    if isinstance(previous, RunLogHandler):
        previous.close()
    _state["log"] = run_log
    return run_log


def open_run_log(path: str | Path) -> Path:
    """Write the run log (and the records held so far) to ``path``; loggers made since the routing (MONAI's
    handlers make their own) are routed too, and logging is routed first when nothing did."""
    run_log = _state["log"] if isinstance(_state["log"], RunLogHandler) else route_logging()
    _adopt(run_log)
    run_log.open(path)
    return Path(path)


def run_log_path() -> Path | None:
    """The file the run log writes to (``None`` before :func:`open_run_log`)."""
    run_log = _state["log"]
    return run_log.path if isinstance(run_log, RunLogHandler) else None


def write(line: str = "") -> None:
    """Print a console line (never inside a progress bar) and keep it in the run log."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
    if line.strip():
        logging.getLogger(LINES_LOGGER).info(line)
