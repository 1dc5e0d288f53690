"""Tests of ae_jax.objectives.losses: closed forms, emphasis weights and global-batch gradients."""

import os

# Eight fake CPU devices for the shard_map / pmap tests; must precede the first jax import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from ae_jax.objectives.losses import (  # noqa: E402
    LOSSES,
    LossError,
    binary_cross_entropy_with_logits,
    global_mean,
    reconstruction_loss,
    squared_error,
    sum_squared_error,
)

N_DEV = 8


def _np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_squared_errors_hand_values():
    recon = jnp.array([[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]])
    target = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.5]])
    # Row 0: errors 0, 1, 0.25 -> sum 1.25, mean 1.25/3; row 1: 0, 1, 0.25 -> same.
    np.testing.assert_allclose(sum_squared_error(recon, target), [1.25, 1.25], rtol=1e-6)
    np.testing.assert_allclose(squared_error(recon, target), [1.25 / 3, 1.25 / 3], rtol=1e-6)


def test_squared_errors_image_shaped_match_numpy():
    rng = np.random.default_rng(0)
    recon = rng.normal(size=(5, 4, 3, 2)).astype(np.float32)
    target = rng.normal(size=(5, 4, 3, 2)).astype(np.float32)
    sq = (recon - target) ** 2
    np.testing.assert_allclose(sum_squared_error(recon, target), sq.sum((1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(squared_error(recon, target), sq.mean((1, 2, 3)), rtol=1e-5)


def test_bce_hand_value_and_formula():
    # Logit 0 is p = 1/2: BCE = log 2 for any target.
    logits = jnp.zeros((2, 4))
    target = jnp.array([[0.0, 1.0, 0.3, 1.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(
        binary_cross_entropy_with_logits(logits, target), [np.log(2)] * 2, rtol=1e-6
    )
    rng = np.random.default_rng(1)
    z = rng.normal(scale=3.0, size=(6, 10))
    t = rng.uniform(size=(6, 10))
    p = _np_sigmoid(z)
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(1)
    got = binary_cross_entropy_with_logits(jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bce_is_finite_for_saturated_logits():
    logits = jnp.array([[200.0, -200.0]])
    target = jnp.array([[0.0, 1.0]])
    # The naive formula gives log(0) = -inf here; the stable one gives |z| = 200.
    np.testing.assert_allclose(binary_cross_entropy_with_logits(logits, target), [200.0])


def test_bce_gradient_is_sigmoid_minus_target_at_zero_and_saturated_logits():
    z = jnp.array([[0.0, 0.0, 3.0, -3.0, 80.0, -80.0]])
    t = jnp.array([[0.0, 1.0, 0.2, 0.7, 0.0, 1.0]])
    grad = jax.grad(lambda z: jnp.sum(binary_cross_entropy_with_logits(z, t)))(z)
    np.testing.assert_allclose(grad, (_np_sigmoid(np.asarray(z)) - t) / z.shape[1], atol=1e-7)


def _batch(seed=0, b=16, d=12):
    rng = np.random.default_rng(seed)
    recon = jnp.asarray(rng.uniform(size=(b, d)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(b, d)), jnp.float32)
    logits = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
    return logits, recon, target


def test_reconstruction_loss_kinds():
    logits, recon, target = _batch()
    mse = float(np.mean((np.asarray(recon) - np.asarray(target)) ** 2))
    assert float(reconstruction_loss("mse", logits, recon, target)) == pytest.approx(mse, rel=1e-6)
    assert float(reconstruction_loss("rmse", logits, recon, target)) == pytest.approx(
        np.sqrt(mse), rel=1e-6
    )
    bce = float(jnp.mean(binary_cross_entropy_with_logits(logits, target)))
    assert float(reconstruction_loss("bce", logits, recon, target)) == pytest.approx(bce, rel=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_all_ones_weights_give_plain_loss(kind):
    logits, recon, target = _batch(2)
    plain = reconstruction_loss(kind, logits, recon, target)
    ones = reconstruction_loss(kind, logits, recon, target, weights=jnp.ones_like(target))
    np.testing.assert_allclose(ones, plain, rtol=1e-6)


def test_emphasis_weights_hand_value():
    # Vincent et al. (2010): alpha * sum_corrupted + beta * sum_uncorrupted, / D.
    recon = jnp.array([[1.0, 2.0, 0.0, 0.0]])
    target = jnp.zeros((1, 4))
    corrupted = jnp.array([[True, False, True, False]])
    alpha, beta = 3.0, 0.5
    weights = jnp.where(corrupted, alpha, beta)
    expected = (alpha * (1.0 + 0.0) + beta * (4.0 + 0.0)) / 4
    got = reconstruction_loss("mse", recon, recon, target, weights=weights)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # beta = 0 ignores uncorrupted elements entirely.
    only_corrupted = reconstruction_loss(
        "mse", recon, recon, target, weights=jnp.where(corrupted, 1.0, 0.0)
    )
    assert float(only_corrupted) == pytest.approx(1.0 / 4, rel=1e-6)


def test_unknown_kind_lists_valid_kinds():
    logits, recon, target = _batch()
    with pytest.raises(LossError, match="'huber'.*mse, rmse, bce"):
        reconstruction_loss("huber", logits, recon, target)
    assert issubclass(LossError, ValueError)


def test_shape_mismatch_names_shapes():
    with pytest.raises(LossError, match=r"\(2, 3\).*\(2, 4\)"):
        squared_error(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_rmse_gradient_finite_at_perfect_reconstruction():
    target = jnp.ones((4, 3))
    grad = jax.grad(lambda r: reconstruction_loss("rmse", r, r, target))(target)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_losses_accept_traced_weights_under_jit_and_vmap():
    logits, recon, target = _batch(3, b=4, d=5)
    alphas = jnp.array([1.0, 2.0, 0.5])
    mask = jnp.arange(20).reshape(4, 5) % 2 == 0

    @jax.jit
    def per_member(alpha):
        return reconstruction_loss(
            "mse", logits, recon, target, weights=jnp.where(mask, alpha, 1.0)
        )

    got = jax.vmap(per_member)(alphas)
    sq = (np.asarray(recon) - np.asarray(target)) ** 2
    expected = [np.mean(np.where(np.asarray(mask), a, 1.0) * sq) for a in np.asarray(alphas)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# ---- global-batch statistics under a data axis -------------------------------------------


def _linear_problem(seed=0, b=64, d=6):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
    w = jnp.asarray(rng.normal(scale=0.3, size=(d, d)), jnp.float32)
    return x, w


def _rmse_objective(w, x, axis_name):
    recon = x @ w  # (B, D)
    return reconstruction_loss("rmse", recon, recon, x, axis_name=axis_name)


def test_global_mean_is_identity_without_axis():
    x = jnp.arange(3.0)
    np.testing.assert_array_equal(global_mean(x, None), x)


def _data_parallel(objective, w, x, mode):
    """(loss, grad) of objective(w, x_local, "data") over 8 devices, gradients pmean-ed.

    Modes are the three ways the per-device step runs with the pmap convention that
    ``global_mean`` relies on: each device differentiates w.r.t. a device-varying copy of w.
    """
    if mode == "pmap":
        x_dev = x.reshape(N_DEV, -1, *x.shape[1:])  # (devices, B / devices, ...)

        def step(w, x_local):
            loss, grad = jax.value_and_grad(objective)(w, x_local, "data")
            return loss, jax.lax.pmean(grad, "data")

        loss, grad = jax.pmap(step, axis_name="data", in_axes=(None, 0))(w, x_dev)
        return loss[0], grad[0]

    mesh = jax.make_mesh((N_DEV,), ("data",))
    # Batch sharded over the data axis, parameters replicated: the trainer's layout.
    x_sh = jax.device_put(x, NamedSharding(mesh, P("data")))
    w_rep = jax.device_put(w, NamedSharding(mesh, P()))

    def step(w, x_local):
        if mode == "shard_map_pcast":
            w = jax.lax.pcast(w, "data", to="varying")
        loss, grad = jax.value_and_grad(objective)(w, x_local, "data")
        # The loss is already global; pmean only makes check_vma see it as replicated.
        return jax.lax.pmean(loss, "data"), jax.lax.pmean(grad, "data")

    check_vma = mode == "shard_map_pcast"
    fn = jax.shard_map(
        step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()), check_vma=check_vma
    )
    return jax.jit(fn)(w_rep, x_sh)


PARALLEL_MODES = ("shard_map", "shard_map_pcast", "pmap")


@pytest.mark.parametrize("mode", PARALLEL_MODES)
def test_rmse_grad_data_parallel_equals_single_device_grad(mode):
    assert len(jax.devices()) >= N_DEV, "conftest must set 8 fake CPU devices"
    x, w = _linear_problem()
    loss, grad = _data_parallel(_rmse_objective, w, x, mode)
    ref_loss, ref_grad = jax.value_and_grad(_rmse_objective)(w, x, None)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)


def test_rmse_of_local_mse_would_give_a_different_grad():
    # Without global_mean each device takes sqrt of its own MSE: the test above can fail.
    x, w = _linear_problem()

    def naive(w, x_local, axis_name):
        return jnp.sqrt(jnp.mean((x_local @ w - x_local) ** 2))

    _, grad = _data_parallel(naive, w, x, "shard_map")
    ref_grad = jax.grad(_rmse_objective)(w, x, None)
    assert float(jnp.max(jnp.abs(grad - ref_grad))) > 1e-3


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_linear_losses_data_parallel_equal_single_device(kind):
    x, w = _linear_problem(2)
    target = jax.nn.sigmoid(x)

    def objective(w, x_local, axis_name):
        out = x_local @ w  # (B, D)
        t = jax.nn.sigmoid(x_local)
        return reconstruction_loss(kind, out, out, t, axis_name=axis_name)

    loss, grad = _data_parallel(objective, w, x, "shard_map")
    ref_loss = reconstruction_loss(kind, x @ w, x @ w, target)
    ref_grad = jax.grad(objective)(w, x, None)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)
