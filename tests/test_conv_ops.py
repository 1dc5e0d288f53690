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
