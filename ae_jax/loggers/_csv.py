"""``<run dir>/metrics.csv``: the history table as the run goes.

The run writes ``history.csv`` when it ends; this one is rewritten after every epoch (atomically,
a small file), so a running or killed run can be read with any spreadsheet or ``tail``. A new
column (evaluation starts, a term appears) widens the whole table; a resumed run that logs an
epoch again replaces its columns' values at that epoch and the ones after it. The stages of a
layer-wise run each count their epochs from 1 under their own columns
(``pretrain/layer_0/train/loss``, ``finetune/...``): they share the rows.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ae_jax.loggers.registry import CsvSettings
from ae_jax.run_io import csv_text, write_text_atomic


class CsvLogger:
    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[int, dict[str, float]] = {}
        self.columns: list[str] = ["step"]
        if path.is_file():  # a resumed run: keep what the earlier attempt wrote
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or ["step"])
                for r in reader:
                    try:
                        step = int(r["step"])
                    except (KeyError, TypeError, ValueError):
                        continue
                    self.rows[step] = {k: v for k, v in r.items() if k != "step" and v != ""}

    def log_metrics(self, row: dict[str, float], step: int) -> None:
        # the row's columns are logged again from this step on (a resumed run): their later
        # values go; other columns (an earlier stage's, whose steps restart at 1) stay
        for s in [s for s in self.rows if s >= step]:
            kept = {k: v for k, v in self.rows[s].items() if k not in row}
            if kept:
                self.rows[s] = kept
            else:
                del self.rows[s]
        self.rows.setdefault(step, {}).update(row)
        self.columns += [k for k in row if k not in self.columns]
        self._write()

    def _write(self) -> None:
        rows = [{"step": step, **self.rows[step]} for step in sorted(self.rows)]
        write_text_atomic(self.path, csv_text(self.columns, rows))

    def log_image(self, tag: str, png_path: Path, step: int) -> None:
        pass  # the PNG is already in the run directory

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        pass  # config.yaml and metrics.json already hold them

    def close(self, status: str = "completed") -> None:
        pass


def open_csv(
    settings: CsvSettings,
    *,
    workdir: Path,
    run_name: str,
    config: dict,
    group: str | None = None,
) -> CsvLogger:
    del run_name, config, group
    return CsvLogger(Path(workdir) / settings.filename)
