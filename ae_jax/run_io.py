"""Files a run writes: atomic JSON, the per-epoch history (JSON lines and CSV)."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


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
    whole or as it was (an earlier file there is kept until the rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_history(workdir: str | Path, history: list[dict[str, float]]) -> None:
    """``history.jsonl`` (one JSON object per epoch) and ``history.csv`` (the same, as a table)."""
    workdir = Path(workdir)
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    tmp = workdir / ".history.jsonl.tmp"
    with open(tmp, "w") as f:
        for row in history:
            f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
    os.replace(tmp, workdir / "history.jsonl")
    tmp = workdir / ".history.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, workdir / "history.csv")


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)
