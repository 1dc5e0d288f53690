"""``write_report(sweep_dir, out)``: the report of a sweep, the library behind scripts/report.py.

Writes into ``out`` (default ``<sweep_dir>/report``):

- ``table.md``, ``table.csv``, ``table.tex``: one row per swept value (or combination), mean
  +- std over seeds of each metric, the PCA baseline beside the autoencoder's test MSE, run
  counts, and every run that did not complete with its error;
- ``runs.csv``: every run, its status, axis values, seed and all its metrics;
- ``<axis>.png``: one figure per swept axis (metric vs axis, error bars, PCA dashed);
- ``reconstructions.png``: test inputs on top, a reconstruction row per swept value;
- ``report.md``: the table and the figures together, for a README or a pull request.

A hyperparameter search (Hydra's Optuna sweeper; ``collect.find_study``) gives a new value of
each searched parameter to every trial, so those are no grid axes; instead the report writes

- ``study.md``, ``study.csv``: the best trial (its parameters, score and directory, beside the
  sweeper's ``optimization_results.yaml``) and every trial ranked by its score;
- ``study.png``: the score against each searched parameter (log x for a log-searched one, the
  best trial starred) and against the trial number;
- ``reconstructions.png``: the best trial's test reconstructions;

and the grid tables and figures only for keys that vary besides the searched ones.

A failed, unfinished or never-started run never stops the report: it is counted and listed.

    python scripts/report.py multirun/2026-11-26/16-30-00_sweep_latent --metric test/mse
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ae_jax.evaluation.figures import FigureError
from ae_jax.run_io import write_text_atomic
from ae_jax.sweeps.collect import (
    SEED_KEYS,
    Axis,
    Study,
    SweepDirError,
    collect_runs,
    find_study,
    sweeps_of,
    swept_axes,
)
from ae_jax.sweeps.plots import (
    REFERENCE_MARKERS,
    Reference,
    axis_figure,
    reconstruction_grid,
    save,
    study_figure,
)
from ae_jax.sweeps.summary import (
    Row,
    datasets,
    format_value,
    present_metrics,
    runs_csv,
    study_csv,
    study_markdown,
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
    study: Study | None = None  # a hyperparameter search (Optuna), else None
    references: list[str] = field(default_factory=list)  # the published numbers, as text


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
    references: tuple[Reference, ...] = (),
) -> Report:
    """Collect the runs under ``sweep_dir`` and write the tables and figures into ``out``.

    Args:
      sweep_dir: a multirun directory (or any directory holding run directories).
      out: where to write; default ``<sweep_dir>/report``.
      metrics: metric keys for the table and figures; default: summary.DEFAULT_METRICS that
        the runs have (test/pca_mse is added beside test/mse).
      seed_keys: config keys that count as replicates, not axes.
      references: published numbers drawn as black markers in their metric's panel of their axis
        (``ae_jax.sweeps.plots.Reference``) and listed in report.md.

    Raises:
      SweepDirError: if sweep_dir holds no run, or ``metrics`` are asked for and no
        completed run has any of them (nothing is written then).
    """
    root = Path(sweep_dir)
    runs = collect_runs(root)
    out = Path(out) if out is not None else root / "report"
    study = find_study(root, runs)
    searched = tuple(p.key for p in study.params) if study is not None else ()
    known = set().union(*(r.config for r in runs))
    for key in (k for k in seed_keys if k not in SEED_KEYS and k not in known):
        near = difflib.get_close_matches(key, sorted(known), n=1)
        raise SweepDirError(  # a misspelt key would have made the real seed an axis
            f"--seed-key {key}: no run under {root} has this setting"
            + (f"; did you mean {near[0]}?" if near else "")
        )
    axes = swept_axes(runs, tuple(seed_keys) + searched)  # searched keys are no grid axes
    shown = present_metrics(runs, metrics)
    done = [r for r in runs if r.status == "completed"]
    missing = [m for m in metrics or () if m not in shown]
    if missing and done:  # an asked metric misspelt or absent (one of several was dropped)
        have = sorted({k for r in done for k in r.metrics})
        near = difflib.get_close_matches(missing[0], have, n=1)
        raise SweepDirError(
            f"--metric {' '.join(missing)}: no completed run under {root} has "
            f"{'it' if len(missing) == 1 else 'them'}"
            + (f" (did you mean {near[0]}?)" if near else "")
            + f"; its runs' metrics: {', '.join(have)}"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as err:
        raise SweepDirError(
            f"the report's directory {out} cannot be written ({err.strerror or err}); choose a "
            "writable --out"
        ) from None
    rows = summarize(runs, axes, shown)
    title = sweep_title(runs, root)
    sweeps = sweeps_of(root, runs)
    counts = {
        s: sum(r.status == s for r in runs)
        for s in ("completed", "failed", "unfinished", "not started")
    }
    report = Report(out, title, [a.name for a in axes], shown, counts, study=study)
    if metrics and len(shown) < len(metrics):
        missing = sorted(set(metrics) - set(shown))
        report.notes.append(f"no completed run has {', '.join(missing)}")
    if len(sweeps) > 1:
        names = [str(p.relative_to(root)) if p != root else "." for p in sweeps]
        shown_names = ", ".join(names[:4]) + (
            f" and {len(names) - 4} more" if len(names) > 4 else ""
        )
        report.notes.append(
            f"{root} holds the runs of {len(sweeps)} sweeps ({shown_names}), reported together "
            "as one table; give one sweep's directory for its own report (and its study, if it "
            "is a search)"
        )
    on = datasets(runs)
    if len(on) > 1:
        report.notes.append(
            f"the runs are on {len(on)} datasets ({', '.join(on)}): their errors do not compare "
            "across datasets, so no row is marked best"
        )
    for row in rows:  # replicates are seeds: runs of one row with equal seeds are repeats
        keys = (*seed_keys, *searched)  # a study's trials differ in what it searched
        started = [r for r in row.runs if r.config and r.status != "not started"]
        seeds = [repr([r.config.get(k) for k in keys]) for r in started]
        if len(seeds) > len(set(seeds)):
            where = ", ".join(f"{a.name}={format_value(v)}" for a, v in zip(axes, row.values))
            report.notes.append(
                f"{len(seeds)} runs{' at ' + where if where else ''} share their seeds: they "
                "repeat one run, and their spread is not over seeds"
            )
    tabulate = study is None or bool(axes)  # a study alone has no grid to tabulate
    combinations = math.prod(len({row.values[i] for row in rows}) for i in range(len(axes)))
    if len(axes) > 1 and len(rows) < combinations:
        count = f"{combinations:,}" if combinations < 10**6 else f"{combinations:.1e}"
        report.notes.append(
            f"the runs vary in {len(axes)} keys and form no full grid: {len(rows)} of their "
            f"{count} combinations were run"
        )

    # Written into a directory of its own first, then moved into ``out`` file by file: a
    # report that fails part-way (a full disk) leaves an earlier report there as it was.
    work = out / f".report-{os.getpid()}.partial"
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir()
        tables = {"runs.csv": runs_csv(runs, axes, seed_keys, root)}
        if tabulate:
            tables = {
                "table.md": to_markdown(rows, axes, shown, root),
                "table.csv": to_csv(rows, axes, shown),
                "table.tex": to_latex(rows, axes, shown, caption=f"{title}."),
                **tables,
            }
        if study is not None:
            tables["study.md"] = study_markdown(study, root, title)
            tables["study.csv"] = study_csv(study, root)
        for name, text in tables.items():
            write_text_atomic(work / name, text)
            report.files.append(work / name)

        figures: list[tuple[str, Path]] = []
        if study is not None and study.trials:
            save(study_figure(study, title=title), work / "study.png")
            figures.append(
                ("the score against each searched parameter and the trial", work / "study.png")
            )
            best = study.best
            if not tabulate and best is not None:
                rows_best = [Row((f"{best.number} (best)",), [best.run])]
                try:
                    shown_best = reconstruction_grid(
                        rows_best,
                        [Axis(("trial",))],
                        title=f"{title}: test reconstructions of the best trial ({best.number})",
                    )
                except FigureError as err:
                    shown_best = None
                    report.notes.append(f"no reconstructions: {err}")
                if shown_best is not None:
                    save(shown_best, work / "reconstructions.png")
                    figures.append(
                        ("the best trial's reconstructions", work / "reconstructions.png")
                    )
        plotted = [m for m in shown if any(row.stats[m].n for row in rows)]
        if tabulate and not plotted:
            report.notes.append(
                "no completed run: no figures" if not done else "no metric to plot: no figures"
            )
        elif tabulate:
            for i, axis in enumerate(axes):
                path = work / f"{_slug(axis.keys[0])}.png"
                save(axis_figure(rows, axes, i, plotted, title=title, references=references), path)
                figures.append((f"{axis.name}", path))
            try:
                grid = reconstruction_grid(
                    rows, axes, title=f"{title}: test reconstructions (lowest seed of each row)"
                )
            except FigureError as err:  # e.g. runs saved different numbers of examples
                grid = None
                report.notes.append(f"no reconstruction grid: {err}")
            if grid is not None:
                save(grid, work / "reconstructions.png")
                figures.append(("reconstructions", work / "reconstructions.png"))
        report.files += [p for _, p in figures]
        for i, ref in enumerate(references):
            drawn = ref.metric in plotted and any(
                ref.position(axis, {row.values[i]: 0 for row in rows}) is not None
                for i, axis in enumerate(axes)
            )
            symbol = REFERENCE_MARKERS[i % len(REFERENCE_MARKERS)][1]
            where = f"{ref.key} = {format_value(ref.x)}"
            text = f"{symbol} {ref.label}: {ref.metric} = {ref.value:g} at {where}"
            if not drawn:
                text += " (not drawn: the sweep has no such metric or axis value)"
                report.notes.append(
                    f"--reference {ref.metric} {ref.key}={format_value(ref.x)}: not drawn, the "
                    f"sweep has no such metric or axis value (its axes: "
                    f"{', '.join(a.name for a in axes) or 'none'}; its metrics: "
                    f"{', '.join(shown)})"
                )
            report.references.append(text)

        text = _report_markdown(
            report, tables.get("table.md"), tables.get("study.md"), figures, _shown_path(root)
        )
        write_text_atomic(work / "report.md", text)
        report.files.append(work / "report.md")
    except BaseException as err:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(err, OSError) and err.filename and Path(err.filename).parent == work:
            name = str(out / Path(err.filename).name)  # the file as the user knows it
            raise OSError(err.errno, err.strerror or str(err), name) from None
        raise
    for f in report.files:
        os.replace(f, out / f.name)
    work.rmdir()
    report.files = [out / f.name for f in report.files]
    return report


def _shown_path(path: Path) -> Path:
    """``path`` as a report names it: relative to the working directory when inside it (a
    committed report does not carry the machine's absolute paths)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _report_markdown(
    report: Report, table: str | None, study: str | None, figures, root: Path
) -> str:
    c = report.counts
    total = sum(c.values())
    if report.study is not None:
        searched = ", ".join(p.key for p in report.study.params) or "nothing"
        what = f"a hyperparameter search (Optuna) of {searched}"
        if report.axes:
            what += f"; also varied: {', '.join(report.axes)}"
    else:
        what = f"swept: {', '.join(report.axes) or 'nothing (replicates only)'}"
    lines = [
        f"# Sweep report: {report.title}",
        "",
        f"`{root}`: {total} run{'' if total == 1 else 's'} ({c['completed']} completed, "
        f"{c['failed']} failed, {c['unfinished']} unfinished, {c['not started']} not "
        f"started); {what}.",
        "",
    ]
    for part in (study, table):
        if part:
            lines += [part.rstrip(), ""]
    if report.references:
        lines += ["Published numbers (black markers in the figures):", ""]
        lines += [f"- {r}" for r in report.references] + [""]
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
        help="metrics to show, e.g. --metric test/mse test/denoise_mse; test/mse brings "
        "PCA's (test/pca_mse) beside it as its baseline "
        "(default: the fine-tuned and linear-probe test errors, test/mse, test/pca_mse and "
        "the denoising, Jacobian and code metrics that the runs have)",
    )
    parser.add_argument(
        "--seed-key",
        action="append",
        default=None,
        metavar="KEY",
        help="config key of the replicates (default: trainer.seed); repeatable",
    )
    parser.add_argument(
        "--reference",
        action="append",
        nargs=4,
        default=[],
        metavar=("METRIC", "KEY=X", "VALUE", "LABEL"),
        help="a published number drawn as a black marker (a shape per reference), e.g. "
        "--reference supervised/test/error_pct "
        "noise.level=0.25 1.28 'SdA-3 (paper)'; repeatable",
    )
    args = parser.parse_args(argv)
    references = []
    for given in args.reference:
        try:
            references.append(Reference.parse(*given))
        except ValueError as err:
            print(f"error: --reference {' '.join(given)}: {err}", file=sys.stderr)
            return 2
    try:
        report = write_report(
            args.sweep_dir,
            args.out,
            args.metric,
            tuple(args.seed_key) if args.seed_key else SEED_KEYS,
            tuple(references),
        )
    except SweepDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file of the report, part-way (a full disk, a removed directory)
        where = err.filename or args.out or "the report's directory"
        print(
            f"error: {where} cannot be written ({err.strerror or err}); choose a writable --out",
            file=sys.stderr,
        )
        return 2
    c = report.counts
    what = f"axes: {', '.join(report.axes) or 'none'}"
    if report.study is not None:
        searched = ", ".join(p.key for p in report.study.params) or "nothing"
        what = f"an Optuna study of {searched}" + (f"; {what}" if report.axes else "")
    print(
        f"{report.title}: {sum(c.values())} run{'' if sum(c.values()) == 1 else 's'}, "
        f"{c['completed']} completed, {c['failed']} "
        f"failed, {c['unfinished']} unfinished, {c['not started']} not started; {what}"
    )
    for note in report.notes:
        print(f"note: {note}")
    for name in ("study.md", "table.md"):  # a study's trials, a grid's table, or both
        if (report.out / name) in report.files:
            print((report.out / name).read_text())
    print(f"wrote {len(report.files)} files to {report.out}")
    return 0
