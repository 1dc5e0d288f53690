"""Tests of the figures: valid PNGs of sensible size, image vs tabular layouts, curves, errors."""

import matplotlib.image
import numpy as np
import pytest
from sklearn.datasets import load_digits

from ae_jax.evaluation.figures import (
    FigureError,
    code_histogram_figure,
    filter_mosaic,
    filters_figure,
    plot_code_histogram,
    plot_filters,
    plot_reconstructions,
    plot_training_curves,
    reconstructions_figure,
    training_curves_figure,
)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().images[:20] / 16.0)[..., None]  # (20, 8, 8, 1) in [0, 1]


def _png(path) -> np.ndarray:
    """Reads a written PNG back: (height, width, 4) floats in [0, 1]."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def _history(epochs: int = 12, eval_every: int = 3) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "train/loss": 1.0 / e,
            "train/loss/rec": 0.9 / e,
            "train/loss/l1": 0.1 / e,
            "train/l2_grads": 50.0,  # not loss-like: must stay off the axes
            **({"eval/loss": 1.2 / e} if e % eval_every == 0 else {}),
        }
        for e in range(1, epochs + 1)
    ]


def test_image_grid_png_size_grows_with_rows_and_columns(digits, tmp_path):
    noisy = np.clip(digits + 0.3 * np.random.default_rng(0).normal(size=digits.shape), 0, 1)
    rows = {"input": digits, "corrupted": noisy, "reconstruction": 0.5 * digits}
    plot_reconstructions(tmp_path / "three.png", rows, (8, 8, 1), title="three rows", n=10)
    plot_reconstructions(tmp_path / "one.png", {"input": digits}, (8, 8, 1), n=10)
    plot_reconstructions(tmp_path / "narrow.png", rows, (8, 8, 1), n=4)
    three, one, narrow = (_png(tmp_path / f) for f in ("three.png", "one.png", "narrow.png"))
    assert three.ndim == 3 and three.shape[2] in (3, 4)
    # ~1 inch per image at 150 dpi: 10 columns are 1500-1800 px wide, 3 rows ~400-600 px high.
    assert 1200 < three.shape[1] < 2400 and 300 < three.shape[0] < 800
    assert three.shape[0] > one.shape[0] + 200  # two more rows of ~150 px
    assert narrow.shape[1] < three.shape[1] - 600  # six fewer columns
    assert three[..., :3].std() > 0.1  # not a blank canvas


def test_image_grid_layout_and_display_range(digits):
    rows = {"input": digits, "reconstruction": digits}
    fig = reconstructions_figure(rows, (8, 8, 1), n=5)
    axes = fig.get_axes()
    assert len(axes) == 2  # one strip per row
    assert [ax.get_ylabel() for ax in axes] == ["input", "reconstruction"]
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in axes)
    image = axes[0].get_images()[0]
    assert image.get_cmap().name == "gray"
    lo, hi = digits[:5].min(), digits[:5].max()
    assert image.get_clim() == (lo, hi)
    strip = image.get_array().filled(np.nan)
    assert strip.shape == (8, 5 * 8 + 4)  # five 8x8 images, 1-pixel gaps
    for c in range(5):
        np.testing.assert_allclose(strip[:, 9 * c : 9 * c + 8], digits[c, ..., 0])
    assert np.isnan(strip[:, 8::9]).all()  # the gaps are blank
    # n larger than N shows every example once.
    strip = reconstructions_figure(rows, (8, 8, 1), n=50).get_axes()[0].get_images()[0]
    assert strip.get_array().shape == (8, 20 * 9 - 1)


def test_overshooting_reconstructions_are_clipped_to_the_input_range(digits, tmp_path):
    hi = float(digits[:10].max())
    wild = {"input": digits, "reconstruction": np.full_like(digits, 100.0)}
    clipped = {"input": digits, "reconstruction": np.full_like(digits, hi)}
    plot_reconstructions(tmp_path / "wild.png", wild, (8, 8, 1))
    plot_reconstructions(tmp_path / "clipped.png", clipped, (8, 8, 1))
    np.testing.assert_array_equal(_png(tmp_path / "wild.png"), _png(tmp_path / "clipped.png"))


def test_rgb_images(tmp_path):
    x = np.random.default_rng(1).random((6, 12, 12, 3))  # (N, H, W, 3)
    fig = reconstructions_figure({"input": x, "reconstruction": 1.5 * x}, (12, 12, 3), n=6)
    strip = fig.get_axes()[0].get_images()[0].get_array()
    assert strip.shape == (12, 6 * 12 + 5, 3)
    lo, hi = x.min(), x.max()  # shown on the input's own range, mapped to [0, 1]
    np.testing.assert_allclose(strip[:, :12], (x[0] - lo) / (hi - lo))
    assert (strip[:, 12] == 1.0).all()  # white gaps
    plot_reconstructions(tmp_path / "rgb.png", {"input": x, "rec": 1.5 * x}, (12, 12, 3), n=6)
    assert _png(tmp_path / "rgb.png").shape[1] > 600


def test_tabular_panels(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 13))  # (N, D)
    rows = {"input": x, "corrupted": x * (rng.random(x.shape) > 0.2), "reconstruction": 0.9 * x}
    fig = reconstructions_figure(rows, (13,), n=7)
    visible = [ax for ax in fig.get_axes() if ax.get_visible()]
    assert len(visible) == 7  # one panel per example, the spare grid cell hidden
    assert all(len(ax.get_lines()) == 3 for ax in visible)  # one line per row
    np.testing.assert_allclose(visible[2].get_lines()[1].get_ydata(), rows["corrupted"][2])
    assert len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(rows)
    plot_reconstructions(tmp_path / "tab.png", rows, (13,), title="tabular", n=7)
    png = _png(tmp_path / "tab.png")
    assert 1000 < png.shape[1] < 3000 and 400 < png.shape[0] < 1500


@pytest.mark.parametrize(
    ("rows", "shape", "match"),
    [
        ({"input": np.zeros((5, 8, 8, 1)), "rec": np.zeros((4, 8, 8, 1))}, (8, 8, 1), r"\(4, 8, 8"),
        ({"input": np.zeros((5, 8, 8, 1)), "rec": np.zeros((5, 64))}, (8, 8, 1), r"\(5, 64\)"),
        ({"input": np.zeros((5, 8, 8, 1, 1))}, (8, 8, 1, 1), r"example_shape=\(8, 8, 1, 1\)"),
        ({}, (8, 8, 1), "at least one"),
    ],
)
def test_reconstruction_errors_name_the_shapes(rows, shape, match):
    with pytest.raises(FigureError, match=match):
        reconstructions_figure(rows, shape)


@pytest.mark.parametrize(("channels", "grid"), [(2, (1, 2)), (4, (2, 2)), (5, (2, 3))])
def test_images_of_other_channel_counts_show_each_channel_grey_in_a_tile(channels, grid):
    # RGBA or two-channel images trained to the end, then the figure raised FigureError
    x = np.random.default_rng(3).random((5, 6, 4, channels))
    fig = reconstructions_figure({"input": x, "rec": 1 - x}, (6, 4, channels), title="t", n=3)
    said = "side by side" if grid[0] == 1 else f"{grid[0]} × {grid[1]}"
    assert fig.get_suptitle() == f"t ({channels} channels, {said} in each example)"
    strip = fig.axes[0].get_images()[0].get_array()
    rows, cols = grid
    assert strip.shape == (6 * rows, 3 * 4 * cols + 2 * max(1, 4 * cols // 8))
    for c in range(channels):  # example 0, channel c, at tile row c // cols, column c % cols
        r, k = divmod(c, cols)
        np.testing.assert_array_equal(strip[r * 6 : r * 6 + 6, k * 4 : k * 4 + 4], x[0, :, :, c])
    mosaic, _ = filter_mosaic(np.ones((6 * 4 * channels, 2)), (6, 4, channels))
    assert np.isfinite(mosaic).sum() == 2 * 6 * 4  # the mean over channels, one tile each


def test_n_must_be_positive(digits):
    with pytest.raises(FigureError, match="n=0"):
        reconstructions_figure({"input": digits}, (8, 8, 1), n=0)


def test_training_curves(tmp_path):
    history = _history()
    plot_training_curves(tmp_path / "curves.png", history, title="run")
    png = _png(tmp_path / "curves.png")
    assert 1000 < png.shape[1] < 1600 and 400 < png.shape[0] < 900  # two panels
    ax, terms_ax = training_curves_figure(history).get_axes()
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["train/loss", "train/loss/rec", "eval/loss"]
    # The weighted terms live on their own scale: a panel of their own.
    assert [line.get_label() for line in terms_ax.get_lines()] == ["train/loss/l1"]
    assert terms_ax.get_title() == "weighted objective terms"
    assert lines["train/loss"].get_linestyle() == "-"
    assert lines["eval/loss"].get_linestyle() == "--"
    assert lines["eval/loss"].get_color() == lines["train/loss"].get_color()  # same metric
    np.testing.assert_array_equal(lines["eval/loss"].get_xdata(), [3, 6, 9, 12])  # only logged
    assert ax.get_xlabel() == "epoch"
    assert ax.get_yscale() == "log"  # 1.0 down to 0.1 / 12: more than a decade


def test_training_curves_stay_linear_within_a_decade():
    history = [{"epoch": e, "train/loss": 1.0 - 0.05 * e, "eval/mse": 0.5} for e in range(5)]
    assert training_curves_figure(history).get_axes()[0].get_yscale() == "linear"
    with_zero = [{"epoch": e, "train/loss/l1": 0.1 * e} for e in range(5)]  # log impossible
    assert training_curves_figure(with_zero).get_axes()[0].get_yscale() == "linear"


@pytest.mark.parametrize(
    ("history", "match"),
    [
        ([], "at least one"),
        ([{"epoch": 1, "train/loss": 1.0}, {"train/loss": 0.5}], r"entries \[1\]"),
        ([{"epoch": 1, "train/lr": 1e-3}], r"no loss-like key.*train/lr"),
    ],
)
def test_training_curve_errors(history, match):
    with pytest.raises(FigureError, match=match):
        training_curves_figure(history)


def test_code_histogram(tmp_path):
    rng = np.random.default_rng(3)
    codes = np.maximum(rng.normal(size=(500, 16)) - 1.0, 0.0)  # (N, k) sparse ReLU-like code
    plot_code_histogram(tmp_path / "codes.png", codes, title="relu code")
    png = _png(tmp_path / "codes.png")
    assert 1000 < png.shape[1] < 2000 and 300 < png.shape[0] < 800
    fig = code_histogram_figure(codes)
    hist_ax, bar_ax = fig.get_axes()
    heights = [patch.get_height() for patch in bar_ax.patches]
    np.testing.assert_allclose(heights, codes.mean(axis=0))
    assert sum(patch.get_height() for patch in hist_ax.patches) == codes.size
    assert f"zeros {100 * np.mean(codes == 0):.1f}%" in fig.get_suptitle()


def test_code_histogram_errors():
    with pytest.raises(FigureError, match=r"\(N, k\).*\(10,\)"):
        code_histogram_figure(np.zeros(10))
    with pytest.raises(FigureError, match="1 non-finite"):
        code_histogram_figure(np.array([[0.0, np.nan]]))


def test_training_curves_reference_line_and_last_values(tmp_path):
    history = [{"epoch": e, "train/loss": 0.1 / e, "eval/mse": 0.12 / e} for e in range(1, 11)]
    fig = training_curves_figure(history, reference={"PCA k=8 test MSE": 0.0246})
    (ax,) = fig.get_axes()  # no objective terms: one panel
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["train/loss", "eval/mse", "PCA k=8 test MSE"]
    np.testing.assert_array_equal(lines["PCA k=8 test MSE"].get_ydata(), [0.0246, 0.0246])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["train/loss  0.01", "eval/mse  0.012", "PCA k=8 test MSE  0.0246"]
    assert ax.get_yscale() == "log"  # 0.12 down to 0.01: more than a decade
    plot_training_curves(tmp_path / "ref.png", history, reference={"PCA": 0.0246})
    assert _png(tmp_path / "ref.png").shape[1] < 1100  # one panel


def test_training_curves_log_scale_can_be_forced():
    history = [{"epoch": e, "train/loss": 1.0 - 0.05 * e} for e in range(1, 5)]
    assert training_curves_figure(history).get_axes()[0].get_yscale() == "linear"
    forced = training_curves_figure(history, log_scale=True).get_axes()[0]
    assert forced.get_yscale() == "log"
    steep = [{"epoch": e, "train/loss": 10.0**-e} for e in range(1, 5)]
    assert training_curves_figure(steep, log_scale=False).get_axes()[0].get_yscale() == "linear"


def test_training_curves_reference_must_be_finite():
    with pytest.raises(FigureError, match=r"reference\['PCA'\]=nan must be a finite number"):
        training_curves_figure([{"epoch": 1, "train/loss": 1.0}], reference={"PCA": float("nan")})


def test_reconstructions_with_a_pca_row(digits, tmp_path):
    rows = {"input": digits, "reconstruction": 0.9 * digits, "PCA k=8": 0.8 * digits}
    fig = reconstructions_figure(rows, (8, 8, 1), n=6)
    assert [ax.get_ylabel() for ax in fig.get_axes()] == list(rows)
    plot_reconstructions(tmp_path / "pca.png", rows, (8, 8, 1), title="digits, k=8", n=6)
    png = _png(tmp_path / "pca.png")
    # The row labels widen the figure on the left; they are not clipped (tight bounding box).
    assert png.shape[0] > 3 * 120 and png.shape[1] > 6 * 130
    tab = np.random.default_rng(4).random((5, 12))
    fig = reconstructions_figure({"input": tab, "PCA k=3": tab * 0.5}, (12,), n=5)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["input", "PCA k=3"]


def test_code_histogram_marks_exact_zeros_dead_units_and_the_target(tmp_path):
    rng = np.random.default_rng(5)
    codes = np.maximum(rng.normal(size=(400, 12)) - 1.0, 0.0)
    codes[:, 3] = 0.0  # a dead unit
    fig = code_histogram_figure(codes, "relu", target=0.05)
    hist_ax, bar_ax = fig.get_axes()
    zero_bar = hist_ax.patches[-1]
    assert zero_bar.get_height() == np.sum(codes == 0)
    labels = [t.get_text() for t in hist_ax.get_legend().get_texts()]
    assert labels == ["non-zero values", f"exactly 0 ({100 * np.mean(codes == 0):.1f}%)"]
    assert hist_ax.get_yscale() == "log"  # the spike at 0 holds most values
    assert sum(p.get_height() for p in hist_ax.patches) == codes.size
    np.testing.assert_allclose([p.get_height() for p in bar_ax.patches], codes.mean(axis=0))
    dead = next(line for line in bar_ax.get_lines() if line.get_label() == "dead unit")
    np.testing.assert_array_equal(dead.get_xdata(), [3])
    target = next(line for line in bar_ax.get_lines() if line.get_label() == "target ρ = 0.05")
    np.testing.assert_array_equal(target.get_ydata(), [0.05, 0.05])
    assert "1 of 12 dead" in bar_ax.get_title()
    assert "near zero" in fig.get_suptitle()
    plot_code_histogram(tmp_path / "c.png", codes, target=0.05, log_counts=False)
    assert _png(tmp_path / "c.png").shape[1] > 1000


def test_dense_code_histogram_stays_linear_without_zero_bar():
    codes = np.random.default_rng(6).normal(size=(500, 8))
    hist_ax, bar_ax = code_histogram_figure(codes).get_axes()
    assert hist_ax.get_yscale() == "linear" and hist_ax.get_legend() is None
    assert bar_ax.get_legend() is None and "dead" not in bar_ax.get_title()
    assert code_histogram_figure(codes, log_counts=True).get_axes()[0].get_yscale() == "log"
    with pytest.raises(FigureError, match="target=nan"):
        code_histogram_figure(codes, target=float("nan"))


def _mosaic(fig) -> np.ndarray:
    (ax,) = fig.get_axes()
    (image,) = ax.get_images()
    assert image.get_clim() == (-1.0, 1.0) and image.get_cmap().name == "RdBu_r"
    return np.asarray(image.get_array().filled(np.nan))


def test_filters_one_tile_per_unit_symmetric_diverging(digits, tmp_path):
    kernel = np.random.default_rng(7).normal(size=(64, 10))  # (D, H1)
    kernel[:, 0] *= 10.0
    fig = filters_figure(kernel, (8, 8, 1), title="first layer")
    mosaic = _mosaic(fig)
    assert mosaic.shape == (3 * 9 - 1, 4 * 9 - 1)  # a 3x4 grid of 8x8 tiles, 1-pixel lines
    for j in range(12):
        r, c = divmod(j, 4)
        tile = mosaic[9 * r : 9 * r + 8, 9 * c : 9 * c + 8]
        if j >= 10:
            assert np.isnan(tile).all()  # the two unused cells are blank
            continue
        bound = np.abs(kernel[:, j]).max()  # each filter on its own symmetric range
        np.testing.assert_allclose(tile, kernel[:, j].reshape(8, 8) / bound)
    assert np.isnan(mosaic[8, :]).all() and np.isnan(mosaic[:, 8]).all()  # lines between tiles
    assert fig.get_suptitle() == "first layer (10 filters)"
    plot_filters(tmp_path / "filters.png", kernel, (8, 8, 1))
    png = _png(tmp_path / "filters.png")
    assert 300 < png.shape[1] < 1200 and png[..., :3].std() > 0.1


def test_filters_at_most_max_filters_and_rgb():
    kernel = np.random.default_rng(8).normal(size=(64, 130))
    fig = filters_figure(kernel, (8, 8))
    assert _mosaic(fig).shape == (10 * 9 - 1, 10 * 9 - 1)  # 100 tiles
    assert fig.get_suptitle() == "100 of 130 filters"
    mosaic, grid = filter_mosaic(kernel, (8, 8), max_filters=7)
    assert grid == (3, 3) and np.isfinite(mosaic).sum() == 7 * 64
    rgb = np.random.default_rng(9).normal(size=(4 * 4 * 3, 5))
    mosaic, grid = filter_mosaic(rgb, (4, 4, 3))
    mean = rgb[:, 0].reshape(4, 4, 3).mean(axis=2)  # colour filters: the mean over channels
    assert grid == (2, 3)
    np.testing.assert_allclose(mosaic[:4, :4], mean / np.abs(mean).max())


@pytest.mark.parametrize(
    ("kernel", "shape", "kwargs", "match"),
    [
        (np.zeros((64, 4)), (64,), {}, r"example_shape=\(64,\) is not an image"),
        (np.zeros(64), (8, 8, 1), {}, r"\(D, H1\).*\(64,\)"),
        (np.zeros((63, 4)), (8, 8, 1), {}, "63 rows but example_shape=\\(8, 8, 1\\) has 64"),
        (np.zeros((64, 4)), (8, 8, 1), {"max_filters": 0}, "max_filters=0"),
        (np.full((64, 4), np.nan), (8, 8, 1), {}, "256 non-finite"),
    ],
)
def test_filters_errors(kernel, shape, kwargs, match):
    with pytest.raises(FigureError, match=match):
        filters_figure(kernel, shape, **kwargs)


def test_an_overcomplete_run_draws_no_identity_pca_row(tmp_path):
    from conftest import make_config

    from ae_jax.train import train_and_evaluate

    # 100 code units on 64 inputs: PCA with every component reconstructs exactly; no row
    cfg = make_config("model=shallow", "model.latent_dim=100", "trainer.epochs=2")
    train_and_evaluate(cfg, tmp_path)
    assert "pca" not in np.load(tmp_path / "reconstructions.npz")
    train_and_evaluate(make_config("trainer.epochs=2"), tmp_path / "k8")  # k = 8 < 64: a row
    assert "pca" in np.load(tmp_path / "k8" / "reconstructions.npz")


def _runs(digits, tmp_path, count: int) -> list:
    """``count`` runs' figure inputs, each in its own directory with its reconstructions.npz."""
    from ae_jax.evaluation.figures import RunFigures

    rng = np.random.default_rng(0)
    jobs = []
    for i in range(count):
        workdir = tmp_path / f"run{i}"
        workdir.mkdir(parents=True)
        x = digits[:10]
        np.savez(
            workdir / "reconstructions.npz",
            input=x,
            corrupted=x * (rng.random(x.shape) > 0.25),
            reconstruction=np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1),
            codes=rng.standard_normal((20, 8)),
        )
        jobs.append(
            RunFigures(
                workdir=workdir,
                title=f"run {i}",
                example_shape=(8, 8, 1),
                corrupted_label="masking 0.25",
                pca_label="PCA k=8",
                history=_history(),
                reference={"PCA k=8 test MSE": 0.02},
                kl_target=None,
                kernel=rng.standard_normal((64, 16)),
            )
        )
    return jobs


FIGURE_FILES = ("reconstructions", "training_curves", "code_activations", "filters")


@pytest.mark.parametrize("rc", [{}, {"axes.facecolor": "0.9", "lines.linewidth": 3.0}])
def test_many_runs_figures_drawn_by_workers_equal_those_drawn_alone(
    digits, tmp_path, monkeypatch, rc
):
    """Worker processes draw some of the runs (this process draws fewer than all), and every
    run's four PNGs are byte for byte those that drawing each run alone writes, also under
    matplotlib settings this process changed at run time (a notebook's style)."""
    import matplotlib

    import ae_jax.evaluation.figures as F

    alone = _runs(digits, tmp_path / "alone", 5)
    with matplotlib.rc_context(rc):
        for job in alone:
            F.draw_run_figures(job)
    shared = _runs(digits, tmp_path / "shared", 5)
    here = []
    draw = F.draw_run_figures
    monkeypatch.setattr(F, "draw_run_figures", lambda job: (here.append(job), draw(job)))
    with matplotlib.rc_context(rc):
        F.draw_many_runs_figures(shared, workers=2)
    assert 0 < len(here) < len(shared)
    for a, b in zip(alone, shared):
        for name in FIGURE_FILES:
            assert (b.workdir / f"{name}.png").read_bytes() == (
                a.workdir / f"{name}.png"
            ).read_bytes(), f"{b.workdir.name}/{name}.png"


def test_an_error_in_a_workers_figure_is_raised_here(digits, tmp_path):
    """The first run goes to the worker; its kernel does not fit the images."""
    import dataclasses

    from ae_jax.evaluation.figures import draw_many_runs_figures

    jobs = _runs(digits, tmp_path, 3)
    jobs[0] = dataclasses.replace(jobs[0], kernel=np.ones((10, 4)))
    with pytest.raises(FigureError, match="kernel has 10 rows but example_shape"):
        draw_many_runs_figures(jobs, workers=1)


@pytest.mark.parametrize("fault", ["dies", "cannot start"])
def test_a_worker_that_dies_hands_its_runs_back(digits, tmp_path, monkeypatch, fault):
    """Workers that exit at once (killed, out of memory) or cannot be started (no interpreter
    to run): every run is still drawn, here."""
    import subprocess
    import sys

    from ae_jax.evaluation import figure_worker
    from ae_jax.evaluation.figures import draw_many_runs_figures

    start = subprocess.Popen

    def dying(cmd, **kwargs):
        if fault == "cannot start":
            raise FileNotFoundError(2, "No such file or directory", cmd[0])
        return start([sys.executable, "-c", "pass"], **kwargs)

    monkeypatch.setattr(figure_worker.subprocess, "Popen", dying)
    jobs = _runs(digits, tmp_path, 4)
    draw_many_runs_figures(jobs, workers=2)
    for job in jobs:
        for name in FIGURE_FILES:
            assert _png(job.workdir / f"{name}.png").shape[2] == 4
