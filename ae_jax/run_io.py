"""Files a run writes: atomic JSON, the per-epoch history (JSON lines and CSV)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, BinaryIO

# The process's umask, read once while it starts (setting it is the only way to read it before
# Python 3.13, and it must not change while other threads create files).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file; mkstemp's 0o600 is for secrets


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible instead of invalid output
    return value


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename: never a half-written file."""
    if isinstance(obj, dict):
        obj = {k: _jsonable(v) for k, v in obj.items()}
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    write_atomic(path, lambda f: f.write(text.encode()))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` into a temporary file beside ``path``, then renamed to it: ``path`` is
    whole or as it was (an earlier file there is kept until the rename). An OS error (a full
    disk) names ``path``, and no temporary file is left behind."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # readable as any file the user creates
            write(f)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename != str(path):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def write_history(workdir: str | Path, history: list[dict[str, float]]) -> None:
    """``history.jsonl`` (one JSON object per epoch) and ``history.csv`` (the same, as a table)."""
    workdir = Path(workdir)
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    lines = "".join(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n" for row in history)
    write_text_atomic(workdir / "history.jsonl", lines)
    write_text_atomic(workdir / "history.csv", csv_text(keys, history))


def csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV with a header of ``columns`` (a missing value is an empty cell)."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def size_text(nbytes: float) -> str:
    """A byte count as people read it: ``512 B``, ``412 KiB``, ``1.1 MiB``, ``3.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            break
        nbytes /= 1024
    if unit == "B":
        return f"{int(nbytes)} B"
    return f"{nbytes:.1f} {unit}" if nbytes < 10 else f"{nbytes:.0f} {unit}"


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent); None
    where the system cannot say."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def reader_left(stream: Any = None) -> None:
    """The reader of ``stream`` (stdout by default) went away (``... | head``): send the rest
    of what is written to it to /dev/null, so that neither a later write nor the interpreter's
    last flush fails on the closed pipe (Python's documented remedy for EPIPE)."""
    stream = sys.stdout if stream is None else stream
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


class LogFile(logging.FileHandler):
    """A job's ``train.log`` (``conf/hydra/job_logging/ae_jax.yaml``), opened at its first
    line rather than when Hydra sets the job up, where a directory that cannot be written
    stopped the whole multirun with a traceback. A file that cannot be opened is then an error
    of this handler (``handleError``: one warning, ``ae_jax.cli.guard_log_file``), as a line
    that cannot be written is, not an exception out of the logging call."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            if getattr(self, "_closed", False):  # given up on (handleError): lines are dropped
                return
            try:
                self.stream = self._open()
            except OSError:
                self.handleError(record)
                return
        super().emit(record)


# The run whose lines are being logged, where one process writes several runs' log files (a
# vectorised group's members): ``member_lines`` sets it, ``OwnLines`` reads it.
_LINES_OF: ContextVar[Path | None] = ContextVar("ae_jax_lines_of", default=None)


@contextlib.contextmanager
def member_lines(workdir: str | Path) -> Iterator[None]:
    """The lines logged in the block are the run in ``workdir``'s own (its test line, its
    warnings): they reach its log file, and no other member's (``OwnLines``)."""
    token = _LINES_OF.set(Path(workdir).absolute())
    try:
        yield
    finally:
        _LINES_OF.reset(token)


class OwnLines(logging.Filter):
    """A filter for the log file of the run in ``workdir``: it passes the lines every run
    shares (a vectorised group's layout and progress) and that run's own lines
    (``member_lines``), not another member's."""

    def __init__(self, workdir: str | Path) -> None:
        super().__init__()
        self.workdir = Path(workdir).absolute()

    def filter(self, record: logging.LogRecord) -> bool:
        owner = _LINES_OF.get()
        return owner is None or owner == self.workdir
