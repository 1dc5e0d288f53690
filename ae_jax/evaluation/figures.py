"""The figures of a run: reconstruction grids, training curves and code-activation histograms.

Each ``plot_*`` function writes one PNG; the ``*_figure`` function beside it builds the same
``matplotlib.figure.Figure`` and returns it (to show in a notebook or inspect in a test). Figures
are saved through the Agg canvas without pyplot, so no GUI backend or open-figure registry is
involved and nothing needs closing (safe in tests, threads and headless jobs).

    plot_reconstructions("recon.png", {"input": x, "corrupted": x_tilde, "reconstruction": x_hat},
                         example_shape=(28, 28, 1), title="DAE, masking 25%")
    plot_training_curves("curves.png", history)   # [{"epoch": 1, "train/loss": ..., ...}, ...]
    plot_code_histogram("codes.png", codes)       # (N, k)
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ae_jax.run_io import write_atomic

_DPI = 150
# Substrings that mark a history key as a loss-like metric (other keys, e.g. train/l2_grads or
# train/lr, live on other scales and are left out of the curves).
_LOSS_WORDS = ("loss", "mse", "sse", "bce", "nll")
# Line style per metric prefix: train solid, eval dashed, test dotted.
_PREFIX_STYLES = {"train/": "-", "val/": "--", "eval/": "--", "test/": ":"}
# Beyond this many features a tabular panel is drawn as plain lines (markers would be a smear).
_MAX_MARKED_FEATURES = 50


class FigureError(ValueError):
    """A figure's input has the wrong shape or content; the message names it and what is valid."""


def _save(fig: Figure, path: str | os.PathLike) -> None:
    write_atomic(path, lambda f: fig.savefig(f, dpi=_DPI, format="png", bbox_inches="tight"))


def _check_rows(
    rows: Mapping[str, np.ndarray], example_shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Every row is (N, *example_shape) with the same N; returns float arrays."""
    if not rows:
        raise FigureError("rows must hold at least one named array, got an empty mapping")
    out = {label: np.asarray(x, dtype=np.float64) for label, x in rows.items()}
    shapes = {label: x.shape for label, x in out.items()}
    if any(x.shape[1:] != tuple(example_shape) or x.shape[0] == 0 for x in out.values()):
        raise FigureError(
            f"every row must have shape (N, *example_shape) = (N, *{tuple(example_shape)}) with "
            f"N >= 1, got {shapes}"
        )
    if len({x.shape[0] for x in out.values()}) > 1:
        raise FigureError(f"every row must hold the same number of examples, got {shapes}")
    return out


def plot_reconstructions(
    path: str | os.PathLike,
    rows: Mapping[str, np.ndarray],
    example_shape: tuple[int, ...],
    title: str = "",
    n: int = 10,
) -> None:
    """Writes ``reconstructions_figure(rows, example_shape, title, n)`` to the PNG ``path``."""
    _save(reconstructions_figure(rows, example_shape, title, n), path)


def reconstructions_figure(
    rows: Mapping[str, np.ndarray],
    example_shape: tuple[int, ...],
    title: str = "",
    n: int = 10,
) -> Figure:
    """Draws the first n examples of each row (e.g. input, corrupted, reconstruction) side by side.

    Images ((H, W, C) or (H, W)): a grid with one row per entry of ``rows`` and n columns, no
    ticks, the row's name on the left, gray colormap for one channel, RGB for three, and for
    any other number of channels each channel grey, side by side within its example. Every row
    is shown on the value range of the first row's shown examples (the data's own range), clipped
    to it, so a reconstruction that overshoots cannot rescale the colours and rows stay
    comparable.
    Tabular ((D,)): n small panels, each drawing every row as a line over the feature index, with
    one legend for the figure.

    Args:
      rows: ordered name -> (N, *example_shape) array; all with the same N.
      example_shape: shape of one example.
      title: figure title.
      n: examples to show (at most N).

    Raises:
      FigureError: for mismatched shapes or lengths, an unsupported example_shape, or n < 1.
    """
    example_shape = tuple(int(s) for s in example_shape)
    data = _check_rows(rows, example_shape)
    if n < 1:
        raise FigureError(f"n={n!r} must be >= 1 examples to show")
    n = min(n, next(iter(data.values())).shape[0])
    is_image = len(example_shape) == 2 or (len(example_shape) == 3 and example_shape[2] in (1, 3))
    if len(example_shape) == 3 and not is_image:  # 2, 4 or more channels: each one grey,
        data, grid = _channel_tiles(data, example_shape)  # tiled within its example
        said = f"{example_shape[2]} channels, {grid} in each example"
        title = f"{title} ({said})" if title else said
        is_image = True
    if is_image:
        fig = _image_grid(data, n)
    elif len(example_shape) == 1:
        fig = _tabular_panels(data, n)
    else:
        raise FigureError(
            f"example_shape={example_shape} is neither an image (H, W[, C]) nor tabular (D,)"
        )
    if title:
        fig.suptitle(title)
    return fig


def _channel_tiles(
    data: dict[str, np.ndarray], example_shape: tuple[int, ...]
) -> tuple[dict[str, np.ndarray], str]:
    """(N, H, W, C) examples as (N, rows·H, cols·W) grey tiles: channel r·cols + k at row r,
    column k of a near-square grid (the places past the last channel empty, NaN)."""
    h, w, c = example_shape
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)

    def tile(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        if rows * cols > c:
            v = np.concatenate([v, np.full((*v.shape[:3], rows * cols - c), np.nan)], axis=3)
        v = v.reshape(-1, h, w, rows, cols).transpose(0, 3, 1, 4, 2)
        return v.reshape(-1, rows * h, cols * w)

    grid = "side by side" if rows == 1 else f"{rows} × {cols}"
    return {k: tile(v) for k, v in data.items()}, grid


def _image_grid(data: dict[str, np.ndarray], n: int) -> Figure:
    """One axes per row: its n images side by side in one strip (``_strip``), with white gaps."""
    import matplotlib

    reference = next(iter(data.values()))[:n]
    lo, hi = float(np.nanmin(reference)), float(np.nanmax(reference))
    if hi <= lo:  # a constant reference: any non-empty range shows it
        hi = lo + 1.0
    aspect = min(max(reference.shape[2] / reference.shape[1], 1.0), 6.0)  # wider than tall
    fig = Figure(figsize=(1.0 * n * aspect + 1.2, 1.0 * len(data) + 0.4), layout="constrained")
    axes = fig.subplots(len(data), 1, squeeze=False)[:, 0]
    gray = matplotlib.colormaps["gray"].with_extremes(bad="white")  # the gaps
    for ax, (label, x) in zip(axes, data.items(), strict=True):
        strip = _strip(np.clip(x[:n], lo, hi))
        if strip.ndim == 2:
            ax.imshow(strip, cmap=gray, vmin=lo, vmax=hi, interpolation="nearest")
        else:  # RGB: imshow needs [0, 1]; the gaps are white
            ax.imshow(np.nan_to_num((strip - lo) / (hi - lo), nan=1.0), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    return fig


def _strip(images: np.ndarray) -> np.ndarray:
    """(n, H, W[, C]) images as one (H, n·W + gaps[, C]) array, NaN in the gaps (W // 8 or at
    least 1 pixel wide); one-channel images lose their channel axis."""
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    n, h, w = images.shape[:3]
    gap = max(1, w // 8)
    strip = np.full((h, n * (w + gap) - gap, *images.shape[3:]), np.nan)
    for c, image in enumerate(images):
        strip[:, c * (w + gap) : c * (w + gap) + w] = image
    return strip


def _tabular_panels(data: dict[str, np.ndarray], n: int) -> Figure:
    cols = min(n, 5)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(3.0 * cols, 2.2 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True).ravel()
    num_features = next(iter(data.values())).shape[1]
    features = np.arange(num_features)
    marker = "o" if num_features <= _MAX_MARKED_FEATURES else None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_visible(False)
            continue
        for label, x in data.items():
            ax.plot(features, x[i], marker=marker, markersize=3, linewidth=1, label=label)
        ax.set_title(f"example {i}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[(nrows - 1) * cols :]:
        ax.set_xlabel("feature")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5))
    return fig


def _is_loss_key(key: str) -> bool:
    return key.startswith(tuple(_PREFIX_STYLES)) and any(w in key for w in _LOSS_WORDS)


def _is_term_key(key: str) -> bool:
    """A weighted objective term ``<prefix>loss/<term>`` (not ``loss/rec``): its own panel."""
    prefix = next((p for p in _PREFIX_STYLES if key.startswith(p)), None)
    rest = key[len(prefix) :] if prefix else ""
    return rest.startswith("loss/") and rest != "loss/rec"


def plot_training_curves(
    path: str | os.PathLike,
    history: Sequence[Mapping[str, float]],
    title: str = "",
    *,
    reference: Mapping[str, float] | None = None,
    log_scale: bool | None = None,
) -> None:
    """Writes ``training_curves_figure(history, title, ...)`` to the PNG ``path``."""
    _save(training_curves_figure(history, title, reference=reference, log_scale=log_scale), path)


def training_curves_figure(
    history: Sequence[Mapping[str, float]],
    title: str = "",
    *,
    reference: Mapping[str, float] | None = None,
    log_scale: bool | None = None,
) -> Figure:
    """Draws the loss-like metrics of a run against the epoch.

    Loss-like keys are ``train/*``, ``val/*``, ``eval/*`` and ``test/*`` keys that contain loss,
    mse, sse, bce or nll (``train/loss``, ``train/loss/rec``, ``val/mse``, ...). The left panel
    holds the losses and the evaluation metrics (beside train on the same axes); the weighted
    objective terms ``train/loss/<term>`` (all but ``loss/rec``), which live on their own scales,
    get a panel on the right when there are any. Train is solid, validation and eval dashed,
    test dotted; a metric keeps its colour across prefixes (``train/loss`` and ``eval/loss``).
    Epochs where a key is missing (evaluation every few epochs) are skipped for that key. Each
    legend entry ends with the metric's last value. A panel's y axis is logarithmic when every
    value on it is positive and they span more than one decade (``log_scale`` forces it on or
    off).

    Args:
      history: one mapping per epoch, each with ``"epoch"``.
      title: figure title.
      reference: label -> value drawn as a horizontal grey line on the loss panel, e.g.
        ``{"PCA k=8 test MSE": 0.0246}`` (the error of PCA with as many components as the code).
      log_scale: None: automatic; True/False: logarithmic/linear loss axes.

    Raises:
      FigureError: for an empty history, an entry without "epoch", no loss-like key, or a
        reference value that is not a finite number.
    """
    if not history:
        raise FigureError("history must hold at least one epoch's metrics, got none")
    missing = [i for i, h in enumerate(history) if "epoch" not in h]
    if missing:
        raise FigureError(f"every history entry needs an 'epoch' key; entries {missing} lack it")
    reference = dict(reference or {})
    for label, value in reference.items():
        if not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
            raise FigureError(
                f"reference[{label!r}]={value!r} must be a finite number (a loss value)"
            )
    # Train first, then eval, then test, each with loss and loss/rec first and then in name
    # order (the objective's terms loss/<term>): the legend reads in that order.
    order = {p: i for i, p in enumerate(_PREFIX_STYLES)}

    def rank(k: str) -> tuple:
        prefix = next(p for p in order if k.startswith(p))
        return (order[prefix], k[len(prefix) :] not in ("loss", "loss/rec"), k)

    keys = sorted({k for h in history for k in h if _is_loss_key(k)}, key=rank)
    if not keys:
        found = sorted({k for h in history for k in h})
        raise FigureError(
            f"history has no loss-like key (train/*, val/*, eval/* or test/* containing one of "
            f"{_LOSS_WORDS}); keys found: {found}"
        )
    series = {}
    for key in keys:
        points = [(h["epoch"], float(h[key])) for h in history if key in h]
        points = [(e, y) for e, y in points if np.isfinite(y)]
        if points:
            series[key] = points
    main_keys = [k for k in series if not _is_term_key(k)]
    term_keys = [k for k in series if _is_term_key(k)]
    panels = [main_keys] + ([term_keys] if term_keys else [])
    fig = Figure(figsize=(6.4 if len(panels) == 1 else 9.2, 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours: dict[str, str] = {}
    for ax, panel_keys in zip(axes, panels):
        values: list[float] = []
        labels = []
        for key in panel_keys:
            prefix = next(p for p in _PREFIX_STYLES if key.startswith(p))
            epochs, ys = zip(*series[key])
            colour = colours.setdefault(key[len(prefix) :], f"C{len(colours) % 10}")
            ax.plot(
                epochs,
                ys,
                _PREFIX_STYLES[prefix],
                color=colour,
                marker="." if len(epochs) <= 60 else None,
                markersize=4,
                linewidth=1.4,
                label=key,
            )
            labels.append(f"{key}  {ys[-1]:.4g}")
            values.extend(ys)
        if ax is axes[0]:
            for i, (label, value) in enumerate(reference.items()):
                ax.axhline(
                    value,
                    color="0.35",
                    linestyle=(0, (4, 2, 1, 2)) if i % 2 else (0, (1, 1.5)),
                    linewidth=1.2,
                    label=label,
                )
                labels.append(f"{label}  {value:.4g}")
                values.append(float(value))
            ax.set_ylabel("loss")
        else:
            ax.set_title("weighted objective terms", fontsize=9)
            ax.set_ylabel("strength x term")
        v = np.asarray(values)
        auto = v.size > 0 and v.min() > 0 and v.max() / v.min() > 10
        if (log_scale is None and auto) or (log_scale and v.size and v.min() > 0):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="major")
        ax.grid(alpha=0.12, which="minor")
        handles = ax.get_lines()
        ax.legend(handles, labels, fontsize=8, title_fontsize=8, title="last value")
    if title:
        fig.suptitle(title)
    return fig


def plot_code_histogram(
    path: str | os.PathLike,
    codes: np.ndarray,
    title: str = "",
    *,
    target: float | None = None,
    log_counts: bool | None = None,
) -> None:
    """Writes ``code_histogram_figure(codes, title, ...)`` to the PNG ``path``."""
    _save(code_histogram_figure(codes, title, target=target, log_counts=log_counts), path)


# An activation is "near zero" below this fraction of the largest |activation| of the code
# (a sigmoid code under a KL penalty is never exactly 0 but mostly ~1e-3).
_NEAR_ZERO = 0.01


def code_histogram_figure(
    codes: np.ndarray,
    title: str = "",
    *,
    target: float | None = None,
    log_counts: bool | None = None,
) -> Figure:
    """Draws the distribution of code activations: all values, and the mean of each unit.

    Left: a histogram of every entry of ``codes``; exact zeros (k-sparse and ReLU codes) are one
    red bar of their own at 0, so the spread of the active values stays visible beside them. The
    count axis is logarithmic when one bar holds more than 20% of all values (a sparse code's
    spike at 0; ``log_counts`` forces it on or off). Right: a bar per code unit with its mean
    activation over the examples, the quantity a KL sparsity penalty drives to ρ (Ng, CS294A
    notes), with ``target`` (ρ) as a dashed line; dead units (near zero on every example) are
    marked with a red cross. The title reports the mean activation and the fractions of exact
    zeros and of near-zero values (below 1% of the largest |activation|).

    Args:
      codes: (N, k) code activations.
      title: figure title.
      target: a target mean activation to mark (the KL penalty's ρ), or None.
      log_counts: None: automatic; True/False: logarithmic/linear count axis.

    Raises:
      FigureError: if codes is not a non-empty 2-D array of finite values, or target is not
        finite.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.size == 0:
        raise FigureError(f"codes must have shape (N, k) with N, k >= 1, got {codes.shape}")
    if not np.all(np.isfinite(codes)):
        raise FigureError(f"codes holds {int(np.sum(~np.isfinite(codes)))} non-finite values")
    if target is not None and not np.isfinite(target):
        raise FigureError(f"target={target!r} must be a finite mean activation or None")
    n, k = codes.shape
    unit_means = codes.mean(axis=0)  # (k,)
    scale = float(np.abs(codes).max())
    near = np.abs(codes) <= _NEAR_ZERO * scale if scale > 0 else np.ones(codes.shape, bool)
    zero = codes == 0
    dead = near.all(axis=0)  # (k,)
    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    hist_ax, bar_ax = fig.subplots(1, 2)
    values = codes[~zero]
    counts = np.zeros(0)
    if values.size:
        counts, edges, _ = hist_ax.hist(values, bins=50, color="C0", label="non-zero values")
    if zero.any():
        # One bar for the exact zeros, as wide as a histogram bin, in front of the histogram.
        width = (edges[1] - edges[0]) if values.size else 1.0
        hist_ax.bar(
            0.0,
            zero.sum(),
            width=width,
            color="C3",
            alpha=0.85,
            label=f"exactly 0 ({100 * zero.mean():.1f}%)",
        )
        hist_ax.legend(fontsize=8)
        counts = np.append(counts, zero.sum())
    # Log counts when one bin (the exact zeros, or the bin at 0 of a sigmoid code under a
    # sparsity penalty) holds a large share of all values: the rest would be flat on a linear
    # axis. Dense codes (a bell of values) stay linear.
    peaked = counts.size and counts.max() > 0.2 * codes.size
    if log_counts or (log_counts is None and peaked):
        hist_ax.set_yscale("log")
    hist_ax.set_xlabel("activation")
    hist_ax.set_ylabel("count")
    hist_ax.set_title(f"all {n} x {k} values", fontsize=9)
    colours = np.where(dead, "C3", "C1")
    bar_ax.bar(np.arange(k), unit_means, width=0.8, color=list(colours))
    bar_ax.axhline(0.0, color="black", linewidth=0.5)
    if dead.any():  # their bars are too short to see: a red cross on the axis for each
        idx = np.flatnonzero(dead)
        bar_ax.plot(idx, np.zeros(idx.size), "x", color="C3", markersize=6, label="dead unit")
    if target is not None:
        bar_ax.axhline(
            target, color="0.2", linestyle="--", linewidth=1, label=f"target ρ = {target:g}"
        )
    if dead.any() or target is not None:  # above the bars, in headroom made for it
        top = max(float(unit_means.max()), target or 0.0)
        if top > 0:
            bar_ax.set_ylim(top=1.3 * top)
        bar_ax.legend(fontsize=8, loc="upper right", ncols=2)
    bar_ax.set_xlabel("code unit")
    bar_ax.set_ylabel("mean activation")
    if k <= 32:
        bar_ax.set_xticks(np.arange(k))
        bar_ax.tick_params(axis="x", labelsize=7 if k > 16 else 9)
    dead_note = f", {int(dead.sum())} of {k} dead" if dead.any() else ""
    bar_ax.set_title(f"per-unit mean over {n} examples{dead_note}", fontsize=9)
    summary = (
        f"mean {codes.mean():.3g}, zeros {100 * zero.mean():.1f}%, "
        f"near zero {100 * near.mean():.1f}%"
    )
    fig.suptitle(f"{title} ({summary})" if title else summary)
    return fig


def plot_filters(
    path: str | os.PathLike,
    kernel: np.ndarray,
    example_shape: tuple[int, ...],
    title: str = "",
    max_filters: int = 100,
) -> None:
    """Writes ``filters_figure(kernel, example_shape, title, max_filters)`` to the PNG ``path``."""
    _save(filters_figure(kernel, example_shape, title, max_filters), path)


def filters_figure(
    kernel: np.ndarray,
    example_shape: tuple[int, ...],
    title: str = "",
    max_filters: int = 100,
) -> Figure:
    """Draws the first encoder layer's filters of an image model: one tile per hidden unit.

    Column j of ``kernel`` (D, H1) holds the weights of hidden unit j on the D input pixels;
    reshaped to ``example_shape`` it shows what the unit responds to (strokes, blobs, edges).
    Each filter is drawn on its own range, symmetric around 0 (``±max|w|``), with a diverging
    colormap (red positive, blue negative, white 0), so the sign structure is visible whatever
    the filter's norm. Images with channels show the mean over channels. At most
    ``max_filters`` filters, the first ones, tiled in a near-square grid with grey lines between
    them (``filter_mosaic``): one image, so a grid of 100 costs what one does.

    Args:
      kernel: (D, H1) first-layer kernel, D = prod(example_shape).
      example_shape: (H, W), (H, W, 1) or (H, W, 3).
      title: figure title (the number of filters shown is added).
      max_filters: the most filters to draw (>= 1).

    Raises:
      FigureError: for a kernel that is not 2-D, D that does not match example_shape, an
        example_shape that is not an image, max_filters < 1, or non-finite weights.
    """
    import matplotlib

    mosaic, (rows, cols) = filter_mosaic(kernel, example_shape, max_filters)
    total, shown = np.shape(kernel)[1], min(np.shape(kernel)[1], max_filters)
    h, w = example_shape[:2]
    size = 0.75 if cols <= 10 else 0.55
    fig = Figure(figsize=(max(cols * size, 3.0), rows * size * h / w + 0.7), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.55")  # the lines between tiles
    ax.imshow(mosaic, cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    count = f"{shown} of {total} filters" if shown < total else f"{total} filters"
    fig.suptitle(f"{title} ({count})" if title else count, fontsize=10)
    channels = (
        f"; the mean over its {example_shape[2]} channels"
        if len(example_shape) == 3 and example_shape[2] > 1
        else ""
    )
    fig.supxlabel(f"each on its own range ±max|w|: red > 0, blue < 0{channels}", fontsize=8)
    return fig


def filter_mosaic(
    kernel: np.ndarray, example_shape: tuple[int, ...], max_filters: int = 100
) -> tuple[np.ndarray, tuple[int, int]]:
    """The first ``max_filters`` columns of a (D, H1) kernel as images, each divided by its own
    max|w| (so in [-1, 1]), tiled row by row in a near-square grid of (rows, cols) cells with one
    NaN pixel between cells; unused cells are NaN. Returns (mosaic, (rows, cols))."""
    kernel = np.asarray(kernel, dtype=np.float64)
    example_shape = tuple(int(s) for s in example_shape)
    if len(example_shape) not in (2, 3):
        raise FigureError(
            f"example_shape={example_shape} is not an image (H, W) or (H, W, C); first-layer "
            "filters are only drawn for image data"
        )
    if kernel.ndim != 2 or kernel.size == 0:
        raise FigureError(f"kernel must have shape (D, H1) with D, H1 >= 1, got {kernel.shape}")
    d = math.prod(example_shape)
    if kernel.shape[0] != d:
        raise FigureError(
            f"kernel has {kernel.shape[0]} rows but example_shape={example_shape} has "
            f"{d} pixels; give the first layer's (D, H1) kernel with D = {d}"
        )
    if max_filters < 1:
        raise FigureError(f"max_filters={max_filters!r} must be >= 1")
    if not np.all(np.isfinite(kernel)):
        raise FigureError(f"kernel holds {int(np.sum(~np.isfinite(kernel)))} non-finite weights")
    shown = min(kernel.shape[1], max_filters)
    cols = math.ceil(math.sqrt(shown))
    rows = math.ceil(shown / cols)
    h, w = example_shape[:2]
    images = kernel[:, :shown].T.reshape(shown, *example_shape)
    if images.ndim == 4:
        images = images.mean(axis=3)
    bound = np.abs(images).max(axis=(1, 2), keepdims=True)
    images = images / np.where(bound > 0, bound, 1.0)
    mosaic = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for j, image in enumerate(images):
        r, c = divmod(j, cols)
        mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return mosaic, (rows, cols)


# The figures of whole runs ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunFigures:
    """What a run's figures are drawn from, as plain values (numpy, strings, the history rows),
    so that a worker process can draw them: built by ``ae_jax.outputs.figures_of_run``. The
    reconstructions come from the run's ``reconstructions.npz``."""

    workdir: Path
    title: str
    example_shape: tuple[int, ...]
    corrupted_label: str  # the row of corrupted inputs, when the npz holds one
    pca_label: str  # the row of PCA's reconstructions, when the npz holds one
    history: list[dict]
    reference: dict[str, float] | None  # the training curves' reference lines
    kl_target: float | None  # the KL penalty's target mean activation
    kernel: np.ndarray | None  # an image model's first-layer (D, H1) weights


def draw_run_figures(job: RunFigures) -> None:
    """The run's figures (``ae_jax.outputs.FIGURES``) in ``job.workdir``: ``reconstructions.png``,
    ``training_curves.png`` (when the run has a history), ``code_activations.png`` and, given a
    first-layer kernel, ``filters.png``."""
    saved = np.load(Path(job.workdir) / "reconstructions.npz")
    rows = {"input": saved["input"]}
    if "corrupted" in saved:
        rows[job.corrupted_label] = saved["corrupted"]
    rows["autoencoder"] = saved["reconstruction"]
    if "pca" in saved:
        rows[job.pca_label] = saved["pca"]
    out = Path(job.workdir)
    plot_reconstructions(out / "reconstructions.png", rows, job.example_shape, title=job.title)
    if job.history:  # a stack without fine-tuning has no curves of its own (its layers have)
        plot_training_curves(
            out / "training_curves.png", job.history, title=job.title, reference=job.reference
        )
    plot_code_histogram(
        out / "code_activations.png", saved["codes"], title=job.title, target=job.kl_target
    )
    if job.kernel is not None:
        plot_filters(
            out / "filters.png",
            job.kernel,
            job.example_shape,
            title=f"{job.title}: first-layer filters",
        )


# One run's figures take ~0.5 s on one core of the 2-core CPU this was measured on; a worker
# process ~0.5 s to start (Python, numpy, matplotlib), on a core that would otherwise wait. Below
# this many runs per worker a worker does not pay.
RUNS_PER_WORKER = 3
MAX_WORKERS = 8  # each worker holds ~100 MB


def spare_cores() -> int:
    """The cores this process may use, less the one it runs on."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)) - 1, 0)
    return max((os.cpu_count() or 1) - 1, 0)


def changed_rc_params() -> dict:
    """The matplotlib settings this process changed at run time (``rcParams`` against what its
    matplotlibrc gives a fresh process), so that a worker draws as this process does."""
    import matplotlib

    fresh = matplotlib.rc_params()
    return {
        k: v
        for k, v in matplotlib.rcParams.items()
        if k != "backend" and k in fresh and fresh[k] != v
    }


def draw_many_runs_figures(jobs: Sequence[RunFigures], workers: int | None = None) -> None:
    """Draw several runs' figures (``draw_run_figures``): in this process and, with enough runs,
    in worker processes beside it, one per spare core (at most ``MAX_WORKERS``; ``workers``
    overrides). Each worker is a fresh Python running ``ae_jax.evaluation.figure_worker``: it
    imports only numpy and matplotlib, never the caller's script (which ``multiprocessing``'s
    spawn would run again) and never JAX, whose threads must not be forked. The workers take
    runs from one end of the list while this process draws from the other, so a worker still
    starting holds back at most one run. A worker that dies hands its run back to this process;
    an error in a figure is raised here, as it would be drawing alone. Workers draw under the
    matplotlib settings this process changed (``changed_rc_params``). Returns when every figure
    is written."""
    import selectors

    from ae_jax.evaluation.figure_worker import Worker

    queue = collections.deque(jobs)
    if workers is None:
        workers = min(spare_cores(), len(queue) // RUNS_PER_WORKER, MAX_WORKERS)
    if os.name == "nt":  # no waiting on pipes there
        workers = 0
    pool: list[Worker] = []
    for _ in range(max(workers, 0)):
        try:
            pool.append(Worker())
        except OSError:  # no interpreter to start (an embedded Python): the rest is drawn here
            break
    rc = changed_rc_params() if pool else {}
    busy: dict[int, tuple[Worker, RunFigures]] = {}  # by the worker's answer pipe
    try:
        while queue or busy:
            for worker in pool:
                if queue and worker.alive and worker.fileno() not in busy:
                    job = queue.popleft()
                    if worker.send(job, rc):
                        busy[worker.fileno()] = (worker, job)
                    else:
                        queue.appendleft(job)
            if queue:
                draw_run_figures(queue.pop())
                timeout = 0.0  # collect what the workers finished meanwhile, then go on
            elif busy:
                timeout = None  # only the workers' runs are left: wait for one
            else:
                continue
            with selectors.DefaultSelector() as waiting:  # (select() fails beyond fd 1023)
                for fd in busy:
                    waiting.register(fd, selectors.EVENT_READ)
                ready = [key.fd for key, _ in waiting.select(timeout)]
            for fd in ready:
                worker, job = busy.pop(fd)
                finished, error = worker.receive()
                if not finished:
                    queue.append(job)  # the worker died: drawn here instead
                elif error is not None:
                    raise error
    finally:
        for worker in pool:
            worker.close(kill=any(w is worker for w, _ in busy.values()))
