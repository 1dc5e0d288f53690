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

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

_DPI = 150
# Substrings that mark a history key as a loss-like metric (other keys, e.g. train/l2_grads or
# train/lr, live on other scales and are left out of the curves).
_LOSS_WORDS = ("loss", "mse", "sse", "bce", "nll")
# Line style per metric prefix: train solid, eval dashed, test dotted.
_PREFIX_STYLES = {"train/": "-", "eval/": "--", "test/": ":"}
# Beyond this many features a tabular panel is drawn as plain lines (markers would be a smear).
_MAX_MARKED_FEATURES = 50


class FigureError(ValueError):
    """A figure's input has the wrong shape or content; the message names it and what is valid."""


def _save(fig: Figure, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png", bbox_inches="tight")


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

    Images ((H, W, C) with C in {1, 3}, or (H, W)): a grid with one row per entry of ``rows`` and n
    columns, no ticks, the row's name on the left, gray colormap for one channel. Every row is shown
    on the value range of the first row's shown examples (the data's own range), clipped to it, so a
    reconstruction that overshoots cannot rescale the colours and rows stay comparable.
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
    if is_image:
        fig = _image_grid(data, n)
    elif len(example_shape) == 1:
        fig = _tabular_panels(data, n)
    else:
        raise FigureError(
            f"example_shape={example_shape} is neither an image (H, W, C) with C in {{1, 3}} "
            f"nor tabular (D,)"
        )
    if title:
        fig.suptitle(title)
    return fig


def _image_grid(data: dict[str, np.ndarray], n: int) -> Figure:
    reference = next(iter(data.values()))[:n]
    lo, hi = float(reference.min()), float(reference.max())
    if hi <= lo:  # a constant reference: any non-empty range shows it
        hi = lo + 1.0
    fig = Figure(figsize=(1.0 * n + 1.2, 1.0 * len(data) + 0.4), layout="constrained")
    axes = fig.subplots(len(data), n, squeeze=False)
    for r, (label, x) in enumerate(data.items()):
        for c in range(n):
            ax = axes[r, c]
            image = np.clip(x[c], lo, hi)  # (H, W[, C])
            if image.ndim == 3 and image.shape[2] == 1:
                image = image[..., 0]
            if image.ndim == 2:
                ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            else:  # RGB: imshow needs [0, 1]
                ax.imshow((image - lo) / (hi - lo), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    return fig


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
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    return fig


def _is_loss_key(key: str) -> bool:
    return key.startswith(tuple(_PREFIX_STYLES)) and any(w in key for w in _LOSS_WORDS)


def plot_training_curves(
    path: str | os.PathLike, history: Sequence[Mapping[str, float]], title: str = ""
) -> None:
    """Writes ``training_curves_figure(history, title)`` to the PNG ``path``."""
    _save(training_curves_figure(history, title), path)


def training_curves_figure(history: Sequence[Mapping[str, float]], title: str = "") -> Figure:
    """Draws the loss-like metrics of a run against the epoch.

    Loss-like keys are ``train/*``, ``eval/*`` and ``test/*`` keys that contain loss, mse, sse, bce
    or nll (``train/loss``, ``train/loss/rec``, ``eval/mse``, ...). Train is solid, eval dashed,
    test dotted; a metric keeps its colour across prefixes (``train/loss`` and ``eval/loss``).
    Epochs where a key is missing (evaluation every few epochs) are skipped for that key. The y
    axis is logarithmic when every plotted value is positive and they span more than one decade.

    Raises:
      FigureError: for an empty history, an entry without "epoch", or no loss-like key.
    """
    if not history:
        raise FigureError("history must hold at least one epoch's metrics, got none")
    missing = [i for i, h in enumerate(history) if "epoch" not in h]
    if missing:
        raise FigureError(f"every history entry needs an 'epoch' key; entries {missing} lack it")
    # Train first, then eval, then test, each in name order: the legend reads in that order.
    order = {p: i for i, p in enumerate(_PREFIX_STYLES)}
    keys = sorted(
        {k for h in history for k in h if _is_loss_key(k)},
        key=lambda k: (next(order[p] for p in order if k.startswith(p)), k),
    )
    if not keys:
        found = sorted({k for h in history for k in h})
        raise FigureError(
            f"history has no loss-like key (train/*, eval/* or test/* containing one of "
            f"{_LOSS_WORDS}); keys found: {found}"
        )
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    colours: dict[str, str] = {}
    values = []
    for key in keys:
        prefix = next(p for p in _PREFIX_STYLES if key.startswith(p))
        metric = key[len(prefix) :]
        points = [(h["epoch"], h[key]) for h in history if key in h and np.isfinite(h[key])]
        if not points:
            continue
        epochs, ys = zip(*points, strict=True)
        colour = colours.setdefault(metric, f"C{len(colours) % 10}")
        ax.plot(epochs, ys, _PREFIX_STYLES[prefix], color=colour, marker=".", label=key)
        values.extend(ys)
    values = np.asarray(values)
    if values.size and values.min() > 0 and values.max() / values.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_code_histogram(path: str | os.PathLike, codes: np.ndarray, title: str = "") -> None:
    """Writes ``code_histogram_figure(codes, title)`` to the PNG ``path``."""
    _save(code_histogram_figure(codes, title), path)


def code_histogram_figure(codes: np.ndarray, title: str = "") -> Figure:
    """Draws the distribution of code activations: all values, and the mean of each unit.

    Left: a histogram of every entry of ``codes`` (log counts when they span several decades, which
    sparse codes do). Right: a bar per code unit with its mean activation over the examples, the
    quantity a KL sparsity penalty drives to ρ (Ng, CS294A notes). The title reports the mean
    activation and the fraction of exact zeros (the sparsity of k-sparse and ReLU codes).

    Args:
      codes: (N, k) code activations.

    Raises:
      FigureError: if codes is not a non-empty 2-D array of finite values.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.size == 0:
        raise FigureError(f"codes must have shape (N, k) with N, k >= 1, got {codes.shape}")
    if not np.all(np.isfinite(codes)):
        raise FigureError(f"codes holds {int(np.sum(~np.isfinite(codes)))} non-finite values")
    unit_means = codes.mean(axis=0)  # (k,)
    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    hist_ax, bar_ax = fig.subplots(1, 2)
    counts, _, _ = hist_ax.hist(codes.ravel(), bins=50, color="C0")
    nonzero = counts[counts > 0]
    if nonzero.size and nonzero.max() / nonzero.min() > 100:
        hist_ax.set_yscale("log")
    hist_ax.set_xlabel("activation")
    hist_ax.set_ylabel("count")
    hist_ax.set_title(f"all {codes.shape[0]} x {codes.shape[1]} values", fontsize=9)
    bar_ax.bar(np.arange(codes.shape[1]), unit_means, width=0.8, color="C1")
    bar_ax.axhline(0.0, color="black", linewidth=0.5)
    bar_ax.set_xlabel("code unit")
    bar_ax.set_ylabel("mean activation")
    bar_ax.set_title("per-unit mean", fontsize=9)
    summary = f"mean {codes.mean():.3g}, zeros {100 * np.mean(codes == 0):.1f}%"
    fig.suptitle(f"{title} ({summary})" if title else summary)
    return fig
