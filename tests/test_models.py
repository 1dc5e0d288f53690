"""Model structure: shapes, tied weights, asymmetry, linearity, the default taper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax.config import ModelConfig
from ae_jax.models import build_model, default_widths


def _init(cfg, shape=(8, 8, 1)):
    model = build_model(cfg, shape)
    x = jax.random.uniform(jax.random.key(0), (4, *shape))
    params = model.init(jax.random.key(1), x)["params"]
    return model, params, x


@pytest.mark.parametrize("kind", ["mlp", "linear", "conv"])
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (7, 5, 3)])
def test_shapes_round_trip(kind, shape):
    model, params, x = _init(ModelConfig(kind=kind, latent_dim=6), shape)
    logits, code, aux = model.apply({"params": params}, x)
    assert logits.shape == x.shape
    assert code.shape == (4, 6)
    assert aux["pre_code"].shape == (4, 6)


def test_tied_decoder_uses_the_transposed_encoder_kernels():
    model, params, x = _init(
        ModelConfig(tied=True, depth=1, widths=[16], latent_dim=4, activation="linear")
    )
    assert not any(k.startswith("decoder_") and isinstance(v, dict) for k, v in params.items())
    code, _ = model.apply({"params": params}, x, method="encode")
    w0, w1 = params["encoder_0"]["kernel"], params["encoder_1"]["kernel"]
    expected = (code @ w1.T + params["decoder_bias_0"]) @ w0.T + params["decoder_bias_1"]
    out = model.apply({"params": params}, code, method="decode").reshape(4, -1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_asymmetric_decoder():
    _, params, _ = _init(ModelConfig(depth=2, widths=[40, 20], decoder_widths=[10], latent_dim=4))
    assert params["encoder_0"]["kernel"].shape == (64, 40)
    assert params["decoder_0"]["kernel"].shape == (4, 10)
    assert params["decoder_1"]["kernel"].shape == (10, 64)
    assert "decoder_2" not in params


def test_linear_model_is_affine():
    model, params, _ = _init(ModelConfig(kind="linear", depth=2, latent_dim=3))
    a, b = (jax.random.normal(jax.random.key(i), (1, 8, 8, 1)) for i in (2, 3))
    f = lambda x: model.apply({"params": params}, x)[0]
    # affine: f(a) + f(b) - f(0) == f(a + b)
    np.testing.assert_allclose(f(a) + f(b) - f(jnp.zeros_like(a)), f(a + b), atol=1e-5)


def test_default_taper():
    assert default_widths(64, 8, 2) == (64, 32)
    assert default_widths(784, 30, 3) == (784, 333, 141)
    assert default_widths(64, 100, 1) == (200,)  # overcomplete: never narrower than 2k
    assert default_widths(64, 8, 0) == ()


def test_a_conv_kernel_larger_than_the_images_is_refused():
    # XLA compiled it for over 14 minutes, gigabytes deep, before any line said why.
    from ae_jax.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.kernel_size=9 is larger than .* 8x8 .* 1 to 8"):
        build_model(ModelConfig(kind="conv", latent_dim=8, kernel_size=9), (8, 8, 1))
    build_model(ModelConfig(kind="conv", latent_dim=8, kernel_size=8), (8, 8, 1))
    # more stride-2 layers than halvings to 1x1: 8 layers on 8x8 digits decoded 256x256
    # images (1.9 GB, 20x slower) to crop them to 8x8, with a dead code
    too_deep = ModelConfig(kind="conv", latent_dim=8, channels=[8] * 4)
    with pytest.raises(ConfigError, match=r"has 4 layers, but .* 8x8 images are 1x1 after 3 "):
        build_model(too_deep, (8, 8, 1))
    build_model(too_deep, (9, 16, 1))  # 16 wide: 4 halvings
    build_model(ModelConfig(kind="conv", latent_dim=2, kernel_size=1, channels=[4]), (1, 1, 1))
