"""Tests of the sweep report: collection (failed, unfinished and never-started runs kept),
swept-axis detection, mean +- std over seeds, the tables, the figures, the command line, and a
real tiny multirun of a committed sweep followed by its report."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml

from ae_jax.sweeps.collect import (
    Axis,
    Run,
    SweepDirError,
    collect_runs,
    find_run_dirs,
    load_run,
    swept_axes,
)
from ae_jax.sweeps.plots import Reference, axis_figure, reconstruction_grid, x_scale
from ae_jax.sweeps.report import main, write_report
from ae_jax.sweeps.summary import Stat, format_mean_std, present_metrics, summarize

REPO = Path(__file__).resolve().parents[1]
LATENTS = (2, 4, 8, 32)
SEEDS = (0, 1, 2)
# test/mse of each completed (latent, seed); the PCA baseline depends on the latent size only.
MSE = {
    (2, 0): 0.040,
    (2, 1): 0.050,
    (4, 0): 0.020,
    (4, 1): 0.022,
    (4, 2): 0.027,
    (8, 0): 0.010,
    (8, 1): 0.014,
}
PCA = {2: 0.060, 4: 0.045, 8: 0.025}
FAILED = (8, 2)  # status failed, no metrics, no config.yaml (as after a ConfigError)
UNFINISHED = (2, 2)  # status running forever (killed)
ERROR = "TrainingDiverged: train/loss is nan at epoch 3"


def _write_run(d: Path, latent: int, seed: int, rng: np.random.Generator) -> None:
    config = {
        "name": "sweep_latent",
        "model": {"latent_dim": latent, "depth": 2, "widths": None, "channels": [32, 64]},
        "noise": {"kind": "none", "level": 0.0},
        "trainer": {"seed": seed, "epochs": 300, "progress": seed == 0},
    }
    (d / ".hydra").mkdir(parents=True)
    overrides = [f"model.latent_dim={latent}", f"trainer.seed={seed}", "+sweep=latent"]
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if (latent, seed) == FAILED:
        status = {"status": "failed", "error": ERROR, "started": 1.0, "ended": 2.0}
    elif (latent, seed) == UNFINISHED:
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        status = {"status": "running", "started": 1.0}
    else:
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        status = {"status": "completed", "started": 1.0, "ended": 2.0}
        metrics = {
            "test/mse": MSE[latent, seed],
            "test/pca_mse": PCA[latent],
            "test/jacobian_fro": 10.0 + latent,
            "train/loss": "nan",
        }
        (d / "metrics.json").write_text(json.dumps(metrics))
        x = rng.uniform(size=(10, 8, 8, 1)).astype(np.float32)
        x = np.full_like(x, 0.5) if seed else x  # inputs are the same test examples per seed
        np.savez(
            d / "reconstructions.npz",
            input=np.linspace(0, 1, 640).reshape(10, 8, 8, 1),
            reconstruction=x,
            codes=rng.normal(size=(20, latent)),
        )
    (d / "status.json").write_text(json.dumps(status))


@pytest.fixture()
def sweep(tmp_path) -> Path:
    """A fake multirun: latent 2, 4, 8 on disk with a failed and an unfinished run; latent 32
    in the grid (multirun.yaml) but never started."""
    root = tmp_path / "multirun" / "2026-11-26" / "16-30-00_sweep_latent"
    root.mkdir(parents=True)
    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "max_batch_size": None,
                "params": {
                    "model.latent_dim": ",".join(map(str, LATENTS)),
                    "trainer.seed": ",".join(map(str, SEEDS)),
                },
            },
            "overrides": {"task": ["+sweep=latent"], "hydra": []},
        },
        "name": "sweep_latent",
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    (root / ".submitit" / "123").mkdir(parents=True)  # launcher logs: not runs
    rng = np.random.default_rng(0)
    num = 0
    for latent in LATENTS[:3]:
        for seed in SEEDS:
            _write_run(root / str(num), latent, seed, rng)
            num += 1
    return root


def test_collect_keeps_failed_unfinished_and_never_started_runs(sweep):
    runs = collect_runs(sweep)
    by_status = {
        s: sorted(
            (r.config["model.latent_dim"], r.config["trainer.seed"]) for r in runs if r.status == s
        )
        for s in ("completed", "failed", "unfinished", "not started")
    }
    assert by_status["completed"] == sorted(MSE)
    assert by_status["failed"] == [FAILED]
    assert by_status["unfinished"] == [UNFINISHED]
    assert by_status["not started"] == [(32, s) for s in SEEDS]
    failed = next(r for r in runs if r.status == "failed")
    assert failed.error == ERROR and failed.metrics == {}
    completed = next(r for r in runs if r.status == "completed")
    assert math.isnan(completed.metrics["train/loss"])  # "nan" in JSON read back as a float


def test_axes_exclude_the_seed_and_merge_keys_that_move_together(sweep):
    runs = collect_runs(sweep)
    assert swept_axes(runs) == [Axis(("model.latent_dim",))]
    assert swept_axes(runs, seed_keys=()) == [Axis(("model.latent_dim",)), Axis(("trainer.seed",))]
    # model=shallow vs mlp: depth and code activation change together -> one axis, number first.
    for r in runs:
        shallow = r.config["model.latent_dim"] == 2
        r.config["model.depth"] = 0 if shallow else 2
        r.config["model.code_activation"] = "sigmoid" if shallow else "linear"
    axes = swept_axes(runs)
    assert Axis(("model.depth", "model.code_activation")) in axes and len(axes) == 2
    # how runs were checkpointed and resumed is no axis (trainer.resume=false reruns beside
    # the earlier runs were shown as an axis "model.latent_dim / trainer.resume")
    for i, r in enumerate(runs):
        r.config["trainer.resume"] = i % 2 == 0
        r.config["trainer.checkpoint_every"] = 10 * i
    assert swept_axes(runs) == axes


def test_an_axis_of_many_keys_is_named_by_its_first_on_figures():
    # unrelated runs in one directory differ in ten keys at once: their names, joined, ran
    # across the neighbouring panels' labels
    from ae_jax.sweeps.plots import axis_label, axis_title

    keys = ("data.validation", "model.depth", "model.latent_dim", "optim.lr", "loss.kind")
    assert axis_title(Axis(keys[:2])) == "data.validation / model.depth"
    assert axis_title(Axis(keys)) == "data.validation (+4 keys that change with it)"
    assert axis_label(Axis(keys), []) == "data.validation (+4 keys that change with it)"


def test_a_config_group_swept_is_one_axis_named_by_the_group(tmp_path):
    # --multirun model=mlp,shallow: the axis is `model` with the files' names, from Hydra's
    # record of each job's choices (it was "model.depth / model.code_activation", "0, sigmoid")
    for i, (choice, depth, code) in enumerate([("mlp", 2, "linear"), ("shallow", 0, "sigmoid")]):
        d = tmp_path / str(i)
        (d / ".hydra").mkdir(parents=True)
        config = {"model": {"depth": depth, "code_activation": code}, "noise": {"level": 0.0}}
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        choices = {"model": choice, "noise": "none", "hydra/launcher": "basic", "absent": "x"}
        hydra = {"hydra": {"runtime": {"choices": choices}}}
        (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        (d / "metrics.json").write_text(json.dumps({"test/mse": 0.1 * (i + 1)}))
        (d / "status.json").write_text(json.dumps({"status": "completed"}))
    runs = collect_runs(tmp_path)
    assert swept_axes(runs) == [Axis(("model",))]
    assert [Axis(("model",)).value(r) for r in runs] == ["mlp", "shallow"]
    assert "absent" not in runs[0].config and "hydra/launcher" not in runs[0].config
    report = write_report(tmp_path, tmp_path / "out")
    assert report.axes == ["model"]
    assert "| mlp | 1/1 |" in (tmp_path / "out" / "table.md").read_text()


def test_a_top_level_value_is_no_config_group_and_decides_no_keys(tmp_path):
    """Two sweeps reported together differ in `name` (a value, not a group), in the epochs and
    in the noise: `name` was taken for a group's choice, the others folded into its axis, and
    the table bolded the sweep that trained longer without saying it had."""
    for i, (name, epochs, noise) in enumerate([("a", 5, "masking"), ("b", 3, "none")]):
        d = tmp_path / str(i)
        (d / ".hydra").mkdir(parents=True)
        config = {"name": name, "trainer": {"epochs": epochs}, "noise": {"kind": noise}}
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        (d / "metrics.json").write_text(json.dumps({"test/mse": 0.1 * (i + 1)}))
        (d / "status.json").write_text(json.dumps({"status": "completed"}))
    (axis,) = swept_axes(collect_runs(tmp_path))
    assert set(axis.keys) == {"name", "trainer.epochs", "noise.kind"}, axis


@pytest.mark.parametrize("eval_level", [None, 0.25])
def test_a_denoising_column_says_the_corruption_it_was_scored_at(tmp_path, eval_level):
    """noise.level=0.2,0.4 with noise.eval_level null scores each level at itself: the
    column bolded the lower level's error as the best, errors on different inputs."""
    for i, level in enumerate([0.2, 0.4]):
        d = tmp_path / "sweep" / str(i)
        d.mkdir(parents=True)
        noise = {"kind": "masking", "level": level, "eval_level": eval_level}
        (d / "config.yaml").write_text(yaml.safe_dump({"noise": noise}))
        metrics = {"test/mse": 0.05, "test/denoise_mse": 0.06 + 0.02 * i}
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "status.json").write_text(json.dumps({"status": "completed"}))
    write_report(tmp_path / "sweep", tmp_path / "out")
    table = (tmp_path / "out" / "table.md").read_text()
    if eval_level is None:
        assert "| denoising MSE (each row at its own noise) |" in table
        assert "**0.06**" not in table  # no best across different inputs
    else:
        assert "| denoising MSE (masking 0.25) |" in table and "**0.06**" in table
    tex = (tmp_path / "out" / "table.tex").read_text()
    assert "denoising MSE (" in tex and "One run per row.}" in tex  # no std over one seed


def test_a_config_group_of_three_choices_is_one_axis_whatever_its_files_set(tmp_path):
    """model=linear,mlp,shallow: the keys the files set split the three runs differently from
    the choice (depth 0, 2, 0; code linear, linear, sigmoid; model=linear's own optimiser), and
    each was made an axis of its own with its own figure, beside the `model` axis."""
    files = [
        ("linear", "adam_pca", {"depth": 0, "code_activation": "linear"}, 0.01),
        ("mlp", "adam", {"depth": 2, "code_activation": "linear"}, 0.001),
        ("shallow", "adam", {"depth": 0, "code_activation": "sigmoid"}, 0.001),
    ]
    for i, (choice, optim, model, lr) in enumerate(files * 2):  # two seeds each
        d = tmp_path / str(i)
        (d / ".hydra").mkdir(parents=True)
        config = {"model": model, "optim": {"lr": lr}, "trainer": {"seed": i // 3}}
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        hydra = {"hydra": {"runtime": {"choices": {"model": choice, "optim": optim}}}}
        (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        (d / "metrics.json").write_text(json.dumps({"test/mse": 0.1 * (i % 3 + 1)}))
        (d / "status.json").write_text(json.dumps({"status": "completed"}))
    assert swept_axes(collect_runs(tmp_path)) == [Axis(("model",))]
    report = write_report(tmp_path, tmp_path / "out")
    assert report.axes == ["model"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["model.png"]


def test_means_and_sample_stds_over_seeds_in_the_csv_table(sweep, tmp_path):
    report = write_report(sweep, tmp_path / "out")
    assert report.axes == ["model.latent_dim"]
    assert report.metrics == ["test/mse", "test/pca_mse", "test/jacobian_fro"]
    assert report.counts == {"completed": 7, "failed": 1, "unfinished": 1, "not started": 3}
    with open(tmp_path / "out" / "table.csv") as f:
        rows = {int(r["model.latent_dim"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == list(LATENTS)
    for latent in PCA:
        values = [v for (k, _), v in MSE.items() if k == latent]
        r = rows[latent]
        assert float(r["test/mse/mean"]) == pytest.approx(np.mean(values))
        assert float(r["test/mse/std"]) == pytest.approx(np.std(values, ddof=1))
        assert int(r["test/mse/n"]) == len(values)
        assert float(r["test/pca_mse/mean"]) == pytest.approx(PCA[latent])
    assert float(rows[4]["test/mse/std"]) == pytest.approx(math.sqrt(13e-6))  # by hand
    assert (rows[8]["n_failed"], rows[2]["n_unfinished"], rows[32]["n_not_started"]) == (
        "1",
        "1",
        "3",
    )
    assert ERROR in rows[8]["errors"] and rows[32]["test/mse/n"] == "0"


def test_a_run_that_did_not_finish_is_told_apart_by_its_lock_and_status(tmp_path):
    """status.json says running: the pid its lock records is alive, gone (killed), or on
    another host; a run stopped by SIGTERM or Ctrl-C (checkpointed) is unfinished, not failed
    ('unknown status preempted' before)."""
    import os
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cases = {
        "alive": ({"status": "running"}, f"pid {os.getpid()} on {socket.gethostname()}\n"),
        "killed": ({"status": "running"}, f"pid {dead.pid} on {socket.gethostname()}\n"),
        "elsewhere": ({"status": "running"}, "pid 7 on another-host.example\n"),
        "no-lock": ({"status": "running"}, None),
        "preempted": (
            {"status": "preempted", "message": "SIGTERM: saved epoch 3/9 to x; run the same "
             "command again to resume"},
            None,
        ),
        "interrupted": ({"status": "interrupted", "message": "Ctrl-C"}, None),
    }  # fmt: skip
    for name, (status, lock) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"model": {"latent_dim": 2}}))
        (d / "status.json").write_text(json.dumps(status))
        if lock is not None:
            (d / ".lock").write_text(lock)
    said = {r.path.name: (r.status, r.error) for r in collect_runs(tmp_path)}
    assert all(status == "unfinished" for status, _ in said.values()), said
    assert said["alive"][1] == f"still running (pid {os.getpid()})"
    assert said["killed"][1].startswith(f"stopped without a word (its process, pid {dead.pid}")
    assert "the same command resumes it" in said["killed"][1]
    assert "pid 7 on another-host.example (cannot be checked from here)" in said["elsewhere"][1]
    assert "no process is recorded" in said["no-lock"][1]
    assert said["preempted"][1] == (
        "preempted: SIGTERM: saved epoch 3/9 to x; run the same command again to resume"
    )
    assert said["interrupted"][1] == "interrupted: Ctrl-C; the same command resumes it"


def test_markdown_and_latex_show_failures_and_the_best_row(sweep, tmp_path):
    write_report(sweep, tmp_path / "out")
    md = (tmp_path / "out" / "table.md").read_text()
    header, _, *lines = md.splitlines()
    assert "AE test MSE" in header and "PCA test MSE" in header
    row = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert "| 3/3 |" in row["4"] and "0.0230 ± 0.0036" in row["4"]
    assert "2/3" in row["8"] and "1 failed" in row["8"]
    assert "1 unfinished" in row["2"] and "3 not started" in row["32"]
    assert "**0.0120 ± 0.0028**" in row["8"]  # lowest mean test MSE in bold
    assert ERROR in md and "status.json says running" in md  # every error listed below
    tex = (tmp_path / "out" / "table.tex").read_text()
    assert r"model.latent\_dim" in tex and r"$0.0230 \pm 0.0036$" in tex
    assert r"Mean $\pm$ sample std over seeds.}" in tex
    assert tex.count(r"\\") == 1 + len(LATENTS) and r"\bottomrule" in tex
    assert "- `8` (model.latent_dim=8): **failed**: " + ERROR in md  # relative to the sweep
    assert "`job model.latent_dim=32 trainer.seed=0 +sweep=latent`" in md
    runs = list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))
    assert [r["run"] for r in runs[:3]] == ["0", "1", "2"]
    assert len(runs) == 12 and {r["status"] for r in runs} == {
        "completed",
        "failed",
        "unfinished",
        "not started",
    }


def test_axis_figure_has_error_bars_pca_baseline_log_x_and_failure_marks(sweep):
    runs = collect_runs(sweep)
    axes = swept_axes(runs)
    metrics = present_metrics(runs)
    rows = summarize(runs, axes, metrics)
    fig = axis_figure(rows, axes, 0, metrics, title="sweep_latent")
    panels = fig.get_axes()
    assert len(panels) == 2  # test/mse (with PCA inside) and test/jacobian_fro
    mse = panels[0]
    assert mse.get_xscale() == "log"
    dashed = [ln for ln in mse.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == pytest.approx(
        [PCA[k] for k in (2, 4, 8)]
    )
    assert len(mse.containers) == 1  # one errorbar line: mean +- std
    caps = mse.containers[0].lines[2][0].get_segments()  # the error bars, one per x
    assert caps[1][:, 1] == pytest.approx(0.023 + np.array([-1, 1]) * math.sqrt(13e-6))
    crosses = [ln for ln in mse.get_lines() if ln.get_marker() == "x"]
    assert list(crosses[0].get_xdata()) == [2, 8, 32]  # rows with runs that did not complete
    # every completed seed of a row that averages several, as a point behind the mean
    (seeds,) = mse.collections[-1:]
    assert sorted(map(tuple, seeds.get_offsets().tolist())) == sorted(
        (latent, mse_) for (latent, _), mse_ in MSE.items()
    )
    assert "each seed" in [t.get_text() for t in mse.get_legend().get_texts()]
    assert "sweep_latent" in fig._suptitle.get_text()
    assert mse.get_xlabel().startswith("model.latent_dim") and "MSE" in mse.get_ylabel()


def test_reconstruction_grid_has_the_input_row_then_one_row_per_value(sweep):
    runs = collect_runs(sweep)
    axes = swept_axes(runs)
    fig = reconstruction_grid(summarize(runs, axes, ["test/mse"]), axes, title="t")
    labels = [ax.get_ylabel() for ax in fig.get_axes() if ax.get_ylabel()]
    assert labels == ["input", "latent_dim=2", "latent_dim=4", "latent_dim=8"]
    # The lowest seed's reconstruction is shown (seed 0 saved noise, the others a flat 0.5).
    strip = fig.get_axes()[1].get_images()[0].get_array().filled(np.nan)  # latent_dim=2's row
    assert np.nanstd(strip) > 0.1


def test_crossed_sweep_draws_a_line_per_other_value_and_one_shared_pca_line(tmp_path):
    runs = []
    for level in (0.0, 0.25, 0.5):
        for strength in (0.0, 0.001, 0.01):
            for seed in (0, 1):
                config = {
                    "noise.kind": "masking",
                    "noise.level": level,
                    "reg.contractive.strength": strength,
                    "trainer.seed": seed,
                }
                mse = 0.01 + level * 0.02 + strength + seed * 1e-4
                runs.append(
                    Run(
                        tmp_path,
                        "completed",
                        None,
                        config,
                        {"test/mse": mse, "test/pca_mse": 0.0026},
                    )
                )
    axes = swept_axes(runs)
    assert [a.name for a in axes] == ["noise.level", "reg.contractive.strength"]
    metrics = present_metrics(runs)
    rows = summarize(runs, axes, metrics)
    assert len(rows) == 9 and all(r.stats["test/mse"].n == 2 for r in rows)
    fig = axis_figure(rows, axes, 1, metrics)
    (ax,) = fig.get_axes()
    assert ax.get_xscale() == "symlog" and len(ax.containers) == 3  # one line per noise level
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert legend == {"level=0", "level=0.25", "level=0.5", "PCA, same k"}  # one PCA line
    assert ax.get_xlabel() == "reg.contractive.strength: contractive strength λ"
    assert (
        "noise.level: masking noise"
        in axis_figure(rows, axes, 0, metrics).get_axes()[0].get_xlabel()
    )


def test_runs_that_form_no_grid_are_drawn_as_points_with_short_labels(tmp_path):
    """Unrelated runs gathered in one directory (outputs/) vary in many keys at once: each
    axis figure draws one point per row with one legend entry, not a line and an entry naming
    every other key per row, and the reconstruction grid is capped and names its rows by their
    run directories."""
    rng = np.random.default_rng(0)
    runs = []
    for i in range(30):  # every run differs from the others in five keys
        d = tmp_path / f"run{i:02d}"
        d.mkdir()
        np.savez(
            d / "reconstructions.npz",
            input=np.linspace(0, 1, 640).reshape(10, 8, 8, 1),
            reconstruction=rng.uniform(size=(10, 8, 8, 1)),
        )
        config = {
            "model.latent_dim": 2 + i % 7,
            "noise.level": (i % 5) / 10,
            "optim.lr": 10.0 ** -(1 + i % 3),
            "data.path": f"/data/experiment_tables/table_{i % 4}.csv",
            "trainer.epochs": 10 + i,
            "trainer.seed": 0,
        }
        metrics = {"test/mse": 0.01 + i * 1e-3, "test/pca_mse": 0.02}
        runs.append(Run(d, "completed", None, config, metrics))
    axes = swept_axes(runs)
    assert len(axes) == 5
    metrics = present_metrics(runs)
    rows = summarize(runs, axes, metrics)
    fig = axis_figure(rows, axes, [a.name for a in axes].index("noise.level"), metrics)
    (ax,) = fig.get_axes()
    # all 30 rows in one series of points (one seed each: no error bars)
    (points,) = [line for line in ax.lines if line.get_marker() == "o"]
    assert points.get_linestyle() == "None" and len(points.get_xdata()) == 30
    assert not ax.containers  # no error bars (whose caps the legend showed) without a spread
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 2 and "PCA, same k" in legend
    assert max(map(len, legend)) < 60
    grid = reconstruction_grid(rows, axes, title="outputs")
    labels = [a.get_ylabel() for a in grid.get_axes() if a.get_ylabel()]
    assert len(labels) == 1 + 12 and labels[1].startswith("run")  # the input, then 12 rows
    assert "the first 12 of 30 rows" in grid._suptitle.get_text()


def test_x_scale_rules():
    assert x_scale([2, 4, 8, 16, 32]) == "log"
    assert x_scale([0, 1e-4, 1e-3, 1e-2, 1e-1]) == "symlog"
    assert x_scale([0, 0.001, 0.01]) == "symlog"  # exactly one decade, and 0
    assert x_scale([0, 0.1, 0.25, 0.4, 0.5]) == "linear"
    assert x_scale([1, 2, 3]) == "linear"
    # a doubling grid is log-spaced whatever its span (2..16 was linear, 2..32 log)
    assert x_scale([2, 4, 8, 16]) == "log" and x_scale([4, 8]) == "linear"
    assert x_scale(["masking", "gaussian"]) == "category"


def test_mean_std_formatting():
    assert format_mean_std(Stat(0.023, math.sqrt(13e-6), 3)) == "0.0230 ± 0.0036"
    assert format_mean_std(Stat(15.849, 0.5, 3)) == "15.85 ± 0.50"
    assert format_mean_std(Stat(0.0121275, math.nan, 1)) == "0.01213"
    assert format_mean_std(Stat(1.61, 0.0, 3)) == "1.61 ± 0"  # three seeds that agree
    assert format_mean_std(Stat(math.nan, math.nan, 0)) == "—"
    from ae_jax.sweeps.summary import format_value

    assert [format_value(v) for v in (1e6, 1e-5, 0.25, 3e-4, 2.5e10)] == [
        "1e6", "1e-5", "0.25", "0.0003", "2.5e10"
    ]  # fmt: skip
    # a saturated run's error in scientific notation (it was 62794409984 ± 5128161936)
    assert format_mean_std(Stat(62794409984.0, 5128161936.0, 3)) == "6.28e+10 ± 5.1e+09"


def test_a_job_holding_member_runs_is_their_container(tmp_path):
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / "pretrain" / "layer1").mkdir(parents=True)  # a run's own subfolders stay inside it
    (job / "pretrain" / "layer1" / "history.csv").write_text("epoch\n1\n")
    assert find_run_dirs(tmp_path) == [job]
    for member in ("member_0", "member_1"):  # e.g. one job training several sweep members
        (job / member).mkdir()
        (job / member / "config.yaml").write_text("trainer: {seed: 0}\n")
    assert find_run_dirs(tmp_path) == [job / "member_0", job / "member_1"]


def test_broken_files_become_errors_not_crashes(tmp_path):
    run = tmp_path / "0"
    run.mkdir()
    (run / "config.yaml").write_text("trainer: {seed: 0}\n")
    (run / "status.json").write_text('{"status": "completed"}')
    (run / "metrics.json").write_text('{"test/mse": 0.0')  # cut off mid-write
    loaded = load_run(run)
    assert loaded.status == "failed" and "unreadable metrics.json" in loaded.error


def test_command_line_writes_the_files_and_reports_counts(sweep, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(sweep), "--out", str(out), "--metric", "test/mse"]) == 0
    printed = capsys.readouterr().out
    assert "7 completed, 1 failed, 1 unfinished, 3 not started" in printed
    names = {p.name for p in out.iterdir()}
    assert {
        "table.md",
        "table.csv",
        "table.tex",
        "runs.csv",
        "report.md",
        "model.latent_dim.png",
        "reconstructions.png",
    } <= names
    png = matplotlib.image.imread(out / "model.latent_dim.png")
    assert png.shape[1] > 600 and png[..., :3].std() > 0.05  # ~150 dpi, not blank
    report_md = (out / "report.md").read_text()
    assert "](model.latent_dim.png)" in report_md and "PCA test MSE" in report_md
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a misspelt metric: one line naming it and the metrics the runs have, nothing written
    assert main([str(sweep), "--out", str(tmp_path / "typo"), "--metric", "test/mes"]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith("error: --metric test/mes: no completed run")
    assert "test/mse" in printed and len(printed.splitlines()) == 1
    assert not (tmp_path / "typo").exists()
    # beside one that exists it was dropped without a word, the table a column short
    assert (
        main(
            [
                str(sweep),
                "--out",
                str(tmp_path / "typo"),
                "--metric",
                "test/mse",
                "test/jacobain_fro",
            ]
        )
        == 2
    )
    printed = capsys.readouterr().err.strip()
    assert (
        printed.startswith("error: --metric test/jacobain_fro: no completed run under ")
        and "(did you mean test/jacobian_fro?)" in printed
    )
    assert not (tmp_path / "typo").exists()
    # an --out that cannot be made (under a file): one line naming it, no traceback
    (tmp_path / "a_file").write_text("")
    assert main([str(sweep), "--out", str(tmp_path / "a_file" / "report")]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed == (
        f"error: the report's directory {tmp_path / 'a_file' / 'report'} cannot be written "
        "(Not a directory); choose a writable --out"
    )


def test_published_numbers_are_marked_on_their_axis_and_listed(
    sweep, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ref"
    refs = [
        ["--reference", "test/mse", "model.latent_dim=4", "0.02", "paper, k=4"],
        ["--reference", "test/mse", "model.latent_dim=64", "0.01", "paper, k=64"],  # no such k
    ]
    assert main([str(sweep), "--out", str(out), "--metric", "test/mse", *sum(refs, [])]) == 0
    report_md = (out / "report.md").read_text()
    assert "★ paper, k=4: test/mse = 0.02 at model.latent_dim = 4\n" in report_md
    assert "◆ paper, k=64: test/mse = 0.01 at model.latent_dim = 64 (not drawn" in report_md
    # a committed report names its sweep relative to the working directory, not by /tmp/...
    assert "`multirun/2026-11-26/16-30-00_sweep_latent`: 12 runs" in report_md
    runs = collect_runs(sweep)
    axes = swept_axes(runs)
    rows = summarize(runs, axes, ["test/mse"])
    ref = Reference.parse("test/mse", "model.latent_dim=4", "0.02", "paper, k=4")
    other = Reference.parse("test/mse", "model.latent_dim=8", "0.015", "another paper, k=8")
    (panel,) = axis_figure(rows, axes, 0, ["test/mse"], references=(ref, other)).get_axes()
    (star,) = [ln for ln in panel.get_lines() if ln.get_marker() == "*"]
    assert list(star.get_xdata()) == [4] and list(star.get_ydata()) == [0.02]
    assert star.get_label() == "paper, k=4"
    (diamond,) = [ln for ln in panel.get_lines() if ln.get_marker() == "D"]  # told apart
    assert list(diamond.get_xdata()) == [8] and diamond.get_label() == "another paper, k=8"
    assert main([str(sweep), "--reference", "test/mse", "latent=4", "x", "p"]) == 2
    assert "'x' must be a number" in capsys.readouterr().err
    # the reference at fault is the one quoted (it was the first given), on stderr
    good, bad = ("test/mse", "model.latent_dim=4", "0.02", "p"), ("test/mse", "k=4", "xx", "q")
    assert main([str(sweep), "--reference", *good, "--reference", *bad]) == 2
    said = capsys.readouterr()
    assert said.err.startswith("error: --reference test/mse k=4 xx q: ") and not said.out
    # one the sweep cannot draw (no such axis) is said on the console, not only in report.md
    out = tmp_path / "unknown_ref"
    assert (
        main([str(sweep), "--out", str(out), "--reference", "test/mse", "bogus=1", "1", "b"]) == 0
    )
    assert "note: --reference test/mse bogus=1: not drawn, the sweep has no such metric or a" in (
        capsys.readouterr().out
    )


@pytest.mark.slow
def test_a_real_multirun_of_a_committed_sweep_and_its_report(tmp_path):
    """The committed latent sweep shrunk to 2 sizes x 2 seeds x 2 epochs, then reported."""
    sweep_dir = tmp_path / "mr"
    cmd = [
        sys.executable,
        "experiments/train.py",
        "--multirun",
        "+sweep=latent",
        "model.latent_dim=2,4",
        "trainer.seed=0,1",
        "trainer.epochs=2",
        "trainer.devices=1",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = write_report(sweep_dir)
    # The command line's latent_dim=2,4 replaced the file's 2..32: 4 jobs expected, 4 ran.
    assert report.counts == {"completed": 4, "failed": 0, "unfinished": 0, "not started": 0}
    assert report.axes == ["model.latent_dim"] and report.title == "sweep_latent"
    with open(sweep_dir / "report" / "table.csv") as f:
        rows = {int(r["model.latent_dim"]): r for r in csv.DictReader(f)}
    for latent in (2, 4):
        values = [
            json.loads((sweep_dir / str(n) / "metrics.json").read_text())["test/mse"]
            for n in range(4)
            if yaml.safe_load((sweep_dir / str(n) / "config.yaml").read_text())["model"][
                "latent_dim"
            ]
            == latent
        ]
        assert len(values) == 2
        assert float(rows[latent]["test/mse/mean"]) == pytest.approx(np.mean(values))
        assert float(rows[latent]["test/mse/std"]) == pytest.approx(np.std(values, ddof=1))
    assert float(rows[4]["test/pca_mse/mean"]) < float(rows[2]["test/pca_mse/mean"])
    assert "not completed" not in (sweep_dir / "report" / "table.md").read_text()
    assert (sweep_dir / "report" / "model.latent_dim.png").stat().st_size > 10_000
    assert (sweep_dir / "report" / "reconstructions.png").stat().st_size > 10_000


def test_a_report_that_fails_part_way_leaves_the_earlier_one_as_it_was(
    sweep, tmp_path, capsys, monkeypatch
):
    import errno

    import ae_jax.sweeps.report as report_module

    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--metric", "test/mse"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    save = report_module.save

    def full_disk_at_the_figure(fig, path):
        if path.name == "model.latent_dim.png":  # the tables are written by then
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save(fig, path)

    monkeypatch.setattr(report_module, "save", full_disk_at_the_figure)
    assert main([str(sweep), "--out", str(out)]) == 2  # another report: every metric
    printed = capsys.readouterr().err.strip()
    assert printed == (
        f"error: {out / 'model.latent_dim.png'} cannot be written (No space left on device); "
        "choose a writable --out"
    )
    # the earlier report, every file as it was: no table of the failed one beside its figures
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("params", [None, {}])
def test_a_grid_given_only_on_the_command_line_is_expanded(tmp_path, params):
    # Hydra writes `params: null` when the grid is all on the command line; the expansion used
    # to raise there (OmegaConf.to_container of a plain {}), and the report then listed no job
    # as not started: a killed sweep's missing jobs disappeared from its table.
    from ae_jax.sweeps.collect import expected_jobs

    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "max_batch_size": None,
                "params": params,
            },
            "overrides": {"task": ["optim.lr=0.001,0.01", "trainer.seed=0,1"], "hydra": []},
        }
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    assert expected_jobs(tmp_path / "multirun.yaml") == [
        ("optim.lr=0.001", "trainer.seed=0"),
        ("optim.lr=0.001", "trainer.seed=1"),
        ("optim.lr=0.01", "trainer.seed=0"),
        ("optim.lr=0.01", "trainer.seed=1"),
    ]
    (tmp_path / "0").mkdir()  # one job ran; the three others never started
    _write_run(tmp_path / "0", 8, 0, np.random.default_rng(0))
    job = ["optim.lr=0.001", "trainer.seed=0"]  # what Hydra records: the job's own overrides
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(job))
    runs = collect_runs(tmp_path)
    assert sorted(r.status for r in runs) == ["completed"] + ["not started"] * 3


def test_runs_on_different_datasets_are_said_to_be_so_and_no_row_is_best(tmp_path):
    # the table bolded a tabular run's MSE as the best over a digits run's
    for i, (name, mse) in enumerate([("digits", 0.15), ("tab", 0.08)]):
        d = tmp_path / str(i)
        d.mkdir()
        config = {"data": {"source": "array", "name": name}, "model": {"depth": 2 - i}}
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        (d / "metrics.json").write_text(json.dumps({"test/mse": mse}))
        (d / "status.json").write_text(json.dumps({"status": "completed"}))
    report = write_report(tmp_path, tmp_path / "out")
    assert any("the runs are on 2 datasets (digits, tab)" in n for n in report.notes)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "0.08" in table and "**" not in table


@pytest.mark.parametrize("done", [0, 2])
def test_a_sweep_stopped_early_keeps_its_axis_and_makes_up_no_dataset_or_repeat(tmp_path, done):
    # A sweep stopped by Ctrl-C in its first job (done=0) was reported with "axes: none", "on
    # 2 datasets (digits, None)" and "3 runs share their seeds": the jobs not started, which
    # know only their overrides, counted as a dataset None and as repeats of one seed.
    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "max_batch_size": None,
                "params": None,
            },
            "overrides": {"task": ["model.latent_dim=4,8,16", "trainer.seed=0,1"], "hydra": []},
        }
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    jobs = [(latent, seed) for latent in (4, 8, 16) for seed in (0, 1)]
    for i, (latent, seed) in enumerate(jobs[: done + 1]):
        d = tmp_path / str(i)
        (d / ".hydra").mkdir(parents=True)
        job = [f"model.latent_dim={latent}", f"trainer.seed={seed}"]
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(job))
        config = {
            "data": {"source": "digits", "name": "digits", "path": None},
            "model": {"latent_dim": latent},
            "trainer": {"seed": seed, "epochs": 30},
        }
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        if i < done:
            (d / "metrics.json").write_text(json.dumps({"test/mse": 0.1 / latent + seed / 1e3}))
            (d / "status.json").write_text(json.dumps({"status": "completed"}))
        else:
            (d / "status.json").write_text(json.dumps({"status": "interrupted"}))
    report = write_report(tmp_path, tmp_path / "out")
    assert report.axes == ["model.latent_dim"]
    assert report.counts["not started"] == 5 - done
    assert not any("datasets" in n or "share their seeds" in n for n in report.notes), report.notes
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| 16 | 0/2 | " in table and "2 not started |" in table
    if done:  # the one row with completed runs is the best
        assert "**0.02550 ± 0.00071**" in table, table


@pytest.mark.parametrize(
    ("values", "shown"),
    [  # files by their names; long names that still crowd the panel are tilted
        (
            [f"/home/researcher/projects/tables/train_{n}.csv" for n in ("small", "mid", "large")],
            ["train_small.csv", "train_mid.csv", "train_large.csv"],
        ),
        (  # what differs, the shared parts elided
            [f"preprocessing_variant_{n}_with_whitening" for n in ("alpha", "beta", "gamma")],
            ["…alpha…", "…beta…", "…gamma…"],
        ),
        (  # nothing shared, too many to stand side by side: tilted
            ["solar_irradiance", "offshore_wind_speed", "tidal_range_m", "hydro_flow_rate"],
            ["solar_irradiance", "offshore_wind_speed", "tidal_range_m", "hydro_flow_rate"],
        ),
    ],
)
def test_long_category_labels_of_a_figure_do_not_overlap(tmp_path, values, shown):
    # A sweep over data files labelled each tick with its whole path, written over each other.
    runs = []
    for i, value in enumerate(values * 2):
        d = tmp_path / str(i)
        d.mkdir()
        config = {"data.path": value, "trainer.seed": i // len(values)}
        runs.append(Run(d, "completed", None, config, {"test/mse": 0.01 + i * 1e-3}))
    axes = swept_axes(runs)
    rows = summarize(runs, axes, present_metrics(runs))
    fig = axis_figure(rows, axes, [a.name for a in axes].index("data.path"), ["test/mse"])
    fig.draw_without_rendering()
    (ax,) = fig.get_axes()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert sorted(t.get_text() for t in labels) == sorted(shown)
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
    assert all(b.width > 0 for b in boxes)
    angle = labels[0].get_rotation()
    if angle == 0:  # side by side
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    else:  # parallel tilted lines: as far apart, across them, as a line is high
        ticks = sorted(ax.transData.transform([(x, 0) for x in ax.get_xticks()])[:, 0])
        height = labels[0].get_fontsize() * fig.dpi / 72
        gap = min(b - a for a, b in zip(ticks, ticks[1:])) * math.sin(math.radians(angle))
        assert gap >= height


def test_a_misspelt_seed_key_is_refused(tmp_path):
    # --seed-key trainer.sed was accepted: trainer.seed then became an axis of the report
    for i in range(4):
        d = tmp_path / str(i)
        d.mkdir()
        config = {"noise.level": (i % 2) / 10, "trainer.seed": i // 2}
        runs = Run(d, "completed", None, config, {"test/mse": 0.01})
        (d / "metrics.json").write_text(json.dumps(runs.metrics))
        (d / "config.yaml").write_text(
            yaml.safe_dump({"noise": {"level": (i % 2) / 10}, "trainer": {"seed": i // 2}})
        )
        (d / "status.json").write_text(json.dumps({"status": "completed"}))
    said = r"--seed-key trainer.sed: .*did you mean trainer.seed\?"
    with pytest.raises(SweepDirError, match=said):
        write_report(tmp_path, seed_keys=("trainer.sed",))
    assert not (tmp_path / "report").exists()
    assert write_report(tmp_path, seed_keys=("trainer.seed",)).axes == ["noise.level"]


def test_a_supervised_sweep_shows_its_error_ties_are_not_best_and_repeats_are_said(tmp_path):
    """A sweep over pretrain.supervised_lr showed only the autoencoder's metrics (the same in
    every row, one of the tied values in bold); a sweep that ran one config twice called the
    spread of its repeats a spread over seeds."""
    rows = [(1e-3, 0, 1.9), (3e-3, 0, 1.7), (3e-3, 0, 1.7)]  # the last: a repeat
    for i, (lr, seed, error) in enumerate(rows):
        d = tmp_path / str(i)
        d.mkdir()
        config = {"pretrain": {"supervised_lr": lr}, "trainer": {"seed": seed}}
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        metrics = {"test/mse": 0.075, "supervised/test/error_pct": error}
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "status.json").write_text(json.dumps({"status": "completed"}))
    report = write_report(tmp_path, tmp_path / "out")
    assert report.metrics[0] == "supervised/test/error_pct" and "test/mse" in report.metrics
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("**") == 2 and "**1.7" in table  # the error's best; no tied mse in bold
    assert report.notes == [
        "2 runs at pretrain.supervised_lr=0.003 share their seeds: they repeat one run, and "
        "their spread is not over seeds"
    ], report.notes


def test_hydras_record_of_a_run_is_no_run_and_an_empty_metrics_file_is_named(sweep):
    # report.py <run>/.hydra reported a phantom run that "never got far" and wrote its report
    # inside .hydra; a completed run whose metrics.json holds {} was said to have none
    run = next(p for p in sorted(sweep.iterdir()) if (p / "metrics.json").is_file())
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text("model:\n  latent_dim: 2\n")
    with pytest.raises(SweepDirError, match=r"is Hydra's record of the run in .*: give that"):
        collect_runs(run / ".hydra")
    (run / "metrics.json").write_text("{}")
    (run / "status.json").write_text(json.dumps({"status": "completed"}))
    loaded = load_run(run)
    assert loaded.status == "failed"
    assert loaded.error == "status completed but metrics.json holds no metric"
