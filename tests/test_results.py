"""The published numbers (results/) agree with themselves and with the committed configs.

A reproduction's config can change after its numbers were published (a learning rate chosen
later on validation, a shared recipe edited for another row). Then results/ no longer says what
the documented command computes. These tests compose every published experiment's command, as
scripts/reproduce.py runs it, and compare it with the config.yaml published beside its numbers,
by the rule the script publishes by.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import yaml
from conftest import REPO

RESULTS = REPO / "results"


def _reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module
    spec.loader.exec_module(module)
    return module


REPRODUCE = _reproduce()
REPRODUCTIONS = REPRODUCE.REPRODUCTIONS


def _published_runs():
    """(experiment, its reproduction's name, the run directory whose command made it) for
    every run published as one."""
    for name, r in REPRODUCTIONS.items():
        for sub, experiment in r.runs.items():
            yield pytest.param(experiment, name, sub, id=experiment)
        for experiment, (_, candidates) in r.select.items():
            yield pytest.param(experiment, name, candidates[0], id=experiment)


def test_summary_rows_are_the_published_metrics():
    rows = json.loads((RESULTS / "summary.json").read_text())
    assert rows, "results/summary.json is empty"
    for row in rows:
        metrics = json.loads((RESULTS / row["experiment"] / "metrics.json").read_text())
        assert metrics[row["metric"]] == row["ours"], row
        assert (RESULTS / row["experiment"] / "config.yaml").is_file(), row["experiment"]


@pytest.mark.parametrize(("experiment", "name", "sub"), list(_published_runs()))
def test_published_config_is_what_the_committed_command_composes(hydra_conf, experiment, name, sub):
    """The rule scripts/reproduce.py publishes by (``differences``: the run directory's own
    rule, with the epochs exact): the published run is the one its command makes now."""
    path = RESULTS / experiment / "config.yaml"
    assert path.is_file(), f"{experiment} is a reproduction but has no published config.yaml"
    differ = REPRODUCE.differences(name, sub, yaml.safe_load(path.read_text()))
    assert not differ, (
        f"results/{experiment} was made with settings its command no longer composes "
        f"(published -> now): {differ}; republish it (scripts/reproduce.py) or pin them"
    )


def test_a_run_of_another_config_is_not_published(hydra_conf, tmp_path, monkeypatch):
    """A finished run whose config its command no longer composes (the experiment changed;
    the command refused the directory) is named and left out; results/ keeps what it had."""
    name, published = "hinton2006_mnist_modern", RESULTS / "hinton2006_mnist_modern"
    monkeypatch.setattr(REPRODUCE, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(REPRODUCE, "RESULTS", tmp_path / "results")
    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    for f in ("config.yaml", "metrics.json"):
        (run / f).write_text((published / f).read_text())
    (run / "status.json").write_text(json.dumps({"status": "completed"}))
    skipped: list[str] = []
    assert REPRODUCE.publish(name, skipped) == [name] and not skipped  # the command's run

    old = yaml.safe_load((published / "config.yaml").read_text())
    old["optim"]["weight_decay"] = 0.02
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    (run / "metrics.json").write_text('{"test/mse": 1.0}')
    assert REPRODUCE.publish(name, skipped) == []
    assert len(skipped) == 1 and f"{run} finished with another config" in skipped[0]
    assert "optim.weight_decay: 0.02 -> 0.1" in skipped[0], skipped
    kept = json.loads((tmp_path / "results" / name / "metrics.json").read_text())
    assert kept == json.loads((published / "metrics.json").read_text())


def test_a_default_that_neither_run_reads_does_not_unpublish_it():
    # pretrain.supervised_lr's default moved (1e-4 -> 1e-3): every published run without a
    # supervised stage was said to be made "with settings its command no longer composes"
    from ae_jax.training.rundir import read_differences

    def cfg(enabled: bool, supervised: bool, lr: float, layer_lr: float = 0.1) -> dict:
        pretrain = {"enabled": enabled, "supervised": supervised, "supervised_lr": lr}
        return {"pretrain": {**pretrain, "layer_lr": layer_lr}, "optim": {"lr": 0.001}}

    lr = ["pretrain.supervised_lr: 0.0001 -> 0.001"]
    assert read_differences(cfg(False, False, 1e-4), cfg(False, False, 1e-3), lr) == []
    assert read_differences(cfg(True, False, 1e-4), cfg(True, False, 1e-3), lr) == []
    assert read_differences(cfg(True, True, 1e-4), cfg(True, True, 1e-3), lr) == lr
    layer = ["pretrain.layer_lr: 0.1 -> 0.2"]
    assert read_differences(cfg(True, False, 1e-4), cfg(True, False, 1e-4, 0.2), layer) == layer
