"""Data parallelism: the per-device step on 8 (fake CPU) devices equals the same steps on one.

N epochs over the same global batches give the same parameters whether the batch is split across
8 devices under ``jax.shard_map`` (2 under ``jax.pmap``), or processed whole on one device:
gradients are averaged over the data axis, batch statistics (the KL sparsity rho_hat, RMSE's
mean) are global-batch values, and the corruption noise of an example depends on its position in
the global batch, not on which device holds it (so it differs across devices and never repeats).
Tolerance: float32 round-off of the different summation orders, rtol 2e-5 / atol 2e-6 after
3 epochs (66 Adam steps).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config

from ae_jax.config import ConfigError
from ae_jax.data import load_dataset
from ae_jax.training.trainer import Trainer

VARIANTS = {
    "plain": (),
    "denoising": ("noise=masking", "noise.level=0.25"),
    "kl_sparse": (
        "model=shallow",
        "model.latent_dim=32",
        "reg=kl_sparse",
        "reg.kl_sparse.strength=0.5",
    ),
    "rmse_gaussian": ("loss=rmse", "noise=gaussian", "noise.level=0.2"),
}


def _fit(devices, parallel, overrides):
    cfg = make_config(
        "trainer.epochs=3", f"trainer.devices={devices}", f"trainer.parallel={parallel}", *overrides
    )
    trainer = Trainer(cfg, load_dataset(cfg.data))
    state, history, timing = trainer.fit(trainer.init_state())
    return jax.device_get(state.params), history, timing


def _assert_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_eight_devices_equal_one_device(variant):
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 fake CPU devices"
    one, hist1, _ = _fit(1, "shard_map", VARIANTS[variant])
    eight, hist8, timing = _fit(8, "shard_map", VARIANTS[variant])
    assert timing["compile/epoch_traces"] == 1
    _assert_close(eight, one)
    # the logged losses are global-batch values too
    np.testing.assert_allclose(hist8[-1]["train/loss"], hist1[-1]["train/loss"], rtol=1e-4)


@pytest.mark.parametrize("variant", ["plain", "denoising", "kl_sparse"])
def test_pmap_path_equals_shard_map(variant):
    # On 2 devices, not 8: with 8 fake CPU devices on 2 busy cores, jax.pmap's program (jit of
    # shard_map in JAX 0.10) can deadlock in XLA:CPU's all-reduce rendezvous, one device never
    # arriving, and XLA aborts the process after 40 s (reproduced 5 times in 6 under load; the
    # shard_map path never hung there, and 2 devices never did either).
    sharded, _, _ = _fit(2, "shard_map", VARIANTS[variant])
    pmapped, _, _ = _fit(2, "pmap", VARIANTS[variant])
    _assert_close(pmapped, sharded)


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_compiling_a_program_does_not_run_it(mode):
    """``Parallel.compile`` compiles without running: under pmap it called the program to
    compile it, which trained a whole epoch at every start and resume and counted it as
    compile time."""
    from ae_jax.training.parallel import Parallel

    calls = []

    def step(state, data):
        jax.debug.callback(lambda: calls.append(1))
        return state + data.sum(), data

    parallel = Parallel(jax.devices()[:2], mode)
    state, data = parallel.place(jnp.zeros(())), parallel.place(jnp.ones(3))
    program = parallel.compile(step, state, data)
    jax.effects_barrier()
    assert calls == [] and parallel.compiles == 1
    new_state, _ = program(state, data)
    jax.effects_barrier()
    assert float(new_state) == 3.0 and len(calls) >= 1


def test_pmap_is_refused_in_a_multi_process_run(monkeypatch):
    # its replicated state was put on the first device, which other processes cannot address:
    # a shape error in one process and a fetch error in the other
    from ae_jax.training.parallel import Parallel

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"pmap runs within one process, and this run has 2"):
        Parallel(jax.devices()[:2], "pmap")


def test_corruption_differs_across_devices():
    """Each device corrupts its own examples with its own keys: no repeated noise pattern."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from ae_jax.training.step import DATA_AXIS, device_offset, example_keys

    mesh = Mesh(np.array(jax.devices()[:8]), (DATA_AXIS,))
    key = jax.random.key(0)

    def per_device(x):
        keys = example_keys(key, jnp.int32(0), device_offset(DATA_AXIS, x.shape[0]), x.shape[0])
        return jax.vmap(lambda k, xi: jax.random.bernoulli(k, 0.5, xi.shape))(keys, x)

    x = jnp.ones((16, 64))
    sharded = jax.shard_map(
        per_device, mesh=mesh, in_specs=P(DATA_AXIS), out_specs=P(DATA_AXIS), check_vma=False
    )
    masks = jax.jit(sharded)(x)
    single = jax.vmap(lambda k, xi: jax.random.bernoulli(k, 0.5, xi.shape))(
        example_keys(key, jnp.int32(0), jnp.int32(0), 16), x
    )
    np.testing.assert_array_equal(masks, single)  # the same noise as on one device
    rows = {tuple(np.asarray(r)) for r in masks}
    assert len(rows) == 16  # no two examples (on any devices) share a mask


def test_batch_that_does_not_split_is_a_clear_error():
    cfg = make_config("trainer.batch_size=100", "trainer.devices=8")
    with pytest.raises(ConfigError, match=r"batch_size=100 does not split evenly across 8 devices"):
        Trainer(cfg, load_dataset(cfg.data))
