"""Tests of the committed sweeps in conf/sweep/: each file composes with ``+sweep=<name>``, its
grid parses as Hydra's basic sweeper expands it, and every job of the grid passes validation
with the swept value in place. Together the files cover the four axes and one crossed sweep.
The ``optuna_*`` files are hyperparameter searches (Hydra's Optuna sweeper): scored on
validation data, seeded, and searching only what one vectorised program can hold."""

import re
from pathlib import Path

import pytest
from hydra import compose
from omegaconf import OmegaConf

from ae_jax.config import to_config, validate
from ae_jax.sweeps.collect import flatten

REPO = Path(__file__).resolve().parents[1]
SWEEP_DIR = REPO / "conf" / "sweep"
SWEEPS = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
SEARCHES = [name for name in SWEEPS if name.startswith("optuna_")]  # hydra/sweeper=optuna
GRIDS = [name for name in SWEEPS if name not in SEARCHES]  # Hydra's basic sweeper
MAX_RUNS = 25  # "runnable on digits in a few minutes": ~10-25 s a run on a 2-core CPU


def grid(name: str) -> tuple[dict, list[list[str]]]:
    """The sweep's params and its jobs (override lists), expanded as BasicSweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    return params, jobs


def test_there_are_committed_sweeps():
    assert len(GRIDS) >= 5, GRIDS
    assert SEARCHES, "commit at least one search as conf/sweep/optuna_<name>.yaml"


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_file_header_states_package_command_and_duration(name):
    text = (SWEEP_DIR / f"{name}.yaml").read_text()
    assert text.splitlines()[0] == "# @package _global_"
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert f"python experiments/train.py --multirun +sweep={name}\n" in comments + "\n"
    assert re.search(r"\d+ runs on digits, about \d+(\.\d+)? min", comments), "document the cost"


@pytest.mark.parametrize("name", GRIDS)
def test_every_job_of_the_grid_composes_validates_and_takes_its_value(hydra_conf, name):
    params, jobs = grid(name)
    seeds = str(params.get("trainer.seed", "")).split(",")
    assert len(seeds) >= 2, f"{name}: sweep trainer.seed over several seeds, got {seeds}"
    axes = [k for k in params if k != "trainer.seed"]
    assert axes, f"{name}: sweeps no hyperparameter"
    assert len(jobs) == len(seeds) * _product(len(str(params[k]).split(",")) for k in axes)
    assert len(jobs) <= MAX_RUNS
    # Seeds cannot make a config invalid: compose each value combination once, at one seed.
    for job in [j for j in jobs if f"trainer.seed={seeds[0]}" in j]:
        cfg = compose("config", overrides=[f"+sweep={name}", *job])
        typed = validate(to_config(cfg))  # raises ConfigError for an invalid combination
        assert typed.name == f"sweep_{name}"  # the multirun dir is named after the sweep
        flat = flatten(OmegaConf.to_container(cfg, resolve=True))
        for item in job:
            key, value = item.split("=", 1)
            assert flat[key] == pytest.approx(float(value)), (name, item)


_REG_STRENGTH = re.compile(r"reg\.\w+\.strength")


def _product(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def test_sweeps_cover_the_four_axes_and_a_crossed_sweep(hydra_conf):
    swept = {
        name: {_REG_STRENGTH.sub("reg.<term>.strength", k) for k in grid(name)[0]}
        - {"trainer.seed"}
        for name in GRIDS
    }
    covered = set().union(*swept.values())
    assert {"model.latent_dim", "model.depth", "noise.level", "reg.<term>.strength"} <= covered
    assert any({"noise.level", "reg.<term>.strength"} <= keys for keys in swept.values())


def test_noise_and_regularisation_sweeps_pick_their_kind_and_model(hydra_conf):
    for name in GRIDS:
        params, _ = grid(name)
        cfg = compose("config", overrides=[f"+sweep={name}"])
        if "noise.level" in params:
            assert cfg.noise.kind in ("masking", "gaussian")
            # One test corruption for every run: denoise_mse is comparable across the grid.
            assert cfg.noise.eval_level is not None and cfg.noise.eval_level > 0
        for key in params:
            if not _REG_STRENGTH.fullmatch(key):
                continue
            term = key.split(".")[1]
            assert list(cfg.reg) == [term] and term in ("contractive", "kl_sparse")
            assert cfg.model.code_activation == "sigmoid" and cfg.model.depth == 0
            assert "0" in str(params[key]).split(","), "include the unregularised run"


def test_the_latent_sweep_spans_a_geometric_range(hydra_conf):
    params, _ = grid("latent")
    sizes = [int(v) for v in str(params["model.latent_dim"]).split(",")]
    assert sizes == sorted(sizes) and sizes[-1] / sizes[0] >= 8


@pytest.mark.parametrize("name", SEARCHES)
def test_search_is_seeded_scored_on_validation_and_vectorisable(hydra_conf, name):
    from ae_jax.config import score_key
    from ae_jax.sweeps.collect import search_param
    from ae_jax.sweeps.vectorized import group_by_program

    cfg = compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_
    assert sweeper.sampler.seed is not None, "a fixed sampler seed: the same trials every time"
    assert sweeper.direction == "minimize" and 2 <= sweeper.n_jobs <= sweeper.n_trials
    assert sweeper.n_trials <= MAX_RUNS
    typed = validate(to_config(compose("config", overrides=[f"+sweep={name}"])))
    assert typed.name == f"sweep_{name}"
    # never chosen on the test split: a validation split and a val/ score
    assert typed.data.validation > 0 and score_key(typed).startswith("val/")
    params = {k: search_param(k, v) for k, v in sweeper.params.items()}
    assert all(p is not None and p.low is not None for p in params.values()), params
    # every corner of the space composes, validates, and all of them share one program, so
    # hydra/launcher=vmap trains each batch of n_jobs trials as one vectorised program
    corners = [
        {k: (p.low if (i >> j) & 1 else p.high) for j, (k, p) in enumerate(params.items())}
        for i in range(2 ** len(params))
    ]
    configs = []
    for corner in corners:
        job = [f"{k}={v}" for k, v in corner.items()]
        configs.append(validate(to_config(compose("config", overrides=[f"+sweep={name}", *job]))))
    assert len(group_by_program(configs)) == 1
