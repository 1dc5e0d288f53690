"""The published numbers (results/) agree with themselves and with the committed configs.

A reproduction's config can change after its numbers were published (a learning rate chosen
later on validation, a shared recipe edited for another row). Then results/ no longer says what
the documented command computes. These tests compose every published experiment's command, as
scripts/reproduce.py runs it, and compare it with the config.yaml published beside its numbers.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import yaml
from conftest import REPO
from hydra import compose
from omegaconf import OmegaConf

from ae_jax.sweeps.collect import flatten

RESULTS = REPO / "results"
# Settings that decide where and when a run writes, not what it computes; and the data path,
# which is the machine's.
BOOKKEEPING = (
    "data.path",
    "trainer.checkpoint_every",
    "trainer.checkpoint_seconds",
    "trainer.keep_checkpoints",
    "trainer.resume",
    "trainer.progress",
    "trainer.figures",
    "logger.",
)


def _reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module
    spec.loader.exec_module(module)
    return module


REPRODUCTIONS = _reproduce().REPRODUCTIONS


def _published_runs():
    """(experiment, the reproduction, its command's args) for every run published as one."""
    for r in REPRODUCTIONS.values():
        experiments = dict(r.runs)
        experiments.update({experiment: experiment for experiment in r.select})
        for sub, experiment in experiments.items():
            then = [
                args
                for args in r.then
                if any(a.startswith("hydra.run.dir=") and a.endswith(f"/{sub}") for a in args)
            ]
            yield pytest.param(experiment, r, (then or [r.args])[0], id=experiment)


def test_summary_rows_are_the_published_metrics():
    rows = json.loads((RESULTS / "summary.json").read_text())
    assert rows, "results/summary.json is empty"
    for row in rows:
        metrics = json.loads((RESULTS / row["experiment"] / "metrics.json").read_text())
        assert metrics[row["metric"]] == row["ours"], row
        assert (RESULTS / row["experiment"] / "config.yaml").is_file(), row["experiment"]


@pytest.mark.parametrize(("experiment", "reproduction", "args"), list(_published_runs()))
def test_published_config_is_what_the_committed_command_composes(
    hydra_conf, experiment, reproduction, args
):
    path = RESULTS / experiment / "config.yaml"
    assert path.is_file(), f"{experiment} is a reproduction but has no published config.yaml"
    published = flatten(yaml.safe_load(path.read_text()))
    overrides = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key.startswith("hydra."):
            continue
        if reproduction.multirun and "," in value:  # a swept value: the member published
            value = json.dumps(published[key])
        overrides.append(f"{key}={value}")
    if reproduction.multirun:  # the members of a sweep the experiment's config defines
        sweep = compose("config", overrides=overrides, return_hydra_config=True).hydra.sweeper
        overrides += [f"{k}={json.dumps(published[k])}" for k in sweep.params or {}]
    composed = flatten(OmegaConf.to_container(compose("config", overrides=overrides), resolve=True))
    differ = {
        key: (published[key], composed.get(key))
        for key in published  # keys added to the schema since publication keep old behaviour
        if not key.startswith(BOOKKEEPING) and published[key] != composed.get(key)
    }
    assert not differ, (
        f"results/{experiment} was made with settings its command no longer composes "
        f"(published, now): {differ}; republish it (scripts/reproduce.py) or pin them"
    )
