"""conv_ops: the same values and gradients as flax's Conv / ConvTranspose, with fast kernels
inside a scan (no convolution left to XLA:CPU's naive loop emitter)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax.models.conv_ops import Conv, ConvTranspose

# (batch, height, width, C_in, C_out, kernel, stride): odd and even sizes, kernels and strides
CASES = [
    (2, 7, 7, 8, 4, 3, 2),
    (2, 14, 14, 4, 1, 3, 2),
    (2, 5, 6, 3, 2, 3, 2),
    (2, 4, 4, 3, 2, 4, 2),
    (2, 7, 7, 3, 2, 5, 2),
    (2, 3, 3, 2, 3, 3, 3),
    (2, 9, 9, 2, 3, 3, 1),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ours, theirs", [(Conv, nn.Conv), (ConvTranspose, nn.ConvTranspose)])
def test_values_parameters_and_gradients_match_flax(case, ours, theirs):
    b, h, w, c_in, c_out, k, s = case
    x = jax.random.normal(jax.random.key(0), (b, h, w, c_in))
    mine, ref = ours(c_out, k, stride=s), theirs(c_out, (k, k), strides=(s, s), padding="SAME")
    params = ref.init(jax.random.key(1), x)
    assert jax.tree.map(np.shape, mine.init(jax.random.key(1), x)) == jax.tree.map(np.shape, params)
    np.testing.assert_array_equal(
        mine.init(jax.random.key(1), x)["params"]["kernel"], params["params"]["kernel"]
    )  # same initialiser, same draw
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
    y = ref.apply(params, x)
    np.testing.assert_allclose(mine.apply(params, x), y, atol=1e-5)
    g = jax.random.normal(jax.random.key(3), y.shape)
    grads = [
        jax.grad(lambda p, x, m=m: jnp.vdot(m.apply(p, x), g), (0, 1))(params, x)
        for m in (mine, ref)
    ]
    for a, r in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))


@pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="XLA:CPU's convolution forms; the GPU/TPU use flax's"
)
def test_no_naive_convolution_inside_a_scan(tmp_path):
    """XLA:CPU canonicalises convolutions for its fast kernels only outside loops: every
    convolution of the scanned backward pass must already be in NHWC x HWIO -> NHWC form."""
    up, down = ConvTranspose(4, 3), Conv(8, 3, stride=2)
    x = jnp.ones((4, 8, 8, 2))
    params = down.init(jax.random.key(0), x), up.init(jax.random.key(0), jnp.ones((4, 4, 4, 8)))

    def loss(p, x):
        return jnp.sum(up.apply(p[1], down.apply(p[0], x)) ** 2)

    def epoch(p, xs):
        return jax.lax.scan(
            lambda p, x: (jax.tree.map(lambda a, g: a - g, p, jax.grad(loss)(p, x)), None), p, xs
        )

    hlo = jax.jit(epoch).lower(params, jnp.ones((3, 4, 8, 8, 2))).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo)
    assert labels and set(labels) == {"b01f_01io->b01f"}, labels


def test_contractive_penalty_of_an_overcomplete_conv_code():
    """Overcomplete codes (k >= D) take forward mode, which a custom-VJP layer cannot: the
    penalty falls back to reverse mode and equals forward mode through flax's own layer."""
    from ae_jax.objectives.regularizers import jacobian_frobenius_sq

    x = jax.random.uniform(jax.random.key(0), (3, 4, 4, 1))  # D = 16
    mine, ref = Conv(8, 3, stride=2), nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME")
    params = ref.init(jax.random.key(1), x)  # code: 2 x 2 x 8 = 32 >= 16

    def encoder(m):
        return lambda xb: jnp.tanh(m.apply(params, xb[None]))[0]

    np.testing.assert_allclose(
        jacobian_frobenius_sq(encoder(mine), x), jacobian_frobenius_sq(encoder(ref), x), rtol=1e-5
    )


def test_conv_path_is_chosen_by_backend(monkeypatch):
    """auto: the custom-VJP layers on XLA:CPU, flax's own Conv / ConvTranspose elsewhere;
    AE_JAX_CONV_IMPL forces either, and an unknown name is refused."""
    from ae_jax.config import ConfigError
    from ae_jax.models.conv_ops import conv_impl

    monkeypatch.delenv("AE_JAX_CONV_IMPL", raising=False)
    assert conv_impl("cpu") == "cpu_fast"
    for backend in ("gpu", "cuda", "rocm", "tpu"):
        assert conv_impl(backend) == "flax", backend
    assert conv_impl() == ("cpu_fast" if jax.default_backend() == "cpu" else "flax")
    monkeypatch.setenv("AE_JAX_CONV_IMPL", "flax")
    assert conv_impl("cpu") == "flax"
    monkeypatch.setenv("AE_JAX_CONV_IMPL", "cpu_fast")
    assert conv_impl("tpu") == "cpu_fast"
    monkeypatch.setenv("AE_JAX_CONV_IMPL", "cudnn")
    with pytest.raises(ConfigError, match="AE_JAX_CONV_IMPL='cudnn'.*auto, cpu_fast, flax"):
        conv_impl("cpu")
    # and by a conv model's config, before the data is read (it was at the first trace)
    from conftest import make_config

    from ae_jax.config import validate

    with pytest.raises(ConfigError, match="AE_JAX_CONV_IMPL='cudnn'.*auto, cpu_fast, flax"):
        validate(make_config("model=conv"))
    validate(make_config())  # an MLP has no convolutions to compute


def test_conv_autoencoder_is_the_same_on_both_paths(monkeypatch):
    """The conv autoencoder's parameters, loss and gradients are the same whichever path the
    layers take (to float rounding: 1e-5 relative), so checkpoints move between backends."""
    from ae_jax.models.conv import ConvAutoencoder

    model = ConvAutoencoder((14, 14, 1), latent_dim=6, channels=(8, 16))
    x = jax.random.uniform(jax.random.key(0), (4, 14, 14, 1))

    def loss(params):
        return jnp.mean((model.apply(params, x)[0] - x) ** 2)

    out = {}
    for impl in ("cpu_fast", "flax"):
        monkeypatch.setenv("AE_JAX_CONV_IMPL", impl)
        params = model.init(jax.random.key(1), x)
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        assert ("custom_vjp_call" in jaxpr) == (impl == "cpu_fast"), impl
        with jax.default_matmul_precision("float32"):  # no TF32 where this runs on a GPU
            out[impl] = params, *jax.value_and_grad(loss)(params)
    (p_fast, l_fast, g_fast), (p_flax, l_flax, g_flax) = out["cpu_fast"], out["flax"]
    assert jax.tree.structure(p_fast) == jax.tree.structure(p_flax)
    for a, b in zip(jax.tree.leaves(p_fast), jax.tree.leaves(p_flax)):
        np.testing.assert_array_equal(a, b)  # same names, shapes, initialiser and draws
    np.testing.assert_allclose(l_fast, l_flax, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_flax)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
