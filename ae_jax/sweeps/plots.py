"""The figures of a sweep report: a metric-vs-axis figure per swept axis and a grid of
reconstructions across the sweep.

Axis figures have one panel per metric: the mean over seeds with the sample std as error bars,
one line per value of the other axes (a crossed sweep; past MAX_LINES of them, runs that
form no grid, one point per row instead), the PCA baseline of the same code size
dashed in the ``test/mse`` panel, and a red cross on the x axis where runs did not complete.
The x axis is logarithmic when the values are positive and span a decade or more, symmetric-
log when they also include 0 (e.g. regularisation strengths 0, 1e-3 ... 1e-1), categorical
for non-numbers; the y axis is logarithmic when everything drawn on it spans over a decade.
Figures are built on the Agg canvas without pyplot, like the run figures, and saved at 150 dpi.

    fig = axis_figure(rows, axes, 0, ["test/mse", "test/pca_mse"], title="sweep_latent")
    fig = reconstruction_grid(rows, axes, title="sweep_latent")   # None without reconstructions
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator
from matplotlib.transforms import offset_copy

from ae_jax.evaluation.figures import reconstructions_figure
from ae_jax.run_io import write_atomic
from ae_jax.sweeps.collect import Axis, SearchParam, Study
from ae_jax.sweeps.summary import METRIC_LABELS, Row, format_value, metric_label, sort_key

DPI = 150
MAX_LINES = 10  # an axis figure's lines (values of the other axes); more are drawn as points
MAX_RECONSTRUCTION_ROWS = 12  # reconstruction rows of a report's grid (one per swept value)
MAX_LABEL = 60  # characters of a row's label before it is named by its run's directory
METRIC_UNITS = {
    "test/mse": "test MSE (per input element)",
    "test/pca_mse": "PCA test MSE (per input element)",
    "test/denoise_mse": "denoising MSE (corrupted in, clean target)",
    "test/jacobian_fro": (
        r"$\Vert\partial\,\mathrm{code}/\partial x\Vert_F$ (mean over test examples)"
    ),
    "test/mean_code_activation": "mean code activation",
    "test/code_nonzero_per_example": "active code units per example",
    "test/rmse": "test RMSE",
    "test/bce": "test BCE (nats per element)",
    "test/sse_per_example": "squared error per example",
    "time/train_seconds": "training time (s)",
    "train/samples_per_second": "training throughput (examples/s)",
    "val/mse": "validation MSE (per input element)",
    "val/denoise_mse": "validation denoising MSE",
    "supervised/test/error_pct": "test error (%) after supervised fine-tuning",
    "supervised/val/error_pct": "validation error (%) after supervised fine-tuning",
    "probe/error_pct": "linear-probe test error (%)",
}
AXIS_UNITS = {
    "model.latent_dim": "code size k (units)",
    "model.depth": "encoder hidden layers",
    "optim.lr": "learning rate",
    "trainer.batch_size": "batch size (examples)",
    "trainer.epochs": "epochs",
}
NOISE_UNITS = {
    "gaussian": "Gaussian noise σ (inputs in [0, 1])",
    "masking": "masking noise: fraction of inputs zeroed",
    "salt_pepper": "salt-and-pepper: fraction of inputs set to min or max",
}


def x_scale(values: list[Any]) -> str:
    """``log`` for positive values spanning a decade or more, ``symlog`` when 0 joins them,
    ``category`` for non-numbers, else ``linear``."""
    if not values or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        return "category"
    positive = [float(v) for v in values if v > 0]
    # a doubling grid (code sizes 2, 4, 8, 16) is log-spaced whatever its span: it read as
    # linear when its values spanned less than a decade, and log once a further value finished
    doubling = len(positive) >= 3 and all(math.log2(v).is_integer() for v in positive)
    wide = len(positive) >= 2 and max(positive) / min(positive) >= 10
    if any(v < 0 for v in values) or not (wide or doubling):
        return "linear"
    return "log" if len(positive) == len(values) else "symlog"


def axis_title(axis: Axis) -> str:
    """The axis's name on a figure: its keys, or where many keys change together (unrelated
    runs in one directory differ in most of their settings) the first, which gives the x
    values, and how many others; the full list is in the report's table."""
    if len(axis.keys) <= 2 or len(axis.name) <= 60:
        return axis.name
    return f"{axis.keys[0]} (+{len(axis.keys) - 1} keys that change with it)"


def axis_label(axis: Axis, rows: list[Row]) -> str:
    """The x label: the key with its unit (the reg kind or noise kind when all runs share it)."""
    key, name = axis.keys[0], axis_title(axis)
    configs = [r.config for row in rows for r in row.runs if r.config]
    if key == "noise.level":
        kinds = {c.get("noise.kind") for c in configs}
        unit = NOISE_UNITS.get(kinds.pop()) if len(kinds) == 1 else None
        return f"{name}: {unit or 'noise level'}"
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "reg" and parts[2] == "strength":  # reg.<term>.strength
        return f"{name}: {parts[1]} strength λ"
    return f"{name}: {AXIS_UNITS[key]}" if key in AXIS_UNITS else name


def _first(value: Any) -> Any:
    """The x value of a merged axis (a tuple of values, numeric key first)."""
    return value[0] if isinstance(value, tuple) else value


def _short(axis: Axis) -> str:
    return axis.keys[0].rsplit(".", 1)[-1]


LONG_LABEL = 16  # characters: longer categorical tick labels are shortened where they can be


def _category_labels(xs: list[Any]) -> list[str]:
    """Tick labels of categorical x values (the table and report.md keep the whole values):
    file paths by their names when those tell them apart, and long names that share a
    beginning or an end by what differs, the shared parts cut at a separator and shown as
    "…" (``…alpha…`` for ``variant_alpha_whitened`` beside ``variant_beta_whitened``)."""
    labels = [format_value(x) for x in xs]
    if all("/" in label for label in labels):
        names = [label.rstrip("/").rsplit("/", 1)[-1] for label in labels]
        if len(set(names)) == len(names) and all(names):
            labels = names
    if len(labels) < 2 or max(map(len, labels)) <= LONG_LABEL:
        return labels
    seps = "/_-. "
    head = os.path.commonprefix(labels)
    head = head[: max((head.rfind(c) for c in seps), default=-1) + 1]
    tail = os.path.commonprefix([label[::-1] for label in labels])[::-1]
    tail = tail[min((i for i, c in enumerate(tail) if c in seps), default=len(tail)) :]
    middles = [label[len(head) : len(label) - len(tail)] for label in labels]
    if len(set(middles)) < len(middles) or not all(middles):
        return labels
    return [("…" if head else "") + m + ("…" if tail else "") for m in middles]


def _tilt_crowded_x_labels(fig: Figure) -> None:
    """Tilt the x tick labels of each panel where they would overlap (long category names,
    many values on a narrow panel), measured once the layout is done."""
    fig.draw_without_rendering()
    for ax in fig.get_axes():
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
        if not any(a.x1 + 3 > b.x0 for a, b in zip(boxes, boxes[1:])):
            continue
        # tilted, the labels are parallel lines as far apart as the ticks times the angle's
        # sine: 30 degrees where that clears a line's height, upright where it does not
        ticks = sorted(ax.transData.transform([(x, 0) for x in ax.get_xticks()])[:, 0])
        spacing = min((b - a for a, b in zip(ticks, ticks[1:])), default=0.0)
        height = labels[0].get_fontsize() * fig.dpi / 72
        angle = 30 if spacing * 0.5 >= 1.3 * height else 90
        for t in labels:
            t.set_rotation(angle)
            t.set_horizontalalignment("right" if angle == 30 else "center")
            t.set_rotation_mode("anchor" if angle == 30 else "default")


def _set_x(ax, xs: list[Any], scale: str) -> None:
    if scale == "category":
        ax.set_xticks(range(len(xs)), _category_labels(xs))
        return
    if scale == "log":
        ax.set_xscale("log")
    elif scale == "symlog":
        smallest = min(float(x) for x in xs if x > 0)
        ax.set_xscale("symlog", linthresh=smallest, linscale=0.5)
    ax.xaxis.set_major_locator(FixedLocator([float(x) for x in xs]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([format_value(x) for x in xs])


# one marker per published number, so that the legend tells them apart
# (matplotlib's marker, the same shape in report.md's list)
REFERENCE_MARKERS = (("*", "★"), ("D", "◆"), ("P", "✚"), ("X", "✖"), ("s", "■"), ("^", "▲"))


@dataclass(frozen=True)
class Reference:
    """A published number to draw beside the sweep: ``metric`` at ``key`` = ``x`` is
    ``value`` (e.g. supervised/test/error_pct at noise.level = 0.25 is 1.28, "SdA-3, paper")."""

    metric: str
    key: str
    x: Any
    value: float
    label: str

    @classmethod
    def parse(cls, metric: str, at: str, value: str, label: str) -> Reference:
        """From the command line's four words: METRIC KEY=X VALUE LABEL."""
        key, sep, x = at.partition("=")
        if not sep or not key:
            raise ValueError(f"{at!r} must be KEY=X, e.g. noise.level=0.25")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{value!r} must be a number (the reference's value)") from None
        try:
            x_value: Any = float(x)
        except ValueError:
            x_value = x
        return cls(metric, key, x_value, number, label)

    def position(self, axis: Axis, position: dict) -> float | None:
        """Where the reference sits on ``axis`` (None when it belongs to another axis or to a
        value that the sweep does not have)."""
        if axis.keys != (self.key,):
            return None
        return next((p for x, p in position.items() if x == self.x), None)


def axis_figure(
    rows: list[Row],
    axes: list[Axis],
    index: int,
    metrics: list[str],
    title: str = "",
    references: tuple[Reference, ...] = (),
) -> Figure:
    """Metric vs ``axes[index]``: a panel per metric (test/pca_mse drawn inside test/mse) and
    the ``references`` of that metric on this axis as black markers (one shape per reference)."""
    axis = axes[index]
    others = [i for i in range(len(axes)) if i != index]
    xs = sorted({_first(row.values[index]) for row in rows}, key=sort_key)
    scale = x_scale(xs)
    position = {x: (i if scale == "category" else x) for i, x in enumerate(xs)}
    lines: dict[tuple, list[Row]] = {}
    for row in rows:
        lines.setdefault(tuple(row.values[i] for i in others), []).append(row)
    # Runs that form no grid (unrelated runs gathered in one directory) would give a line, and
    # a legend entry naming every other key, per row: past MAX_LINES they are points instead.
    scattered = len(lines) > MAX_LINES
    if scattered:
        lines = {(): rows}
    panels = [m for m in metrics if not (m == "test/pca_mse" and "test/mse" in metrics)]
    fig = Figure(figsize=(4.6 * len(panels) + 0.4, 3.8), layout="constrained")
    subplots = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(lines))]
    # PCA depends on the code size and the data only: one line unless those vary across lines.
    pca_shared = _shared_baseline(rows, index, position)
    for ax, metric in zip(subplots, panels, strict=True):
        failed_label = "runs not completed"
        # one legend entry where there is one line; with several, each colour is its line's
        seeds_label = "each seed" if len(lines) == 1 else None
        ordered = sorted(lines.items(), key=lambda kv: [sort_key(v) for v in kv[0]])
        for color, (key, members) in zip(colors, ordered, strict=True):
            members = sorted(members, key=lambda r: sort_key(_first(r.values[index])))
            if scattered:
                label = f"each row ({len(rows)}: {len(others)} other keys vary, no grid)"
            else:
                label = ", ".join(
                    f"{_short(axes[i])}={format_value(v)}" for i, v in zip(others, key, strict=True)
                )
            with_pca = metric == "test/mse" and "test/pca_mse" in metrics
            _draw_line(
                ax,
                members,
                index,
                metric,
                position,
                color,
                label or ("autoencoder" if with_pca else None),
                connect=not scattered,
            )
            if _draw_seeds(ax, members, index, metric, position, color, seeds_label):
                seeds_label = None
            if with_pca and pca_shared is None:
                pca_label = "PCA, same k" if scattered or not label else f"PCA, same k, {label}"
                _draw_line(
                    ax,
                    members,
                    index,
                    "test/pca_mse",
                    position,
                    "0.35" if scattered else color,
                    pca_label,
                    dashed=True,
                    connect=not scattered,
                )
            bad = [position[_first(r.values[index])] for r in members if r.not_completed]
            if bad:
                _mark_failed(ax, bad, failed_label)
                failed_label = None
        if metric == "test/mse" and pca_shared:
            x, y = zip(*sorted(pca_shared.items()), strict=True)
            ax.plot(  # the tick marks show a baseline of one point too
                x,
                y,
                "--",
                marker="_",
                markersize=14,
                color="0.35",
                linewidth=1.5,
                label="PCA, same k",
            )
        for i, ref in enumerate(references):
            at = ref.position(axis, position) if ref.metric == metric else None
            if at is not None:
                marker = REFERENCE_MARKERS[i % len(REFERENCE_MARKERS)][0]
                size = 12 if marker == "*" else 8  # a star reads smaller than a filled shape
                ax.plot([at], [ref.value], marker, color="black", markersize=size, label=ref.label)
        _set_x(ax, xs, scale)
        _log_y_if_wide(ax)
        ax.set_xlabel(axis_label(axis, rows))
        ax.set_ylabel(METRIC_UNITS.get(metric, METRIC_LABELS.get(metric, metric)))
        # (the tables' plain ‖J‖_F set as mathematics: "_F" was printed as it is)
        ax.set_title(metric_label(metric, rows).replace("‖J‖_F", r"norm $\Vert J\Vert_F$"))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    # seeds per point, among points with a value (a point whose runs all failed has none)
    n = sorted({row.stats[m].n for row in rows for m in metrics if m in row.stats} - {0})
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}" if n else "0"
    over = "one seed" if seeds == "1" else f"mean ± std over {seeds} seeds"
    fig.suptitle(f"{title + ': ' if title else ''}{axis_title(axis)} ({over})")
    _tilt_crowded_x_labels(fig)
    return fig


def _shared_baseline(rows: list[Row], index: int, position: dict) -> dict | None:
    """x -> mean test/pca_mse when every row at that x has the same one (None otherwise)."""
    by_x: dict = {}
    for row in rows:
        stat = row.stats.get("test/pca_mse")
        if stat is not None and stat.n:
            by_x.setdefault(position[_first(row.values[index])], []).append(stat.mean)
    if not by_x or any(not np.allclose(v, v[0], rtol=1e-6, atol=0) for v in by_x.values()):
        return None
    return {x: v[0] for x, v in by_x.items()}


def _log_y_if_wide(ax) -> None:
    """Log y when every drawn value is positive and they span more than a decade (MSE vs code
    size does), as in the run's training curves."""
    ys = np.concatenate(
        [np.asarray(ln.get_ydata(), float) for ln in ax.get_lines() if ln.get_marker() != "x"]
        or [np.zeros(0)]
    )
    ys = ys[np.isfinite(ys)]
    if ys.size and ys.min() > 0 and ys.max() / ys.min() > 10:
        ax.set_yscale("log")


def _mark_failed(ax, xs, label: str | None, top: bool = True) -> None:
    """Red crosses at ``xs`` on the plot's edge of the worse values (``top`` for a metric to
    minimise, so that a run with no value never reads as the best): runs or trials that have
    no value to plot."""
    ax.plot(  # just inside the edge: on the spine they were cut in half, at a corner more
        xs,
        [0.97 if top else 0.03] * len(xs),
        "x",
        color="red",
        markersize=9,
        mew=2,
        clip_on=False,
        transform=ax.get_xaxis_transform(),
        label=label,
    )


def _draw_line(
    ax,
    rows: list[Row],
    index: int,
    metric: str,
    position: dict,
    color: str,
    label: str | None,
    dashed: bool = False,
    connect: bool = True,
) -> None:
    """The rows' mean of ``metric`` against the axis, with the std as error bars; ``dashed``
    for a baseline (no error bars), ``connect=False`` for points without a line."""
    pts = [
        (position[_first(r.values[index])], r.stats[metric])
        for r in rows
        if metric in r.stats and r.stats[metric].n > 0
    ]
    if not pts:
        return
    x = [p for p, _ in pts]
    mean = np.array([s.mean for _, s in pts])
    std = np.array([s.std if math.isfinite(s.std) else 0.0 for _, s in pts])
    if dashed:
        style = {"linestyle": "--"} if connect else {"linestyle": "none", "marker": "_"}
        ax.plot(x, mean, color=color, linewidth=1.5, markersize=12, label=label, **style)
    elif all(s.n < 2 for _, s in pts):  # one seed: no spread, no error-bar caps in the legend
        line = "-" if connect else "none"
        ax.plot(
            x, mean, marker="o", markersize=4, color=color, linewidth=1.5, linestyle=line,
            label=label,
        )  # fmt: skip
    else:
        ax.errorbar(
            x,
            mean,
            yerr=std,
            marker="o",
            markersize=4,
            capsize=3,
            color=color,
            linewidth=1.5,
            linestyle="-" if connect else "none",
            label=label,
        )


def _draw_seeds(
    ax, rows: list[Row], index: int, metric: str, position: dict, color: str, label: str | None
) -> bool:
    """Each completed run of the rows that average several, as a hollow marker behind the
    mean (a reader sees the seeds, not only their spread). True if any was drawn."""
    pts = [
        (position[_first(r.values[index])], run.metrics[metric])
        for r in rows
        if metric in r.stats and r.stats[metric].n > 1
        for run in r.runs
        if run.status == "completed" and math.isfinite(run.metrics.get(metric, math.nan))
    ]
    if pts:
        x, y = zip(*pts, strict=True)
        beside = offset_copy(ax.transData, fig=ax.figure, x=6, units="points")  # off the bar
        ax.scatter(
            x,
            y,
            s=18,
            facecolors="none",
            edgecolors=color,
            alpha=0.7,
            label=label,
            transform=beside,
        )
    return bool(pts)


def _reconstruction_of(row: Row) -> tuple[dict[str, np.ndarray], str, Path] | None:
    """The saved arrays of the row's completed run with the lowest seed, the name of the
    corruption its ``corrupted`` array shows and the run's directory (None if no run saved
    reconstructions)."""
    done = [r for r in row.runs if r.reconstructions is not None]
    for run in sorted(done, key=lambda r: sort_key(r.config.get("trainer.seed"))):
        try:
            with np.load(run.reconstructions) as saved:
                arrays = {k: saved[k] for k in saved.files}
        except (OSError, ValueError):  # a truncated file: try the next seed
            continue
        if "input" in arrays and "reconstruction" in arrays:
            level = run.config.get("noise.eval_level")
            level = run.config.get("noise.level") if level is None else level
            kind = run.config.get("noise.kind")
            noise = f"{kind} {format_value(level)}" if kind and level is not None else "corrupted"
            return arrays, noise, run.path
    return None


def reconstruction_grid(
    rows: list[Row], axes: list[Axis], title: str = "", n: int = 10
) -> Figure | None:
    """The first n test inputs on top, then one reconstruction row per swept value.

    Each row comes from the lowest-seed completed run of that value. When every run shows the
    same corrupted inputs (one test corruption, one seed) they get one row under the inputs;
    otherwise each reconstruction row has its own corrupted row above it, and likewise inputs.
    Returns None when no run saved reconstructions.
    """
    loaded = [(row, found) for row in rows if (found := _reconstruction_of(row)) is not None]
    if not loaded:
        return None
    first, first_noise, _ = loaded[0][1]
    # another dataset's examples cannot share the grid
    loaded = [(row, f) for row, f in loaded if f[0]["input"].shape == first["input"].shape]
    if len(loaded) > MAX_RECONSTRUCTION_ROWS:  # runs that form no grid: the first rows only
        title = f"{title}, the first {MAX_RECONSTRUCTION_ROWS} of {len(loaded)} rows"
        loaded = loaded[:MAX_RECONSTRUCTION_ROWS]
    images = {"input": first["input"][:n]}
    shared_corruption = "corrupted" in first and all(
        "corrupted" in s and np.array_equal(s["corrupted"], first["corrupted"])
        for _, (s, _, _) in loaded
    )
    if shared_corruption:
        images[first_noise] = first["corrupted"][:n]
    for row, (saved, noise, path) in loaded:
        label = ", ".join(
            f"{_short(a)}={format_value(v)}" for a, v in zip(axes, row.values, strict=True)
        )
        if len(label) > MAX_LABEL:  # too many keys to name: the run's directory instead
            label = path.name
        label = label or "reconstruction"
        if not np.array_equal(saved["input"], first["input"]):
            images[f"input ({label})"] = saved["input"][:n]
        if "corrupted" in saved and not shared_corruption:
            images[f"{noise} ({label})"] = saved["corrupted"][:n]
        images[label] = saved["reconstruction"][:n]
    return reconstructions_figure(images, tuple(first["input"].shape[1:]), title=title, n=n)


def param_label(param: SearchParam) -> str:
    """The x label of a searched parameter: its key, what it is, and how it was sampled."""
    key = param.key
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "reg" and parts[2] == "strength":
        what = f"{parts[1]} strength λ"
    else:
        what = AXIS_UNITS.get(key) or NOISE_UNITS.get(key, "")
    scale = "log scale" if param.log else ("categories" if param.choices else "")
    extra = ", ".join(x for x in (what, scale) if x)
    return f"{key} ({extra})" if extra else key


def _study_x(trials, param: SearchParam) -> tuple[list, dict | None]:
    """The x value of each trial on a parameter panel; categories get positions 0, 1, ..."""
    values = [t.params.get(param.key) for t in trials]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        return [float(v) for v in values], None
    levels = list(param.choices or ()) + sorted(
        {format_value(v) for v in values} - {format_value(c) for c in param.choices or ()}
    )
    position = {format_value(c): i for i, c in enumerate(levels)}
    return [position[format_value(v)] for v in values], position


def study_figure(study: Study, title: str = "") -> Figure:
    """The study at a glance: the score against each searched parameter (one panel each, a log
    x axis for a log-searched one, the search range dotted), then the score against the trial
    number with the best so far. Points are coloured by trial number, so the sampler's
    progression shows; the best trial is a red star, a trial without a score a red cross."""
    params = study.params
    panels = len(params) + 1
    fig = Figure(figsize=(4.3 * panels + 1.0, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    trials = study.trials
    done = [t for t in trials if math.isfinite(t.value)]
    failed = [t for t in trials if not math.isfinite(t.value)]
    best = study.best
    numbers = [t.number for t in trials] or [0]
    norm = Normalize(vmin=min(numbers), vmax=max(max(numbers), min(numbers) + 1))
    score = study.score
    ylabel = f"{score}: {METRIC_UNITS[score]}" if score in METRIC_UNITS else score
    scatter = None

    def draw(ax, xs_done, x_best, xs_failed):
        nonlocal scatter
        if done:
            scatter = ax.scatter(
                xs_done,
                [t.value for t in done],
                c=[t.number for t in done],
                cmap="viridis",
                norm=norm,
                s=40,
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
        if best is not None:
            ax.scatter(
                [x_best],
                [best.value],
                marker="*",
                s=320,
                facecolors="none",
                edgecolors="red",
                linewidths=1.6,
                zorder=4,
                label=f"best: trial {best.number}",
            )
        if xs_failed:
            _mark_failed(ax, xs_failed, "no score (failed)", top=study.direction != "maximize")

    for ax, param in zip(axes, params):
        xs, categories = _study_x(trials, param)
        x_of = dict(zip((t.number for t in trials), xs))
        draw(
            ax,
            [x_of[t.number] for t in done],
            x_of[best.number] if best is not None else None,
            [x_of[t.number] for t in failed],
        )
        if categories is not None:
            ax.set_xticks(range(len(categories)), _category_labels(list(categories)))
        elif param.choices:  # numbers chosen among: ticks at the choices, not 8, 10, 12, ...
            ticks = sorted(c for c in param.choices if isinstance(c, (int, float)))
            ax.set_xticks([float(t) for t in ticks], [format_value(t) for t in ticks])
        else:
            if param.log:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            for bound in (param.low, param.high):
                if bound is not None:
                    ax.axvline(
                        bound,
                        linestyle=":",
                        color="0.55",
                        linewidth=1,
                        zorder=1,
                        label="search range",
                    )
            if param.low is not None and param.high is not None:
                pad = (param.high / param.low) ** 0.04 if param.log else None
                if pad is not None and param.low > 0:
                    ax.set_xlim(param.low / pad, param.high * pad)
                else:
                    span = 0.04 * (param.high - param.low)
                    ax.set_xlim(param.low - span, param.high + span)
        ax.set_xlabel(param_label(param))
        ax.set_title(f"{score} vs {param.key}", fontsize=10)
        ax.grid(alpha=0.3, which="major")

    # The last panel: the score against the trial number, batch by batch.
    ax = axes[-1]
    by_number = {t.number: t for t in trials}
    draw(
        ax,
        [t.number for t in done],
        best.number if best is not None else None,
        [t.number for t in failed],
    )
    if done:
        pick = max if study.direction == "maximize" else min
        xs, ys, so_far = [], [], None
        for n in sorted(by_number):
            v = by_number[n].value
            if math.isfinite(v):
                so_far = v if so_far is None else pick(so_far, v)
            if so_far is not None:
                xs.append(n)
                ys.append(so_far)
        ax.step(xs, ys, where="post", color="0.3", linewidth=1.3, label="best so far", zorder=2)
    batch = study.n_jobs
    if batch and len(numbers) > batch:  # the batches the sweeper proposed (and launched) at once
        lo, hi = min(numbers), max(numbers)
        starts = list(range(lo, hi + 1, batch))
        for k, start in enumerate(starts):
            if k % 2 == 1:
                ax.axvspan(start - 0.5, start + batch - 0.5, color="0.92", zorder=0)
            if len(starts) <= 8:
                ax.text(
                    (start + min(start + batch, hi + 1) - 1) / 2,
                    0.98,
                    f"batch {k + 1}",
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="top",
                    fontsize=8,
                    color="0.35",
                )
    ax.set_xlim(min(numbers) - 0.6, max(numbers) + 0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (Hydra job number, in the order proposed)")
    ax.set_title(f"{score} vs trial", fontsize=10)
    ax.grid(alpha=0.3)

    ys = [t.value for t in done]
    if ys and min(ys) > 0 and max(ys) / min(ys) > 10:  # the panels share y
        axes[0].set_yscale("log")
        axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].yaxis.set_minor_formatter(FuncFormatter(_mantissa_235))
        axes[0].set_ylim(min(ys) / 1.15, max(ys) * 1.5)  # headroom for the batch labels
    elif ys:
        span = (max(ys) - min(ys)) or abs(max(ys)) or 1.0
        axes[0].set_ylim(min(ys) - 0.08 * span, max(ys) + 0.2 * span)
    else:  # every trial failed: no score, so no scale to show (matplotlib's was -0.04..0.04)
        axes[0].set_yticks([])
        for a in axes:
            a.text(0.5, 0.5, "no trial has a score", transform=a.transAxes, ha="center",
                   va="center", color="0.4")  # fmt: skip
    axes[0].set_ylabel(ylabel)
    handles, labels = [], []
    for a in axes:
        for h, lab in zip(*a.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, fontsize=9, loc="outside lower center", ncol=len(handles))
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=list(axes), label="trial number", shrink=0.9, pad=0.01)
        bar.locator = MaxNLocator(integer=True)  # trials are whole numbers, not 0.5, 1.5, ...
        bar.update_ticks()
    sampler = f"{study.sampler}, " if study.sampler else ""
    fig.suptitle(
        f"{title + ': ' if title else ''}Optuna study, {len(trials)} trials ({sampler}"
        f"{study.direction} {score})"
    )
    _tilt_crowded_x_labels(fig)
    return fig


def _mantissa_235(value: float, _pos=None) -> str:
    """Minor tick labels of a log axis at 2, 3 and 5 times a power of ten only."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (2, 3, 5)) else ""


def save(fig: Figure, path) -> None:
    """The figure as a PNG at ``path``, written atomically (whole, or not at all)."""
    write_atomic(path, lambda f: fig.savefig(f, dpi=DPI, format="png", bbox_inches="tight"))
