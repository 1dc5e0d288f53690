"""``write_report(sweep_dir, out)``: the report of a sweep, the library behind scripts/report.py.

Writes into ``out`` (default ``<sweep_dir>/report``):

- ``table.md``, ``table.csv``, ``table.tex``: one row per swept value (or combination), mean
  +- std over seeds of each metric, the PCA baseline beside the autoencoder's test MSE, run
  counts, and every run that did not complete with its error;
- ``runs.csv``: every run, its status, axis values, seed and all its metrics;
- ``<axis>.png``: one figure per swept axis (metric vs axis, error bars, PCA dashed);
- ``reconstructions.png``: test inputs on top, a reconstruction row per swept value;
- ``report.md``: the table and the figures together, for a README or a pull request.

A failed, unfinished or never-started run never stops the report: it is counted and listed.

    python scripts/report.py multirun/2026-11-26/16-30-00_sweep_latent --metric test/mse
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ae_jax.evaluation.figures import FigureError
from ae_jax.sweeps.collect import SEED_KEYS, SweepDirError, collect_runs, swept_axes
from ae_jax.sweeps.plots import axis_figure, reconstruction_grid, save
from ae_jax.sweeps.summary import (
    present_metrics,
    runs_csv,
    summarize,
    to_csv,
    to_latex,
    to_markdown,
)

log = logging.getLogger("ae_jax")


@dataclass
class Report:
    """What ``write_report`` found and wrote."""

    out: Path
    title: str
    axes: list[str]
    metrics: list[str]
    counts: dict[str, int]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "axis"


def sweep_title(runs, root: Path) -> str:
    """The runs' shared ``name`` (e.g. sweep_latent), else the directory's name."""
    names = {r.config.get("name") for r in runs if r.config.get("name")}
    return names.pop() if len(names) == 1 else root.resolve().name


def write_report(
    sweep_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    metrics: list[str] | None = None,
    seed_keys: tuple[str, ...] = SEED_KEYS,
) -> Report:
    """Collect the runs under ``sweep_dir`` and write the tables and figures into ``out``.

    Args:
      sweep_dir: a multirun directory (or any directory holding run directories).
      out: where to write; default ``<sweep_dir>/report``.
      metrics: metric keys for the table and figures; default: summary.DEFAULT_METRICS that
        the runs have (test/pca_mse is added beside test/mse).
      seed_keys: config keys that count as replicates, not axes.

    Raises:
      SweepDirError: if sweep_dir holds no run.
    """
    root = Path(sweep_dir)
    runs = collect_runs(root)
    out = Path(out) if out is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    axes = swept_axes(runs, seed_keys)
    shown = present_metrics(runs, metrics)
    rows = summarize(runs, axes, shown)
    title = sweep_title(runs, root)
    counts = {
        s: sum(r.status == s for r in runs)
        for s in ("completed", "failed", "unfinished", "not started")
    }
    report = Report(out, title, [a.name for a in axes], shown, counts)
    if metrics and len(shown) < len(metrics):
        missing = sorted(set(metrics) - set(shown))
        report.notes.append(f"no completed run has {', '.join(missing)}")

    tables = {
        "table.md": to_markdown(rows, axes, shown, root),
        "table.csv": to_csv(rows, axes, shown),
        "table.tex": to_latex(rows, axes, shown, caption=f"{title}."),
        "runs.csv": runs_csv(runs, axes, seed_keys, root),
    }
    for name, text in tables.items():
        (out / name).write_text(text)
        report.files.append(out / name)

    figures: list[tuple[str, Path]] = []
    plotted = [m for m in shown if any(row.stats[m].n for row in rows)]
    if not plotted:
        report.notes.append("no completed run: no figures")
    else:
        for i, axis in enumerate(axes):
            path = out / f"{_slug(axis.keys[0])}.png"
            save(axis_figure(rows, axes, i, plotted, title=title), path)
            figures.append((f"{axis.name}", path))
        try:
            grid = reconstruction_grid(
                rows, axes, title=f"{title}: test reconstructions (lowest seed of each row)"
            )
        except FigureError as err:  # e.g. runs saved different numbers of examples
            grid = None
            report.notes.append(f"no reconstruction grid: {err}")
        if grid is not None:
            save(grid, out / "reconstructions.png")
            figures.append(("reconstructions", out / "reconstructions.png"))
    report.files += [p for _, p in figures]

    (out / "report.md").write_text(_report_markdown(report, tables["table.md"], figures, root))
    report.files.append(out / "report.md")
    return report


def _report_markdown(report: Report, table: str, figures, root: Path) -> str:
    c = report.counts
    total = sum(c.values())
    lines = [
        f"# Sweep report: {report.title}",
        "",
        f"`{root}`: {total} runs ({c['completed']} completed, {c['failed']} failed, "
        f"{c['unfinished']} unfinished, {c['not started']} not started); "
        f"swept: {', '.join(report.axes) or 'nothing (replicates only)'}.",
        "",
        table.rstrip(),
        "",
    ]
    lines += [f"- note: {n}" for n in report.notes] + ([""] if report.notes else [])
    for name, path in figures:
        lines += [f"![{name}]({path.name})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line of scripts/report.py; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="report.py",
        description="Tables (Markdown, CSV, LaTeX) and figures of a Hydra multirun of ae-jax.",
    )
    parser.add_argument("sweep_dir", help="multirun directory, e.g. multirun/<date>/<time>_<name>")
    parser.add_argument("--out", default=None, help="output directory (default: SWEEP_DIR/report)")
    parser.add_argument(
        "--metric",
        action="extend",
        nargs="+",
        default=None,
        metavar="KEY",
        help="metrics to show, e.g. --metric test/mse test/denoise_mse "
        "(default: test/mse, test/pca_mse and the denoising, Jacobian and "
        "code metrics that the runs have)",
    )
    parser.add_argument(
        "--seed-key",
        action="append",
        default=None,
        metavar="KEY",
        help="config key of the replicates (default: trainer.seed); repeatable",
    )
    args = parser.parse_args(argv)
    try:
        report = write_report(
            args.sweep_dir,
            args.out,
            args.metric,
            tuple(args.seed_key) if args.seed_key else SEED_KEYS,
        )
    except SweepDirError as err:
        print(f"error: {err}")
        return 2
    c = report.counts
    print(
        f"{report.title}: {sum(c.values())} runs, {c['completed']} completed, {c['failed']} "
        f"failed, {c['unfinished']} unfinished, {c['not started']} not started; "
        f"axes: {', '.join(report.axes) or 'none'}"
    )
    for note in report.notes:
        print(f"note: {note}")
    print((report.out / "table.md").read_text())
    print(f"wrote {len(report.files)} files to {report.out}")
    return 0
