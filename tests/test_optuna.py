"""Hydra's Optuna sweeper with our launchers: what a job returns (``score``), the refusal of a
search scored on the test split, a tiny search end to end through the command line under
``hydra/launcher=vmap`` (each batch of trials one vectorised program), and the study report."""

import json
import logging
import math
import re
import subprocess
import sys

import matplotlib.image
import pytest
import yaml
from conftest import REPO, make_config
from omegaconf import OmegaConf
from test_vectorized import _vmap_multirun

from ae_jax.cli import check_search_score, job_score, score_of
from ae_jax.config import ConfigError, score_key, validate
from ae_jax.sweeps.collect import collect_runs, find_study
from ae_jax.sweeps.report import write_report

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='pip install -e ".[optuna]"')

OPTUNA = {
    "sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}
}
BASIC = {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}
REFUSAL = "a hyperparameter search must be scored on validation data, never on the test split"


# --- what a job returns to the sweeper -------------------------------------------------------


def test_score_auto_is_val_mse_with_a_validation_split_else_test_mse():
    assert score_key(make_config()) == "test/mse"
    assert score_key(make_config("data.validation=0.15")) == "val/mse"
    assert score_key(make_config("data.validation=0.15", "score=test/bce")) == "test/bce"
    metrics = {"test/mse": 0.5, "val/mse": 0.25}
    assert job_score(make_config(), metrics) == 0.5
    assert job_score(make_config("data.validation=0.15"), metrics) == 0.25
    assert math.isnan(job_score(make_config(), {}))  # a failed job stays NaN


def test_a_failed_trial_of_a_search_scores_inf_so_the_search_goes_on(monkeypatch):
    # Optuna 2.x cannot record NaN (the released sweeper then ends the search with a
    # traceback): under a search a failed trial is the worst value instead.
    import ae_jax.cli as cli

    monkeypatch.setattr(cli, "_in_search", lambda: True)
    assert job_score(make_config(), {}) == float("inf")
    assert job_score(make_config(), {"test/mse": 0.5}) == 0.5


def test_a_score_missing_from_the_metrics_is_one_line_naming_it_and_the_keys(caplog):
    cfg = make_config("data.validation=0.15", "score=val/msee")
    metrics = {"test/mse": 0.5, "val/mse": 0.25}
    with pytest.raises(ConfigError, match=r"score=val/msee .*: test/mse, val/mse$"):
        score_of(cfg, metrics)
    with caplog.at_level(logging.ERROR, logger="ae_jax"), pytest.raises(SystemExit) as exit_:
        job_score(cfg, metrics)
    assert exit_.value.code == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "val/msee" in line and "test/mse, val/mse" in line and "\n" not in line


@pytest.mark.parametrize("launcher", ["basic", "vmap"])
def test_a_job_whose_metrics_lack_the_score_fails_alone_and_the_multirun_goes_on(
    tmp_path, launcher
):
    # a code as wide as digits' 64 pixels writes no */mse_over_pca: the job's score exited
    # the whole multirun (status 2, no summary), and the next job never ran
    cmd = [sys.executable, "experiments/train.py", "--multirun", f"hydra/launcher={launcher}"]
    cmd += ["data.validation=0.15", "score=val/mse_over_pca", "model.latent_dim=70,8"]
    cmd += ["trainer.epochs=2", "trainer.figures=false", f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    said = "ConfigError: score=val/mse_over_pca is not a metric of this run; choose one of"
    assert f"{tmp_path / '0'}: {said}" in out, out[-3000:]
    assert "multirun " in out and "1 job(s) failed:" in out, out[-3000:]  # the summary
    assert "val/mse_over_pca" in json.loads((tmp_path / "1" / "metrics.json").read_text())


def test_a_val_score_needs_a_validation_split_and_a_bad_key_is_refused():
    with pytest.raises(ConfigError, match="score=val/mse needs a validation split"):
        validate(make_config("score=val/mse"))
    with pytest.raises(ConfigError, match="score='mse' is not valid"):
        validate(make_config("score=mse"))
    # a metric no run writes: refused before training, not after the first trial trained
    with pytest.raises(ConfigError, match=r"^score=val/msee: no run .* \(did you mean val/mse\?\)"):
        validate(make_config("data.validation=0.1", "score=val/msee"))
    validate(make_config("data.validation=0.1", "score=train/loss/kl_sparse"))
    pipeline = ("+pretrain=layerwise", "pretrain.supervised=true", "data.validation=0.1")
    for score in ("supervised/val/error_pct", "probe/error_pct", "baseline/supervised/val/loss"):
        validate(make_config(*pipeline, f"score={score}"))
    validate(make_config("model=linear", "score=test/subspace_angle_max_deg"))


@pytest.mark.parametrize(
    ("settings", "said"),
    [  # each was known from the settings, and found only after a search's first trial trained
        ((), "the supervised/ metrics come from layer-wise pretraining, which this run does"),
        (("+pretrain=layerwise",), "the supervised stage writes it; set pretrain.supervised=true"),
        (("+pretrain=layerwise", "pretrain.supervised=true", "score=probe/val/error_pct"),
         "the probe scores the validation split when it chooses its l2 among several"),
        (("+pretrain=layerwise", "pretrain.probe=false", "score=probe/error_pct"),
         "the linear probe writes it; set pretrain.probe=true"),
        (("score=val/error_pct",), "error_pct is written by the supervised stage and the probes"),
        (("score=val/subspace_angle_max_deg",), "is measured on the test split only"),
        (("score=test/subspace_angle_max_deg",), "is measured for model=linear only"),
    ],
)  # fmt: skip
def test_a_score_the_run_will_not_write_is_refused_naming_what_writes_it(settings, said):
    with pytest.raises(ConfigError, match=r"^score=\S+: this run will not write \S+: ") as err:
        validate(make_config("data.validation=0.1", "score=supervised/val/error_pct", *settings))
    assert said in str(err.value)


def test_only_a_search_scored_on_test_data_is_refused():
    search = OmegaConf.create({**OPTUNA, "mode": "MULTIRUN"})
    grid = OmegaConf.create({**BASIC, "mode": "MULTIRUN"})
    single = OmegaConf.create({**OPTUNA, "mode": "RUN"})  # one run of a search's config
    for cfg in (make_config(), make_config("data.validation=0.1", "score=test/mse")):
        with pytest.raises(ConfigError, match=REFUSAL):
            check_search_score(cfg, search)
        check_search_score(cfg, grid)  # a grid sweep may report test metrics
        check_search_score(cfg, single)
    check_search_score(make_config("data.validation=0.1"), search)  # auto: val/mse


# --- a tiny search through the command line -------------------------------------------------

TINY = (
    "+sweep=optuna_contractive",
    "hydra.sweeper.n_trials=4",
    "hydra.sweeper.n_jobs=2",
    "trainer.epochs=3",
)


def test_a_tiny_search_trains_each_batch_as_one_program_and_reports_its_study(tmp_path):
    out = _vmap_multirun(tmp_path, *TINY)
    # two batches of two trials, each batch one vectorised program
    assert out.count("vectorised sweep: 2 members in one program") == 2, out[-3000:]
    val = {}
    for trial in range(4):
        d = tmp_path / str(trial)
        status = json.loads((d / "status.json").read_text())
        assert status["status"] == "completed" and status["members"] == 2
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        assert any(o.startswith("optim.lr=") for o in overrides)
        val[trial] = json.loads((d / "metrics.json").read_text())["val/mse"]
    assert len(set(val.values())) == 4  # each trial its own run
    # what the jobs returned is each trial's val/mse: the sweeper's best is their minimum
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    best = min(val, key=val.get)
    assert results["best_value"] == val[best]
    overrides = yaml.safe_load((tmp_path / str(best) / ".hydra" / "overrides.yaml").read_text())
    for key, value in results["best_params"].items():
        assert f"{key}={value}" in overrides

    report = write_report(tmp_path)
    study = report.study
    assert study is not None and study.score == "val/mse" and study.n_jobs == 2
    assert [p.key for p in study.params] == ["optim.lr", "reg.contractive.strength"]
    assert all(p.log for p in study.params) and study.best.number == best
    text = (report.out / "study.md").read_text()
    assert f"**Best trial: #{best}**" in text and str(tmp_path / str(best)) in text
    assert "(the same trial)" in text  # agrees with optimization_results.yaml
    assert not (report.out / "table.md").exists()  # 4 one-run "levels" are no grid
    image = matplotlib.image.imread(report.out / "study.png")
    assert image.shape[1] > 2 * image.shape[0]  # the parameter panels and the trial panel
    assert (report.out / "reconstructions.png").exists()


@pytest.mark.parametrize("launcher", ["vmap", "basic"])
def test_a_search_goes_on_past_diverged_trials_and_lists_them(tmp_path, launcher):
    # SGD at rates up to 1e6 on a linear-output model: the sampler's first batch (seed 0) has
    # two trials at lr 246 and 664, whose losses overflow at once; TPE then proposes two that
    # train. A failed trial scores +inf, so Optuna records it and the search finishes (optuna
    # 2.10 cannot record the NaN of a failed run: the released sweeper then ended the whole
    # search with a traceback, as it did under the vmap launcher until its jobs said so).
    cmd = [
        sys.executable,
        "experiments/train.py",
        "--multirun",
        *TINY,
        "hydra.sweeper.sampler.n_startup_trials=2",
        "optim=sgd",
        "model.output_activation=linear",
        "model.code_activation=linear",
        "optim.lr=tag(log, interval(1e-2, 1e6))",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]  # the multirun summary's status for failed jobs
    assert "Traceback" not in out and "Values were told" not in out
    statuses = {t: json.loads((tmp_path / str(t) / "status.json").read_text()) for t in range(4)}
    failed = [t for t, st in statuses.items() if st["status"] == "failed"]
    assert failed and len(failed) < 4, statuses
    for t in failed:
        assert statuses[t]["error"].startswith("TrainingDiverged"), statuses[t]
        assert f"{tmp_path / str(t)}: TrainingDiverged" in out  # listed at the end
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    completed = {
        t: json.loads((tmp_path / str(t) / "metrics.json").read_text())["val/mse"]
        for t in statuses
        if t not in failed
    }
    assert results["best_value"] == min(completed.values())
    # the range the command line gave, not the sweep file's, is recorded and reported
    record = yaml.safe_load((tmp_path / "search.yaml").read_text())
    assert record["params"]["optim.lr"] == "tag(log, interval(1e-2, 1e6))", record
    assert record["sampler_seed"] == 0  # the sweep file's
    study = find_study(tmp_path, collect_runs(tmp_path))
    lr = next(p for p in study.params if p.key == "optim.lr")
    assert lr.describe() == "log-uniform in [0.01, 1e+06]"


def test_a_search_whose_every_trial_failed_says_the_sweepers_best_is_no_result(tmp_path):
    cmd = [sys.executable, "experiments/train.py", "--multirun", *TINY]
    cmd += ["hydra.sweeper.n_trials=2", "optim=sgd", "model.output_activation=linear"]
    cmd += ["model.code_activation=linear", "optim.lr=tag(log, interval(1e3, 1e6))"]
    proc = subprocess.run(
        [*cmd, f"hydra.sweep.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert "2 job(s) failed" in out
    line = "no trial of this search completed: the sweeper's best value (inf) and best parameters"
    assert out.count(line) == 1, out[-3000:]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_value"] == float("inf")


@pytest.mark.parametrize(
    "overrides",
    [
        ("hydra/launcher=vmap", "score=test/mse"),  # refused before the sweeper starts
        ("data.validation=0", "score=auto"),  # auto is test/mse without a validation split
        # without the start-of-multirun check, experiments/train.py refuses its first job
        ("~hydra.callbacks.search_check", "score=test/mse"),
    ],
)
def test_a_search_scored_on_test_data_is_refused_before_training(tmp_path, overrides):
    cmd = [
        sys.executable,
        "experiments/train.py",
        "--multirun",
        f"hydra.sweep.dir={tmp_path}",
        *TINY,
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    lines = [line for line in out.splitlines() if REFUSAL in line]
    assert len(lines) == 1 and "Traceback" not in out, out[-3000:]
    assert "data.validation" in lines[0] and "score=val/mse" in lines[0]
    assert "epoch 1/" not in out and not list(tmp_path.rglob("metrics.json"))  # no training


@pytest.mark.parametrize("where", ["command line", "sweep file"])
def test_a_search_range_reaching_refused_values_is_one_line_before_the_search(tmp_path, where):
    # Each end of a searched interval (each value of a choice) is validated before the sweeper
    # starts: a range that would feed the sampler refused trials is refused itself.
    options = []
    if where == "command line":
        search = [*TINY, "noise=masking", "noise.level=interval(0.5, 2.0)"]
        expected = (
            "the search over noise.level=interval(0.5, 2.0) reaches values that are refused: "
            "noise.level=2.0 is not valid; it must be a finite number in [0.0, 1.0]"
        )
    else:  # the search space of a sweep file (hydra.sweeper.params), from an added config dir
        conf = tmp_path / "conf" / "sweep"
        conf.mkdir(parents=True)
        text = (REPO / "conf" / "sweep" / "optuna_contractive.yaml").read_text()
        assert "interval(1e-5, 1e-1)" in text
        (conf / "bad_range.yaml").write_text(text.replace("1e-5, 1e-1", "-1e-3, 1e-1"))
        search = ["+sweep=bad_range", *TINY[1:]]
        options = ["--config-dir", str(tmp_path / "conf")]
        expected = (
            "the search over reg.contractive.strength=tag(log, interval(-1e-3, 1e-1)) reaches "
            "values that are refused: reg.contractive.strength=-0.001 is not valid"
        )
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "experiments/train.py", *options, "--multirun"]
    cmd.append(f"hydra.sweep.dir={sweep_dir}")
    proc = subprocess.run([*cmd, *search], cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert f"ConfigError: {expected}" in out and "Traceback" not in out, out[-3000:]
    assert "epoch 1/" not in out and not list(sweep_dir.rglob("metrics.json"))  # no training


@pytest.mark.parametrize(
    ("searched", "said"),
    [  # with a +, every trial trained at optim.lr and the study named optim.lrr a parameter;
        # without, Hydra's several lines once the study had begun
        ("+optim.lrr=interval(0.001, 0.1)", "optim.lrr is not a setting of optim; did you mean"),
        ("optim.lrr=interval(0.001, 0.1)", "optim.lrr is not a setting of optim; did you mean"),
        ("reg.l1.strength=interval(0.001, 0.1)", "reg.l1.strength sets term 'l1', which this"),
    ],
)
def test_a_searched_key_the_config_lacks_is_one_line_before_the_search(tmp_path, searched, said):
    cmd = [sys.executable, "experiments/train.py", "--multirun", f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(
        [*cmd, *TINY, searched], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert f"ConfigError: the search over {searched} cannot run: {said}" in out, out[-3000:]
    assert "Traceback" not in out and not list(tmp_path.rglob("metrics.json"))


# --- the report of a study, from files ------------------------------------------------------


def _write_trial(root, number, lr, value, failed=False):
    d = root / str(number)
    (d / ".hydra").mkdir(parents=True)
    sweeper = {
        **OPTUNA["sweeper"],
        "direction": "minimize",
        "n_trials": 6,
        "n_jobs": 3,
        "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 0},
        "params": {"optim.lr": "tag(log, interval(1e-4, 1e-1))"},
    }
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": sweeper}}))
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optim.lr={lr}", "+sweep=s"]))
    config = {"name": "s", "score": "auto", "data": {"validation": 0.1}, "optim": {"lr": lr}}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    if failed:
        status = {"status": "failed", "error": "TrainingDiverged: train/loss is nan at epoch 2"}
    else:
        status = {"status": "completed"}
        metrics = {"val/mse": value, "test/mse": 2 * value}
        (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "status.json").write_text(json.dumps(status))


def test_the_report_of_an_interrupted_study_ranks_its_trials_and_keeps_a_failed_one(tmp_path):
    values = {0: (3e-3, 0.02), 1: (1e-2, 0.004), 2: (5e-2, None), 3: (2e-2, 0.003)}
    for number, (lr, value) in values.items():
        _write_trial(tmp_path, number, lr, value, failed=value is None)
    runs = collect_runs(tmp_path)
    study = find_study(tmp_path, runs)
    assert study is not None and study.best.number == 3 and len(study.completed) == 3
    report = write_report(tmp_path, tmp_path / "out")
    text = (report.out / "study.md").read_text()
    assert "**Best trial: #3**" in text and "test MSE" in text
    assert "no optimization_results.yaml" in text  # interrupted: best taken from the runs
    assert "trial 2 (`2`): **failed**: TrainingDiverged" in text
    rows = (report.out / "study.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[4].endswith(",1")  # trial 3 marked best
    assert (report.out / "study.png").exists()
    # trial 1 trained again beside its first run (trainer.resume=false): trial 1, not "trial 4"
    (tmp_path / "1").rename(tmp_path / "1-fresh-20261207-101500")
    _write_trial(tmp_path, 1, 1e-2, 0.005)
    numbers = [t.number for t in find_study(tmp_path, collect_runs(tmp_path)).trials]
    assert numbers == [0, 1, 1, 2, 3]


def test_search_space_is_the_sweep_files_params_as_the_command_line_changed_them():
    from ae_jax.cli import search_space

    hydra_cfg = OmegaConf.create(
        {
            **OPTUNA,
            "mode": "MULTIRUN",
            "overrides": {
                "task": [
                    "optim.lr=tag(log, interval(1e-3, 1))",  # replaces the file's range
                    "reg.contractive.strength=1e-3",  # a fixed value: no longer searched
                    "+model.extra=choice(1, 2)",  # added on the command line
                    "trainer.epochs=5",
                    # a range after a fixed value: the sweeper keeps the fixed value (it was
                    # recorded and reported as searched)
                    "trainer.epochs=range(1, 4)",
                ]
            },
        }
    )
    hydra_cfg.sweeper.params = {
        "optim.lr": "tag(log, interval(1e-4, 1e-1))",
        "reg.contractive.strength": "tag(log, interval(1e-5, 1e-1))",
        "trainer.seed": "range(0, 3)",
    }
    assert search_space(hydra_cfg) == {
        "optim.lr": "tag(log, interval(1e-3, 1))",
        "trainer.seed": "range(0, 3)",
        "+model.extra": "choice(1, 2)",
    }
    hydra_cfg.sweeper = BASIC["sweeper"]
    assert search_space(hydra_cfg) == {}  # a grid sweep is no search


@pytest.mark.parametrize("recorded", [True, False])
def test_the_report_names_the_range_that_was_searched_not_the_sweep_files(tmp_path, recorded):
    # the sweep file searched optim.lr in [1e-4, 1e-1]; the command line replaced the range
    for number, lr in enumerate([0.3, 2.0, 0.5]):
        _write_trial(tmp_path, number, lr, 0.01 * (number + 1))
    if recorded:  # what the multirun writes (ae_jax.cli.record_search)
        record = "params:\n  optim.lr: tag(log, interval(0.1, 3))\nsampler_seed: 0\n"
        (tmp_path / "search.yaml").write_text(record)
    study = find_study(tmp_path, collect_runs(tmp_path))
    (lr,) = study.params
    if recorded:
        assert lr.log and (lr.low, lr.high) == (0.1, 3.0)
        assert lr.describe() == "log-uniform in [0.1, 3]"
    else:  # an older sweep: its trials lie outside the file's range, which is not claimed
        assert lr.low is None and lr.describe() == "(command line)"
    text = (write_report(tmp_path, tmp_path / "out").out / "study.md").read_text()
    assert "[0.0001, 0.1]" not in text and lr.describe() in text


def test_the_same_command_continues_a_search_given_no_seed(tmp_path):
    # TPE without a seed: the first run chooses one and records it in search.yaml; the same
    # command finds it, so the sampler proposes the same trials, whose directories hold their
    # finished runs: nothing is trained again (without the record the proposals differ and
    # every directory refuses its new trial)
    cmd = [sys.executable, "experiments/train.py", "--multirun", *TINY]
    cmd += ["hydra.sweeper.sampler.seed=null", f"hydra.sweep.dir={tmp_path}"]
    runs = []
    for _ in range(2):
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        runs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0 and "Traceback" not in runs[-1], runs[-1][-3000:]
    first, again = runs
    seed = yaml.safe_load((tmp_path / "search.yaml").read_text())["sampler_seed"]
    assert f"seed {seed}, chosen in" in first
    assert f"seed {seed}, recorded by this search's earlier run" in again
    assert first.count("epoch 1/3") == 4 and "epoch 1/3" not in again, again[-3000:]
    assert again.count("not trained again") == 4 and "4 completed" in again
    # with fewer epochs every trial is refused: the sweeper's best value is inf, and it used
    # to overwrite the search's results with it; the advice was a new hydra.run.dir
    results = (tmp_path / "optimization_results.yaml").read_bytes()
    refused = subprocess.run(
        [*cmd, "trainer.epochs=2"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    log = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "4 refused" in log, log[-3000:]
    assert "keeps the earlier search's results" in log and "Use a new hydra.sweep.dir" in log
    assert (tmp_path / "optimization_results.yaml").read_bytes() == results


@pytest.mark.parametrize("setting", ["n_trials=0", "n_jobs=0", "n_trials=-3", "n_jobs=1.5"])
def test_trial_counts_that_cannot_run_are_refused_naming_the_key(setting):
    from ae_jax.cli import check_search_settings

    key, value = setting.split("=")
    hydra_cfg = OmegaConf.create({**OPTUNA, "mode": "MULTIRUN"})
    hydra_cfg.sweeper.n_trials, hydra_cfg.sweeper.n_jobs = 16, 8
    check_search_settings(hydra_cfg)  # the committed search's counts
    hydra_cfg.sweeper[key] = float(value) if "." in value else int(value)
    with pytest.raises(ConfigError, match=rf"^hydra\.sweeper\.{key}={value} is not valid; it must"):
        check_search_settings(hydra_cfg)


@pytest.mark.parametrize("value", ["2.5", "abc", "0", "-3", "1e3"])
def test_a_trial_count_that_is_no_integer_is_refused_before_hydra_composes(value):
    # 2.5 and abc were Hydra's "could not be converted to Integer" and exit status 1
    from ae_jax.config import check_overrides

    for key in ("n_trials", "n_jobs"):
        check_overrides(["+sweep=optuna_contractive", f"hydra.sweeper.{key}=16"])
        with pytest.raises(ConfigError, match=rf"^hydra\.sweeper\.{key}={value} is not valid"):
            check_overrides(["+sweep=optuna_contractive", f"hydra.sweeper.{key}={value}"])


@pytest.mark.parametrize(
    "direction, expected",
    [
        ("up", r"^hydra\.sweeper\.direction=up is not valid; use minimize or maximize"),
        (
            ["minimize", "maximize"],
            r"^hydra\.sweeper\.direction=\['minimize', 'maximize'\] asks for 2 objectives; a "
            r"trial is scored on one metric",
        ),
    ],
)
def test_a_direction_the_search_cannot_follow_is_refused(direction, expected):
    # "up" was Optuna's traceback; two objectives failed every trial and the multirun ended 0
    from ae_jax.cli import check_search_settings

    hydra_cfg = OmegaConf.create({**OPTUNA, "mode": "MULTIRUN"})
    hydra_cfg.sweeper.n_trials, hydra_cfg.sweeper.n_jobs = 16, 8
    for fine in ("minimize", "maximize", ["maximize"]):
        hydra_cfg.sweeper.direction = fine
        check_search_settings(hydra_cfg)
    hydra_cfg.sweeper.direction = direction
    with pytest.raises(ConfigError, match=expected):
        check_search_settings(hydra_cfg)


def test_an_interval_from_high_to_low_is_refused_naming_the_order(tmp_path):
    cmd = [sys.executable, "experiments/train.py", "--multirun", f"hydra.sweep.dir={tmp_path}"]
    search = [*TINY, "optim.lr=tag(log, interval(1e-1, 1e-4))"]
    proc = subprocess.run([*cmd, *search], cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert (
        "ConfigError: the search over optim.lr=tag(log, interval(1e-1, 1e-4)) runs from 0.1 down "
        "to 0.0001; an interval goes from low to high: interval(0.0001, 0.1)"
    ) in out


@pytest.mark.parametrize(
    "arg",
    [
        "hydra.sweeper.params.optim.lr=tag(log, interval(1e-4, 1e-1))",  # Hydra: "Sweeping
        # over Hydra's configuration is not supported"
        "hydra.sweeper.params.optim.lr='tag(log, interval(1e-4, 1e-1))'",  # Hydra: "Key
        # 'optim' is not in struct"
    ],
)
def test_a_range_given_under_hydra_sweeper_params_says_how_to_give_it(arg):
    from ae_jax.config import check_overrides

    with pytest.raises(ConfigError) as err:
        check_overrides(["--multirun", "+sweep=optuna_contractive", arg], str(REPO / "conf"))
    right = "optim.lr=tag(log, interval(1e-4, 1e-1))"
    assert str(err.value) == (
        f"{arg}: a searched range is given on the command line as the key itself, in shell "
        f"quotes: '{right}'; hydra.sweeper.params holds the ranges of a sweep file"
    )
    check_overrides(["--multirun", "+sweep=optuna_contractive", right], str(REPO / "conf"))


@pytest.mark.parametrize(
    ("searched", "said"),
    [  # a float for an integer key: a warning from Hydra's callback, every check after it
        # skipped, and the first trial's composition error
        ("trainer.batch_size=tag(log, interval(16, 256))",
         "gives trainer.batch_size the value 16.0, which it cannot take (Value '16.0' of type "
         "'float' could not be converted to Integer); an interval samples real numbers: for "
         "whole numbers write int(tag(log, interval(16, 256)))"),
        # a misspelt tag searched uniformly without a word; log on a choice did nothing
        ("optim.lr=tag(logg, interval(1e-4, 1e-1))",
         "Optuna's sweeper ignores the tag 'logg' here; the one tag it reads is log"),
        ("model.latent_dim=tag(log, choice(8, 16))", "ignores the tag 'log' here"),
        # Optuna 2.10's database storage: an AssertionError traceback under SQLAlchemy 2
        ("hydra.sweeper.storage=sqlite:///study.db",
         "hydra.sweeper.storage=sqlite:///study.db cannot be used: Optuna 2.10's database"),
    ],
)  # fmt: skip
def test_a_search_the_sweeper_would_misread_is_one_line_before_it_starts(tmp_path, searched, said):
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "experiments/train.py", "--multirun", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(
        [*cmd, *TINY, searched], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    [line] = [line for line in out.splitlines() if "Error" in line]
    assert line.startswith("ConfigError: ") and said in line, out[-3000:]
    assert "Traceback" not in out and "UserWarning" not in out and not sweep_dir.exists()


def _search_config(root, *overrides: str, seed=0):
    """A search's composed config as the sweep lock sees it: the committed search's params,
    the command line's overrides and the sampler's seed."""
    params = {
        "optim.lr": "tag(log, interval(1e-4, 1e-1))",
        "reg.contractive.strength": "tag(log, interval(1e-5, 1e-1))",
    }
    sweeper = {**OPTUNA["sweeper"], "params": params, "sampler": {"seed": seed}}
    hydra = {"mode": "MULTIRUN", "sweeper": sweeper, "overrides": {"task": list(overrides)}}
    hydra["sweep"] = {"dir": str(root)}
    return OmegaConf.create({"hydra": hydra})


def test_a_search_rerun_with_other_ranges_is_refused_before_it_rewrites_the_record(tmp_path):
    # It trained every trial's composition only to be refused by the earlier trial's
    # directory, and rewrote search.yaml first: the report then gave the new ranges as those
    # of the earlier search's trials.
    from ae_jax.cli import _refuse_changed_search, record_search
    from ae_jax.training.rundir import RunDirError

    record_search(_search_config(tmp_path), tmp_path)
    record = (tmp_path / "search.yaml").read_bytes()
    changed = _search_config(tmp_path, "optim.lr=tag(log, interval(1e-3, 1e-1))")
    _refuse_changed_search(changed, tmp_path)  # no trial began here: the directory is free
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "status.json").write_text('{"status": "completed"}')
    for same in (
        _search_config(tmp_path),
        _search_config(tmp_path, "optim.lr=tag(log,interval(0.0001,0.1))", "trainer.epochs=9"),
    ):
        _refuse_changed_search(same, tmp_path)  # the same search, written otherwise: continued
    with pytest.raises(RunDirError) as err:
        _refuse_changed_search(changed, tmp_path)
    assert str(err.value).startswith(
        f"hydra.sweep.dir={tmp_path} holds the trials of another search (optim.lr: tag(log, "
        "interval(1e-4, 1e-1)) -> tag(log, interval(1e-3, 1e-1))); this one's trials would be "
        "refused in their directories. Rerun the earlier search's command to continue it"
    )
    for other, what in [
        (_search_config(tmp_path, seed=3), "(the sampler's seed: 0 -> 3)"),
        (_search_config(tmp_path, "optim.lr=0.01"), "(optim.lr: tag(log, interval(1e-4, 1e-1))"
         " -> not searched)"),
    ]:  # fmt: skip
        with pytest.raises(RunDirError, match=re.escape(what)):
            _refuse_changed_search(other, tmp_path)
    assert (tmp_path / "search.yaml").read_bytes() == record


def test_the_study_figure_of_a_search_whose_every_trial_failed_shows_no_scale(tmp_path):
    # it drew matplotlib's empty scale, -0.04 to 0.04, as if for an MSE
    from ae_jax.sweeps.plots import study_figure

    for number, lr in enumerate((0.5, 5.0, 50.0)):
        _write_trial(tmp_path, number, lr, None, failed=True)
    fig = study_figure(find_study(tmp_path, collect_runs(tmp_path)))
    assert len(fig.axes[0].get_yticks()) == 0
    said = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert said.count("no trial has a score") == 2  # the lr panel and the trial panel
    report = write_report(tmp_path, tmp_path / "out")
    assert (report.out / "study.png").exists()


def test_a_directory_of_several_searches_is_reported_as_runs_not_as_one_study(tmp_path):
    # report.py multirun/<date>/ took the trials of two searches for one study, its best
    # trial chosen across both and the sweeper's results quoted from one of them
    for sweep, lrs in (("a", (1e-3, 1e-2)), ("b", (3e-3, 3e-2))):
        root = tmp_path / sweep
        for number, lr in enumerate(lrs):
            _write_trial(root, number, lr, 0.01 * (number + 1))
        (root / ".sweep.lock").write_text("")
        assert find_study(root, collect_runs(root)) is not None  # each alone is a study
    runs = collect_runs(tmp_path)
    assert len(runs) == 4 and find_study(tmp_path, runs) is None
    report = write_report(tmp_path, tmp_path / "out")
    assert report.study is None and not (report.out / "study.md").exists()
    assert any(
        note.startswith(f"{tmp_path} holds the runs of 2 sweeps (a, b)") for note in report.notes
    )


def test_a_single_run_inside_a_search_directory_is_refused_before_hydra_makes_it(tmp_path):
    # it trained there, and the search's report took it for a trial (and perhaps the best)
    (tmp_path / "search.yaml").write_text("params:\n  optim.lr: tag(log, interval(1e-4, 1e-1))\n")
    (tmp_path / ".sweep.lock").write_text("")  # a multirun's directory (a search's)
    cmd = [sys.executable, "experiments/train.py", f"hydra.run.dir={tmp_path / '99'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    [line] = out.strip().splitlines()
    assert line == (
        f"RunDirError: hydra.run.dir={tmp_path / '99'} is inside {tmp_path}, the directory of a "
        "hyperparameter search; its report would take this run for one of the search's trials: "
        "use a run directory outside it (hydra.run.dir=...)"
    )
    assert not (tmp_path / "99").exists()


def test_a_numeric_choice_is_drawn_with_ticks_at_its_choices(tmp_path):
    # model.latent_dim=choice(8,16,32) was drawn on a plain axis ticked 10, 15, 20, ...
    from ae_jax.sweeps.plots import study_figure

    for number, (lr, k) in enumerate([(1e-3, 8), (1e-2, 32), (3e-3, 16)]):
        _write_trial(tmp_path, number, lr, 0.01 * (number + 1))
        overrides = [f"optim.lr={lr}", f"model.latent_dim={k}", "+sweep=s"]
        (tmp_path / str(number) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    params = {"optim.lr": "tag(log, interval(1e-4, 1e-1))", "model.latent_dim": "choice(8,16,32)"}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"params": params}))
    fig = study_figure(find_study(tmp_path, collect_runs(tmp_path)))
    panel = next(ax for ax in fig.axes if ax.get_xlabel().startswith("model.latent_dim"))
    assert list(panel.get_xticks()) == [8, 16, 32]
    assert [t.get_text() for t in panel.get_xticklabels()] == ["8", "16", "32"]
