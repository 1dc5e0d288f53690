"""A convolutional autoencoder for images: stride-2 convolutions down, transposed ones up.

Encoder: one 3x3 (``kernel_size``) stride-2 convolution per entry of ``channels`` (each halves
H and W, rounding up), flatten, Dense to the code. Decoder: Dense back to the smallest feature
map, transposed stride-2 convolutions through the channels in reverse, a last transposed
convolution to the image's channels, cropped to (H, W) when H or W is not a power-of-two
multiple.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

from ae_jax.models.activations import activation_fn
from ae_jax.models.conv_ops import Conv, ConvTranspose
from ae_jax.models.mlp import _select


class ConvAutoencoder(nn.Module):
    example_shape: tuple[int, int, int]  # (H, W, C)
    latent_dim: int
    channels: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    activation: str = "gelu"
    code_activation: str = "linear"
    output_activation: str = "linear"  # data space = output_fn(logits); see models/__init__
    sparse_k: int | None = None  # k-sparse code: units kept per example; None: dense
    sparse_k_max: int | None = None  # the largest k ever asked for (static; None: the width)

    def _bottom_shape(self) -> tuple[int, int, int]:
        h, w, _ = self.example_shape
        for _ in self.channels:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return h, w, self.channels[-1]

    def setup(self):
        # conv_ops: flax's Conv / ConvTranspose (same parameters and outputs) with backward
        # passes that XLA:CPU compiles to fast kernels inside the epoch's scan.
        self.down = [Conv(c, self.kernel_size, stride=2) for c in self.channels]
        self.to_code = nn.Dense(self.latent_dim)
        self.from_code = nn.Dense(math.prod(self._bottom_shape()))
        up = (*reversed(self.channels[:-1]), self.example_shape[-1])
        self.up = [ConvTranspose(c, self.kernel_size, stride=2) for c in up]

    def encode(self, x: jax.Array, k: jax.Array | int | None = None) -> tuple[jax.Array, dict]:
        """The code the run uses, (B, k), and aux (``dense_code``: before selection)."""
        code, aux = self.encode_dense(x)
        return _select(code, self.sparse_k, k, self.sparse_k_max), {**aux, "dense_code": code}

    def encode_dense(self, x: jax.Array) -> tuple[jax.Array, dict]:
        """The code layer's activations before any k-sparse selection: (B, k), aux."""
        act = activation_fn(self.activation)
        h = x  # (B, H, W, C)
        for conv in self.down:
            h = act(conv(h))  # (B, H/2, W/2, c)
        h = h.reshape(h.shape[0], -1)
        pre_code = self.to_code(h)  # (B, k)
        return activation_fn(self.code_activation)(pre_code), {
            "pre_code": pre_code,
            "code_input": h,
        }

    def decode(self, code: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        h = act(self.from_code(code)).reshape(code.shape[0], *self._bottom_shape())
        for i, deconv in enumerate(self.up):
            h = deconv(h)
            if i < len(self.up) - 1:
                h = act(h)
        height, width, _ = self.example_shape
        return h[:, :height, :width, :]  # (B, H, W, C) logits

    def reconstruct(self, code: jax.Array) -> jax.Array:
        """The reconstruction in data space: ``output_fn(decode(code))``, (B, H, W, C)."""
        return activation_fn(self.output_activation)(self.decode(code))

    def __call__(self, x: jax.Array, k=None) -> tuple[jax.Array, jax.Array, dict]:
        code, aux = self.encode(x, k)
        return self.decode(code), code, aux
