"""The vmap launcher composes a sweep once per shape of its overrides, not once per job.

Hydra composes every job of a multirun twice (the sweeper's check, then the launcher), about
0.15 s each; ``SweepComposer`` composes once per distinct set of structural overrides (group
choices, additions, deletions, hydra keys) and applies each job's plain values with Hydra's own
code. Its configs must equal Hydra's composition exactly, including the job's hydra node.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.utils import setup_globals
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from ae_jax.config import register_configs
from hydra_plugins.ae_jax_vmap_launcher.vmap_launcher import SweepComposer

CONF = str(Path(__file__).resolve().parents[1] / "conf")

JOBS = [
    ["noise=masking", "noise.level=0", "trainer.seed=0"],
    ["noise=masking", "noise.level=0.1", "trainer.seed=1"],
    ["noise=masking", "noise.level=0.25", "trainer.seed=0"],
    ["noise=gaussian", "noise.level=0.25", "trainer.seed=0"],  # another group choice
    ["reg=contractive", "reg.contractive.strength=0.001", "optim.lr=0.003"],
    ["reg=contractive", "reg.contractive.strength=0.01", "optim.lr=0.0003"],
    ["model=shallow", "model.latent_dim=16", "name=wide"],
    ["trainer.epochs=7"],
    ["hydra.job.name=custom", "trainer.seed=2"],
    ["reg=[kl_sparse,weight_decay]", "reg.kl_sparse.target=0.1"],
]


@pytest.fixture(scope="module")
def loader_and_master():
    register_configs()
    setup_globals()  # Hydra's resolvers (now, ...)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONF))
    master = loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)
    return loader, master


def resolved(cfg):
    out = OmegaConf.to_container(cfg, resolve=False)
    return {
        k: OmegaConf.select(cfg, k)
        if not isinstance(v, dict)
        else OmegaConf.to_container(cfg[k], resolve=True)
        for k, v in out.items()
        if k != "hydra"
    }


def plain(cfg):
    out = OmegaConf.to_container(cfg, resolve=False)
    out["hydra"]["runtime"].pop("cwd", None)
    return out


def test_configs_equal_hydras_composition_with_one_composition_per_shape(loader_and_master):
    loader, master = loader_and_master
    composer = SweepComposer(loader)
    for job in JOBS:
        full = loader.load_sweep_config(master, job)
        fast = composer(master, job)
        assert plain(fast) == plain(full), job
        # resolved values too (interpolations see the job's values)
        assert resolved(fast) == resolved(full)
        assert fast.hydra.overrides.task == [o for o in job if not o.startswith("hydra.")]
    # masking x3 share one composition, contractive x2 another: 10 jobs, 7 shapes
    assert composer.compositions == 7


def test_the_sweepers_check_is_handed_to_the_launcher(loader_and_master):
    loader, master = loader_and_master
    composer = SweepComposer(loader)
    jobs = [["noise=masking", f"noise.level=0.{i}", f"trainer.seed={i % 2}"] for i in range(8)]
    checked = [composer(master, job) for job in jobs]  # Sweeper.validate_batch_is_legal
    launched = [composer(master, job) for job in jobs]  # the launcher, job by job
    assert composer.compositions == 1
    assert all(a is b for a, b in zip(checked, launched))
    assert [c.noise.level for c in launched] == [i / 10 for i in range(8)]


def test_a_bad_value_fails_as_hydra_fails(loader_and_master):
    loader, master = loader_and_master
    composer = SweepComposer(loader)
    for job in (["noise.level=abc"], ["trainer.no_such_key=1"]):
        with pytest.raises(ConfigCompositionException) as hydra_err:
            loader.load_sweep_config(master, job)
        with pytest.raises(ConfigCompositionException) as ours:
            composer(master, job)
        assert str(ours.value) == str(hydra_err.value)
