"""A sweep reduced to one row per swept value (or value combination): mean +- std over seeds,
run counts and failures, written as a paper-style table in Markdown, CSV and LaTeX.

The spread is the sample standard deviation (ddof = 1) over the completed runs of a row, the
usual "mean +- std over n seeds"; a row with one completed run shows its value alone. Failed,
unfinished and never-started runs are counted in the ``runs`` / ``not completed`` columns and
their errors listed under the Markdown table, never dropped.

    rows = summarize(runs, axes, metrics=["test/mse", "test/pca_mse"])
    Path("table.md").write_text(to_markdown(rows, axes, metrics))
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ae_jax.sweeps.collect import STATUSES, Axis, Run, Study, Trial

# Shown when present, in this order; test/pca_mse sits beside test/mse as its baseline.
DEFAULT_METRICS = (
    "supervised/test/error_pct",  # a pipeline's classifier, when a sweep has one
    "probe/error_pct",
    "test/mse",
    "test/pca_mse",
    "test/denoise_mse",
    "test/jacobian_fro",
    "test/mean_code_activation",
)
METRIC_LABELS = {
    "test/mse": "AE test MSE",
    "test/pca_mse": "PCA test MSE",
    "test/denoise_mse": "denoising MSE",
    "test/jacobian_fro": "Jacobian ‖J‖_F",
    "test/mean_code_activation": "mean code",
    "test/code_nonzero_per_example": "active code units",
    "test/rmse": "AE test RMSE",
    "test/bce": "test BCE",
    "test/sse_per_example": "SSE per image",
    "test/subspace_angle_max_deg": "max angle to PCA (deg)",
    "time/train_seconds": "train time (s)",
    "val/mse": "AE validation MSE",
    "val/denoise_mse": "validation denoising MSE",
    "supervised/test/error_pct": "fine-tuned test error %",
    "supervised/val/error_pct": "fine-tuned validation error %",
    "probe/error_pct": "linear probe test error %",
}
LATEX_LABELS = {
    "test/mse": "AE MSE",
    "test/pca_mse": "PCA MSE",
    "test/denoise_mse": "denoising MSE",
    "test/jacobian_fro": r"$\|J\|_F$",
    "test/mean_code_activation": "mean code",
}
# Metrics where lower is better: the best row's mean is set in bold.
LOWER_IS_BETTER = (
    "test/mse",
    "test/denoise_mse",
    "test/rmse",
    "test/bce",
    "test/sse_per_example",
    "supervised/test/error_pct",
    "supervised/val/error_pct",
    "probe/error_pct",
)


@dataclass
class Stat:
    mean: float
    std: float  # nan with fewer than two values
    n: int


@dataclass
class Row:
    """The runs that share one value of every axis, and their statistics."""

    values: tuple  # one per axis
    runs: list[Run]
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def counts(self) -> Counter:
        return Counter(r.status for r in self.runs)

    @property
    def not_completed(self) -> list[Run]:
        return [r for r in self.runs if r.status != "completed"]


def present_metrics(
    runs: list[Run], wanted: list[str] | tuple[str, ...] | None = None
) -> list[str]:
    """The metrics to show: ``wanted`` (default DEFAULT_METRICS) that some completed run has,
    with test/pca_mse placed right after test/mse whenever test/mse is shown."""
    have = {k for r in runs for k in r.metrics}
    wanted = list(wanted or DEFAULT_METRICS)
    if "test/mse" in wanted and "test/pca_mse" not in wanted:
        wanted.insert(wanted.index("test/mse") + 1, "test/pca_mse")
    return [m for m in dict.fromkeys(wanted) if m in have]


def mean_std(values: list[float]) -> Stat:
    """Mean and sample standard deviation (ddof=1; nan for one value) of finite values."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return Stat(math.nan, math.nan, 0)
    std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
    return Stat(float(np.mean(x)), std, int(x.size))


def sort_key(value: Any) -> tuple:
    """Orders axis values: None, then numbers by size, then anything else by its text."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, tuple):
        return (1, 0.0, tuple(sort_key(v) for v in value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def summarize(runs: list[Run], axes: list[Axis], metrics: list[str]) -> list[Row]:
    """One Row per distinct combination of axis values, sorted along the axes."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(axis.value(run) for axis in axes), []).append(run)
    rows = []
    for values in sorted(groups, key=lambda vs: tuple(sort_key(v) for v in vs)):
        members = groups[values]
        done = [r for r in members if r.status == "completed"]
        stats = {m: mean_std([r.metrics[m] for r in done if m in r.metrics]) for m in metrics}
        rows.append(Row(values, members, stats))
    return rows


def format_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, float):  # 1e6, 1e-5: without printf's "+0" (1e+06, 1e-05)
        mantissa, e, exponent = f"{value:g}".partition("e")
        return f"{mantissa}e{int(exponent)}" if e else mantissa
    return str(value)


def format_mean_std(stat: Stat, pm: str = " ± ") -> str:
    """``mean ± std`` with the std to two significant digits and the mean to the same place."""
    if stat.n == 0 or not math.isfinite(stat.mean):
        return "—"
    # A spread below float32 resolution (the PCA baseline is the same for every seed) is none:
    # "± 0" over several runs (they agree), nothing after a single run.
    if not (math.isfinite(stat.std) and stat.std > 1e-6 * abs(stat.mean)):
        return f"{stat.mean:.4g}" + (f"{pm}0" if stat.n > 1 else "")
    if abs(stat.mean) >= 1e5:  # a run that saturated: 62794409984 ± 5128161936 read as noise
        return f"{stat.mean:.3g}{pm}{stat.std:.2g}"
    decimals = min(max(1 - math.floor(math.log10(stat.std)), 0), 10)
    return f"{stat.mean:.{decimals}f}{pm}{stat.std:.{decimals}f}"


def _status_text(row: Row) -> str:
    counts = row.counts
    parts = [f"{counts[s]} {s}" for s in STATUSES[1:] if counts[s]]
    return ", ".join(parts)


DATASET_KEYS = ("data.source", "data.name", "data.tfds_name", "data.path")


def datasets(runs: list[Run]) -> list[str]:
    """The datasets ``runs`` trained on (their names), one entry per distinct dataset."""
    seen: dict[tuple, str] = {}
    for run in runs:  # a job not started knows only its overrides, not its dataset
        if run.config and run.status != "not started":
            key = tuple(run.config.get(k) for k in DATASET_KEYS)
            seen.setdefault(key, str(run.config.get("data.name") or key[0]))
    return list(seen.values())


def eval_noises(rows: list[Row]) -> set[tuple]:
    """The corruptions the completed runs' denoising metrics were scored at: (noise.kind, its
    evaluation level: noise.eval_level, else the training noise.level)."""
    out = set()
    for row in rows:
        for r in row.runs:
            if r.status == "completed" and r.config:
                level = r.config.get("noise.eval_level")
                level = r.config.get("noise.level") if level is None else level
                out.add((r.config.get("noise.kind"), level))
    return out


def metric_label(metric: str, rows: list[Row], labels: dict | None = None) -> str:
    """A metric's column or panel name; a denoising metric's names the corruption it was
    scored at, or says that each row has its own (a sweep over noise.level scores each level
    at itself unless noise.eval_level fixes one)."""
    label = (METRIC_LABELS if labels is None else labels).get(metric, metric)
    if "denoise_mse" not in metric:
        return label
    noises = eval_noises(rows)
    if len(noises) == 1:
        kind, level = next(iter(noises))
        return f"{label} ({kind} {format_value(level)})" if kind else label
    return f"{label} (each row at its own noise)" if noises else label


def _best(rows: list[Row], metric: str) -> int | None:
    """The row of the lowest mean; none where the rows are on several datasets, whose errors
    do not compare, or where a denoising metric was scored at several corruptions."""
    if metric not in LOWER_IS_BETTER or len(rows) < 2:
        return None
    if len(datasets([run for row in rows for run in row.runs])) > 1:
        return None
    if "denoise_mse" in metric and len(eval_noises(rows)) > 1:
        return None
    means = [row.stats[metric].mean if row.stats[metric].n else math.inf for row in rows]
    best = int(np.argmin(means))
    if not math.isfinite(means[best]) or means.count(means[best]) > 1:
        return None  # a tie: no row is best
    return best


def run_label(run: Run, root: Path | None = None) -> str:
    """Where a run is: its directory (relative to root when inside it), or for a job that never
    started, the overrides it would have run with."""
    if run.status == "not started":
        return "job " + " ".join(run.overrides)
    if root is not None:
        try:
            return str(run.path.relative_to(root))
        except ValueError:
            pass
    return str(run.path)


def to_markdown(
    rows: list[Row], axes: list[Axis], metrics: list[str], root: Path | None = None
) -> str:
    """A Markdown table (best mean in bold), then the error of every run that did not complete."""
    status = any(row.not_completed for row in rows)  # the column only when there is news
    header = [a.name for a in axes] or ["sweep"]
    header += ["runs"] + [metric_label(m, rows) for m in metrics]
    header += ["not completed"] if status else []
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    best = {m: _best(rows, m) for m in metrics}
    for i, row in enumerate(rows):
        cells = [format_value(v) for v in row.values] or ["all runs"]
        cells.append(f"{row.counts['completed']}/{len(row.runs)}")
        for m in metrics:
            text = format_mean_std(row.stats[m])
            cells.append(f"**{text}**" if best[m] == i else text)
        cells += [_status_text(row)] if status else []
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Mean ± sample std over the completed runs (seeds) of each row; `runs` = completed / all."
    )
    failures = [(row, r) for row in rows for r in row.not_completed]
    if failures:
        lines += ["", "Runs that did not complete:", ""]
        for row, run in failures:
            where = ", ".join(
                f"{a.name}={format_value(v)}" for a, v in zip(axes, row.values, strict=True)
            )
            label = run_label(run, root)
            lines.append(f"- `{label}` ({where or 'all'}): **{run.status}**: {run.error}")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row], axes: list[Axis], metrics: list[str]) -> str:
    """Machine-readable: one line per row, ``<metric>/mean``, ``/std``, ``/n`` and status counts."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = [a.name for a in axes] + ["runs"] + [f"n_{s.replace(' ', '_')}" for s in STATUSES]
    for m in metrics:
        header += [f"{m}/mean", f"{m}/std", f"{m}/n"]
    writer.writerow(header + ["errors"])
    for row in rows:
        counts = row.counts
        line = [format_value(v) for v in row.values] + [len(row.runs)]
        line += [counts[s] for s in STATUSES]
        for m in metrics:
            s = row.stats[m]
            line += [repr(s.mean), repr(s.std), s.n]
        line.append(" | ".join(f"{r.status}: {r.error}" for r in row.not_completed))
        writer.writerow(line)
    return buf.getvalue()


def _latex_escape(text: str) -> str:
    for char, repl in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("‖", r"$\|$"),
        ("—", "--"),
    ):
        text = text.replace(char, repl)
    return text


def to_latex(rows: list[Row], axes: list[Axis], metrics: list[str], caption: str = "") -> str:
    """A booktabs ``table`` environment; the best mean of lower-is-better metrics in bold."""
    header = [_latex_escape(a.name) for a in axes] + ["runs"]
    header += [
        LATEX_LABELS[m]
        if m in LATEX_LABELS and "denoise" not in m
        else _latex_escape(metric_label(m, rows))
        for m in metrics
    ]
    status = any(row.not_completed for row in rows)
    header += ["not completed"] if status else []
    best = {m: _best(rows, m) for m in metrics}
    body = []
    for i, row in enumerate(rows):
        cells = [_latex_escape(format_value(v)) for v in row.values]
        cells.append(f"{row.counts['completed']}/{len(row.runs)}")
        for m in metrics:
            text = format_mean_std(row.stats[m], pm=r" \pm ")
            if text == "—":
                cells.append("--")
            else:
                cells.append(f"$\\mathbf{{{text}}}$" if best[m] == i else f"${text}$")
        cells += [_latex_escape(_status_text(row))] if status else []
        body.append(" & ".join(cells) + r" \\")
    cols = "l" * len(axes) + "r" * (len(metrics) + 1) + ("l" if status else "")
    several = any(row.counts["completed"] > 1 for row in rows)
    spread = r"Mean $\pm$ sample std over seeds." if several else "One run per row."
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        f"\\caption{{{_latex_escape(caption)} {spread}}}",
        f"\\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def runs_csv(
    runs: list[Run], axes: list[Axis], seed_keys: tuple[str, ...], root: Path | None = None
) -> str:
    """Every run on its own line (where, status, error, axis values, seed, all metrics)."""
    metric_keys = sorted({k for r in runs for k in r.metrics})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run", "status", "error", *(a.name for a in axes), *seed_keys, *metric_keys])
    for r in runs:
        writer.writerow(
            [
                run_label(r, root),
                r.status,
                r.error or "",
                *(format_value(a.value(r)) for a in axes),
                *(format_value(r.config.get(k)) for k in seed_keys),
                *(repr(r.metrics[k]) if k in r.metrics else "" for k in metric_keys),
            ]
        )
    return buf.getvalue()


# --- a hyperparameter search (ae_jax.sweeps.collect.Study) ----------------------------------


def _format_param(value: Any) -> str:
    """A searched value to 4 significant digits (0.0379, 0.0001196), anything else as text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return format_value(value)


def _ranked(study: Study) -> list[Trial]:
    """Completed trials best first (ties by trial number), then the others by number."""
    sign = -1.0 if study.direction == "maximize" else 1.0
    done = sorted(study.completed, key=lambda t: (sign * t.value, t.number))
    return done + [t for t in study.trials if not math.isfinite(t.value)]


def study_summary(study: Study, root: Path | None = None) -> list[str]:
    """The study in a few Markdown lines: what was searched, how, and the best trial."""
    n, done = len(study.trials), len(study.completed)
    how = ", ".join(
        x
        for x in (
            f"Optuna {study.sampler}" if study.sampler else "Optuna",
            f"{study.n_jobs} trials per batch" if study.n_jobs else "",
        )
        if x
    )
    lines = [
        f"{n} trials ({done} completed), {how}; {study.direction} `{study.score}`.",
        "",
        "Searched: " + "; ".join(f"`{p.key}` {p.describe()}" for p in study.params) + ".",
        "",
    ]
    best = study.best
    if best is None:
        lines += ["No trial completed: no best trial.", ""]
    else:
        params = ", ".join(f"{k}={_format_param(v)}" for k, v in best.params.items())
        where = run_label(best.run)  # the path as found, to copy from
        lines.append(
            f"**Best trial: #{best.number}**, `{study.score}` = {best.value:.6g} with {params} "
            f"(run directory `{where}`)."
        )
        if study.score != "test/mse" and "test/mse" in best.run.metrics:
            lines.append(
                f"Its test MSE, measured once on the untouched test split and not used to "
                f"choose: {best.run.metrics['test/mse']:.6g}."
            )
        lines.append("")
    results = study.results
    if results is not None and "best_value" in results:
        given = ", ".join(
            f"{k}={_format_param(v)}" for k, v in (results.get("best_params") or {}).items()
        )
        reported = float(results["best_value"])
        agree = ""
        if best is not None:
            same = math.isclose(reported, best.value, rel_tol=1e-9)
            agree = " (the same trial)" if same else " (differs from the runs on disk)"
        lines += [
            f"The sweeper's optimization_results.yaml: best_value {reported:.6g} with {given}"
            f"{agree}.",
            "",
        ]
    lines += [f"- note: {note}" for note in study.notes] + ([""] if study.notes else [])
    return lines


def study_markdown(study: Study, root: Path | None = None, title: str = "") -> str:
    """The study section: the summary, then every trial ranked by its score."""
    lines = [f"## Study{': ' + title if title else ''}", "", *study_summary(study, root)]
    keys = [p.key for p in study.params]
    failed = any(not math.isfinite(t.value) for t in study.trials)
    header = ["rank", "trial", *keys, study.score] + (["status"] if failed else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    best = study.best
    for rank, trial in enumerate(_ranked(study), start=1):
        ok = math.isfinite(trial.value)
        value = f"{trial.value:.6g}" if ok else "—"
        cells = [str(rank) if ok else "—", str(trial.number)]
        cells += [_format_param(trial.params.get(k)) for k in keys]
        cells.append(f"**{value}**" if best is not None and trial is best else value)
        if failed:
            cells.append(trial.run.status if not ok else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Trials ranked by `{study.score}` ({study.direction}); trial = Hydra's job number.",
    ]
    bad = [t for t in study.trials if not math.isfinite(t.value)]
    if bad:
        lines += ["", "Trials without a score:", ""]
        for t in bad:
            why = t.run.error or f"no {study.score} in metrics.json"
            lines.append(
                f"- trial {t.number} (`{run_label(t.run, root)}`): **{t.run.status}**: {why}"
            )
    return "\n".join(lines) + "\n"


def study_csv(study: Study, root: Path | None = None) -> str:
    """Every trial: number, run directory, status, error, searched values (full precision) and
    score; the best trial marked."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = [p.key for p in study.params]
    writer.writerow(["trial", "run", "status", "error", *keys, study.score, "best"])
    best = study.best
    for t in study.trials:
        writer.writerow(
            [
                t.number,
                run_label(t.run, root),
                t.run.status,
                t.run.error or "",
                *(
                    repr(v) if isinstance(v, float) else format_value(v)
                    for v in (t.params.get(k) for k in keys)
                ),
                repr(t.value) if math.isfinite(t.value) else "",
                "1" if t is best else "",
            ]
        )
    return buf.getvalue()
