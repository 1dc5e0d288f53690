"""Tests of ae_jax.objectives.regularizers against closed forms, autodiff and global-batch grads."""

import os

# Eight fake CPU devices for the shard_map tests; must precede the first jax import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from ae_jax.objectives.regularizers import (  # noqa: E402
    RegularizerError,
    batch_mean_activation,
    contractive,
    jacobian_frobenius_sq,
    k_schedule,
    k_sparse,
    kl_bernoulli,
    kl_sparsity,
    l1_activity,
    sigmoid_contractive_sq,
    update_running_mean,
    weight_decay,
)

N_DEV = 8


# ---- L1 and KL sparsity ---------------------------------------------------------------------


def test_l1_activity_hand_value():
    code = jnp.array([[1.0, -2.0, 0.0], [0.5, 0.5, -1.0]])
    # Row sums of |h|: 3 and 2; mean 2.5; times strength 0.1.
    assert float(l1_activity(code, 0.1)) == pytest.approx(0.25, rel=1e-6)
    assert float(l1_activity(code, 0.0)) == 0.0


def test_kl_zero_at_target_positive_elsewhere_and_formula():
    rho = jnp.array([0.01, 0.05, 0.3, 0.5, 0.9])
    np.testing.assert_allclose(kl_bernoulli(rho, rho), 0.0, atol=1e-6)
    rho_hat = jnp.linspace(0.02, 0.98, 49)
    for r in (0.05, 0.2, 0.7):
        kl = np.asarray(kl_bernoulli(r, rho_hat))
        q = np.asarray(rho_hat, np.float64)
        expected = r * np.log(r / q) + (1 - r) * np.log((1 - r) / (1 - q))
        np.testing.assert_allclose(kl, expected, rtol=1e-4, atol=1e-6)
        away = np.abs(q - r) > 1e-3
        assert np.all(kl[away] > 0)


def test_kl_is_finite_for_saturated_units():
    kl = kl_bernoulli(0.05, jnp.array([0.0, 1.0]))
    assert bool(jnp.all(jnp.isfinite(kl)))
    # rho_hat clipped to 1e-6 / 1 - 1e-6.
    expected0 = 0.05 * np.log(0.05 / 1e-6) + 0.95 * np.log(0.95 / (1 - 1e-6))
    assert float(kl[0]) == pytest.approx(expected0, rel=1e-3)


def test_kl_sparsity_sum_and_zero_gradient_at_target():
    rho_hat = jnp.array([0.05, 0.2, 0.5])
    expected = 3.0 * float(jnp.sum(kl_bernoulli(0.05, rho_hat)))
    assert float(kl_sparsity(rho_hat, 0.05, 3.0)) == pytest.approx(expected, rel=1e-6)
    grad = jax.grad(kl_sparsity)(jnp.full((4,), 0.05), 0.05, 3.0)
    np.testing.assert_allclose(grad, 0.0, atol=1e-4)


def test_batch_mean_activation_single_device():
    code = jnp.array([[0.0, 1.0], [0.5, 0.0], [1.0, 0.5]])
    np.testing.assert_allclose(batch_mean_activation(code), [0.5, 0.5])


def test_update_running_mean_ema_and_gradient_path():
    running, batch = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    np.testing.assert_allclose(update_running_mean(running, batch, 0.9), [0.9, 0.1], rtol=1e-6)
    # Repeated updates converge to a constant batch value (geometric, 0.5**40 ~ 1e-12).
    r = jnp.zeros(3)
    for _ in range(40):
        r = update_running_mean(r, jnp.full(3, 0.2), 0.5)
    np.testing.assert_allclose(r, 0.2, rtol=1e-6)
    # Gradient reaches the batch value with weight 1 - momentum, never the running state.
    g_run, g_batch = jax.grad(lambda a, b: jnp.sum(update_running_mean(a, b, 0.9)), (0, 1))(
        running, batch
    )
    np.testing.assert_allclose(g_run, 0.0)
    np.testing.assert_allclose(g_batch, 0.1, rtol=1e-6)


# ---- global rho_hat under a data axis -------------------------------------------------------


def _kl_objective(w, x_local, axis_name):
    code = jax.nn.sigmoid(x_local @ w)  # (B, k)
    return kl_sparsity(batch_mean_activation(code, axis_name), 0.05, 2.0)


@pytest.mark.parametrize("check_vma", [False, True])
def test_kl_sparsity_grad_under_shard_map_equals_single_device_grad(check_vma):
    assert len(jax.devices()) >= N_DEV, "conftest must set 8 fake CPU devices"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(scale=0.5, size=(6, 5)), jnp.float32)
    mesh = jax.make_mesh((N_DEV,), ("data",))
    x_sh = jax.device_put(x, NamedSharding(mesh, P("data")))
    w_rep = jax.device_put(w, NamedSharding(mesh, P()))

    def step(w, x_local):
        if check_vma:  # the pmap convention global_mean relies on: a device-varying copy
            w = jax.lax.pcast(w, "data", to="varying")
        loss, grad = jax.value_and_grad(_kl_objective)(w, x_local, "data")
        return jax.lax.pmean(loss, "data"), jax.lax.pmean(grad, "data")

    fn = jax.shard_map(
        step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()), check_vma=check_vma
    )
    loss, grad = jax.jit(fn)(w_rep, x_sh)
    ref_loss, ref_grad = jax.value_and_grad(_kl_objective)(w, x, None)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)
    # The per-device rho_hat would give another gradient: the check above can fail.
    local = jax.grad(_kl_objective)(w, x[:8], None)
    assert float(jnp.max(jnp.abs(local - ref_grad))) > 1e-3


# ---- contractive ----------------------------------------------------------------------------


def _sigmoid_layer(seed, d, k):
    rng = np.random.default_rng(seed)
    kernel = jnp.asarray(rng.normal(size=(d, k)), jnp.float32)  # Flax layout (D_in, D_out)
    bias = jnp.asarray(rng.normal(size=(k,)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(5, d)), jnp.float32)
    return kernel, bias, x


@pytest.mark.parametrize("d,k", [(12, 4), (3, 7)])  # jacrev (k < D) and jacfwd (k >= D) paths
def test_sigmoid_closed_form_equals_autodiff(d, k):
    kernel, bias, x = _sigmoid_layer(d + k, d, k)
    encode = lambda xb: jax.nn.sigmoid(xb @ kernel + bias)  # (D,) -> (k,)
    h = jax.nn.sigmoid(x @ kernel + bias)  # (B, k)
    closed = sigmoid_contractive_sq(h, kernel)
    general = jacobian_frobenius_sq(encode, x)
    brute = jnp.stack([jnp.sum(jax.jacfwd(encode)(xb) ** 2) for xb in x])
    assert closed.shape == (5,)
    np.testing.assert_allclose(closed, brute, rtol=1e-5)
    np.testing.assert_allclose(general, brute, rtol=1e-5)


def test_sigmoid_closed_form_gradient_equals_autodiff_gradient():
    kernel, bias, x = _sigmoid_layer(1, 8, 3)

    def closed(kernel):
        return contractive(sigmoid_contractive_sq(jax.nn.sigmoid(x @ kernel + bias), kernel), 0.7)

    def general(kernel):
        encode = lambda xb: jax.nn.sigmoid(xb @ kernel + bias)
        return contractive(jacobian_frobenius_sq(encode, x), 0.7)

    np.testing.assert_allclose(jax.grad(closed)(kernel), jax.grad(general)(kernel), rtol=1e-4)


def test_jacobian_two_layer_tanh_encoder_and_image_inputs():
    rng = np.random.default_rng(3)
    w1 = jnp.asarray(rng.normal(scale=0.5, size=(12, 9)), jnp.float32)
    w2 = jnp.asarray(rng.normal(scale=0.5, size=(9, 4)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(6, 3, 4)), jnp.float32)  # (B, H, W) images

    def encode(xb):  # (3, 4) -> (4,)
        return jnp.tanh(jnp.tanh(xb.reshape(-1) @ w1) @ w2)

    got = jacobian_frobenius_sq(encode, x)
    brute = jnp.stack([jnp.sum(jax.jacfwd(encode)(xb) ** 2) for xb in x])
    np.testing.assert_allclose(got, brute, rtol=1e-5)
    assert float(contractive(got, 0.5)) == pytest.approx(0.5 * float(jnp.mean(brute)), rel=1e-5)


def test_sigmoid_closed_form_rejects_mismatched_kernel():
    with pytest.raises(RegularizerError, match=r"\(4, 5\)"):
        sigmoid_contractive_sq(jnp.zeros((2, 3)), jnp.zeros((4, 5)))


# ---- k-sparse -------------------------------------------------------------------------------


def test_k_sparse_keeps_k_largest():
    code = jnp.array([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(
        k_sparse(code, 2), [[0.0, 3.0, 0.0, 2.0, 0.0], [5.0, 4.0, 0.0, 0.0, 0.0]]
    )


def test_k_sparse_exactly_k_with_ties():
    code = jnp.concatenate([jnp.ones((3, 10)), jnp.array([[2.0, 1, 1, 1, 1, 1, 1, 1, 1, 1]])])
    for k in (1, 3, 7, 10):
        nonzero = np.count_nonzero(np.asarray(k_sparse(code, k)), axis=1)
        np.testing.assert_array_equal(nonzero, k)
    # The unique largest value always survives its ties.
    assert float(k_sparse(code, 1)[3, 0]) == 2.0


def test_k_sparse_gradient_only_through_kept_units():
    code = jnp.array([[0.3, -0.2, 0.9, 0.1]])
    grad = jax.grad(lambda c: jnp.sum(k_sparse(c, 2) * jnp.array([1.0, 2.0, 3.0, 4.0])))(code)
    np.testing.assert_array_equal(grad, [[1.0, 0.0, 3.0, 0.0]])


def test_k_sparse_traced_k_compiles_once():
    traces = []

    @jax.jit
    def f(code, k):
        traces.append(1)
        return k_sparse(code, k)

    code = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16)), jnp.float32)
    for k in (16, 8, 3, 1):
        nonzero = np.count_nonzero(np.asarray(f(code, jnp.int32(k))), axis=1)
        np.testing.assert_array_equal(nonzero, k)
    assert len(traces) == 1
    # vmap over sweep members with different k.
    counts = jax.vmap(lambda k: jnp.sum(f(code, k) != 0, axis=1))(jnp.array([2, 5]))
    np.testing.assert_array_equal(counts, [[2] * 4, [5] * 4])


def test_k_sparse_bounded_top_k_equals_a_full_ranking():
    """The partial sort (``k_max``) keeps exactly the units a stable full ranking keeps."""

    def by_rank(code, k):  # the definition: rank by a stable descending sort, keep rank < k
        order = jnp.argsort(code, axis=-1, descending=True, stable=True)
        return jnp.where(jnp.argsort(order, axis=-1) < k, code, 0.0)

    rng = np.random.default_rng(0)
    # Rounded values: many ties, also across the k-th value.
    code = jnp.asarray(np.round(rng.normal(size=(64, 50)), 1), jnp.float32)
    select = jax.jit(k_sparse, static_argnums=2)
    for k in (1, 5, 12, 20):
        for k_max in (20, None):
            np.testing.assert_array_equal(select(code, jnp.int32(k), k_max), by_rank(code, k))
    np.testing.assert_array_equal(k_sparse(code, 0, 20), jnp.zeros_like(code))


def test_k_schedule_endpoints_and_linear_middle():
    assert int(k_schedule(0, 10, 50, 100)) == 50
    assert int(k_schedule(50, 10, 50, 100)) == 30
    assert int(k_schedule(100, 10, 50, 100)) == 10
    assert int(k_schedule(10_000, 10, 50, 100)) == 10
    assert int(k_schedule(0, 10, 50, 0)) == 10  # no anneal
    assert int(k_schedule(0, 10, None, 100)) == 10
    ks = jax.jit(jax.vmap(lambda s: k_schedule(s, 10, 50, 100)))(jnp.arange(0, 201, 20))
    assert ks.dtype == jnp.int32
    assert np.all(np.diff(np.asarray(ks)) <= 0)
    np.testing.assert_array_equal(ks[:6], [50, 42, 34, 26, 18, 10])


# ---- weight decay ---------------------------------------------------------------------------


def test_weight_decay_counts_kernels_only():
    params = {
        "Dense_0": {"kernel": jnp.array([[1.0, 2.0]]), "bias": jnp.array([100.0, 100.0])},
        "decoder": {"Dense_0": {"kernel": jnp.array([[3.0]]), "bias": jnp.array([7.0])}},
    }
    # 0.1 / 2 * (1 + 4 + 9) = 0.7
    assert float(weight_decay(params, 0.1)) == pytest.approx(0.7, rel=1e-6)
    grads = jax.grad(weight_decay)(params, 0.1)
    np.testing.assert_allclose(grads["Dense_0"]["kernel"], [[0.1, 0.2]], rtol=1e-6)
    np.testing.assert_array_equal(grads["Dense_0"]["bias"], 0.0)


def test_weight_decay_on_flax_params():
    model = nn.Sequential([nn.Dense(5), nn.relu, nn.Conv(3, (3, 3))])
    params = model.init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))["params"]
    kernels = [v["kernel"] for v in params.values()]
    expected = 0.5 * 0.3 * sum(float(jnp.sum(k**2)) for k in kernels)
    assert float(weight_decay(params, 0.3)) == pytest.approx(expected, rel=1e-6)


def test_dead_code_units_are_counted_on_the_held_out_split(tmp_path):
    from conftest import make_config

    from ae_jax.train import train_and_evaluate

    # a k-sparse code of 32 units keeping 2 per example: some units are never chosen
    cfg = make_config(
        "model.latent_dim=32", "model.sparse_k=2", "trainer.epochs=2", "trainer.figures=false"
    )
    m = train_and_evaluate(cfg, tmp_path)
    assert m["test/code_nonzero_max"] <= 2
    codes = np.load(tmp_path / "reconstructions.npz")["codes"]  # the first 360 test codes
    never = int(np.sum(~(np.abs(codes) > 1e-6).any(axis=0)))
    assert m["test/code_dead_units"] == never  # digits' whole test split is 360 examples
    assert codes.shape == (360, 32) and 0 < never < 32


@pytest.mark.parametrize(
    ("model", "got"),
    [("conv", "got model=conv;"), ("mlp", "got depth=2, code_activation='linear';")],
)
def test_the_closed_form_jacobian_names_the_model_it_needs(model, got):
    # a conv model was told to set model.depth=0, which conv models refuse
    from conftest import make_config

    from ae_jax.config import ConfigError, validate

    cfg = make_config(f"model={model}", "reg=contractive", "reg.contractive.method=closed_form")
    with pytest.raises(ConfigError, match=r"\(model=shallow, or model.depth=0 and model.code"):
        try:
            validate(cfg)
        except ConfigError as err:
            assert got in str(err), err
            raise
