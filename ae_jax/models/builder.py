"""Build the configured autoencoder for a dataset's example shape."""

from __future__ import annotations

import math

from ae_jax.config import ConfigError, ModelConfig
from ae_jax.models.conv import ConvAutoencoder
from ae_jax.models.mlp import MLPAutoencoder


def default_widths(num_features: int, latent_dim: int, depth: int) -> tuple[int, ...]:
    """The default encoder taper: the first hidden layer as wide as the input, then widths
    shrinking geometrically toward twice the code size.

    Never narrower than twice the code, so that a deep undercomplete encoder does not throttle
    itself before the code layer: 64 -> [64, 32] -> 8 on digits (depth 2, k = 8), and
    784 -> [784, 333, 141] -> 30 on MNIST (depth 3, k = 30).
    """
    top = max(num_features, 2 * latent_dim)
    bottom = 2 * latent_dim
    if depth == 0:
        return ()
    ratio = (bottom / top) ** (1.0 / depth)
    return tuple(max(bottom, round(top * ratio**i)) for i in range(depth))


def resolve_output_activation(cfg: ModelConfig, loss: str, in_unit_interval: bool) -> str:
    """``auto`` -> sigmoid for [0, 1] data (always for bce), linear otherwise and for linear AEs."""
    if cfg.output_activation != "auto":
        return cfg.output_activation
    if loss == "bce":
        return "sigmoid"
    if cfg.kind == "linear" or not in_unit_interval:
        return "linear"
    return "sigmoid"


def build_model(
    cfg: ModelConfig, example_shape: tuple[int, ...], output_activation: str = "linear"
):
    """The Flax module for ``cfg`` and a dataset whose examples have ``example_shape``.

    ``output_activation`` is the resolved one (``resolve_output_activation``: sigmoid or
    linear); ``build_objective`` sets it on the model it is given, so callers that only need the
    parameters' shapes may leave it out.
    """
    d = math.prod(example_shape)
    if cfg.kind == "conv":
        if len(example_shape) != 3:
            raise ConfigError(
                f"model=conv needs image data of shape (H, W, C); this dataset's examples have "
                f"shape {tuple(example_shape)}. Use model=mlp for tabular data"
            )
        h, w = example_shape[:2]
        if cfg.kernel_size > min(h, w):  # XLA would compile it for minutes, gigabytes deep
            raise ConfigError(
                f"model.kernel_size={cfg.kernel_size} is larger than this dataset's {h}x{w} "
                f"images; valid: 1 to {min(h, w)}"
            )
        # each layer halves the image; past 1x1 a layer halves nothing, and the decoder's
        # layers still double it (8 layers on 8x8 digits decoded 256x256 images to crop 8x8)
        halvings = max(1, math.ceil(math.log2(max(h, w))))
        if len(cfg.channels) > halvings:
            raise ConfigError(
                f"model.channels={list(cfg.channels)} has {len(cfg.channels)} layers, but this "
                f"dataset's {h}x{w} images are 1x1 after {halvings} stride-2 layer"
                f"{'s' * (halvings > 1)}; give at most {halvings}"
            )
        return ConvAutoencoder(
            example_shape=tuple(example_shape),
            latent_dim=cfg.latent_dim,
            channels=tuple(cfg.channels),
            kernel_size=cfg.kernel_size,
            activation=cfg.activation,
            code_activation=cfg.code_activation,
            output_activation=output_activation,
            sparse_k=cfg.sparse_k,
        )
    linear = cfg.kind == "linear"
    widths = (
        tuple(cfg.widths)
        if cfg.widths is not None
        else default_widths(d, cfg.latent_dim, cfg.depth)
    )
    return MLPAutoencoder(
        example_shape=tuple(example_shape),
        latent_dim=cfg.latent_dim,
        widths=widths,
        decoder_widths=None if cfg.decoder_widths is None else tuple(cfg.decoder_widths),
        activation="linear" if linear else cfg.activation,
        code_activation="linear" if linear else cfg.code_activation,
        tied=cfg.tied,
        output_activation=output_activation,
        sparse_k=cfg.sparse_k,
    )
