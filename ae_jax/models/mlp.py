"""Fully connected autoencoders: deep/stacked, shallow, linear, tied or asymmetric.

The encoder is ``depth`` hidden Dense layers then a Dense code layer; the decoder is its own
stack of Dense layers (by default the encoder's widths reversed) ending in a Dense layer of the
input's size. With ``tied=True`` every decoder kernel is the transpose of the matching encoder
kernel (Vincent et al. 2010; Rifai et al. 2011), and only the decoder's biases are free.
A linear autoencoder is this module with every activation ``linear``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax.models.activations import activation_fn


class MLPAutoencoder(nn.Module):
    example_shape: tuple[int, ...]
    latent_dim: int
    widths: tuple[int, ...] = ()  # encoder hidden widths
    decoder_widths: tuple[int, ...] | None = None  # None: reversed(widths)
    activation: str = "gelu"
    code_activation: str = "linear"
    tied: bool = False

    @property
    def num_features(self) -> int:
        return math.prod(self.example_shape)

    def _decoder_widths(self) -> tuple[int, ...]:
        return tuple(reversed(self.widths)) if self.decoder_widths is None else self.decoder_widths

    def setup(self):
        self.encoder = [nn.Dense(w) for w in (*self.widths, self.latent_dim)]
        out_widths = (*self._decoder_widths(), self.num_features)
        if self.tied:
            # Decoder layer i reuses encoder layer (L-1-i) transposed; only its bias is new.
            self.decoder_biases = [
                self.param(f"decoder_bias_{i}", nn.initializers.zeros, (w,))
                for i, w in enumerate(out_widths)
            ]
        else:
            self.decoder = [nn.Dense(w) for w in out_widths]

    def encode(self, x: jax.Array) -> tuple[jax.Array, dict]:
        h = x.reshape(x.shape[0], -1)  # (B, D)
        act = activation_fn(self.activation)
        for layer in self.encoder[:-1]:
            h = act(layer(h))  # (B, width)
        pre_code = self.encoder[-1](h)  # (B, k)
        code = activation_fn(self.code_activation)(pre_code)
        return code, {"pre_code": pre_code, "code_input": h}

    def decode(self, code: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        h = code  # (B, k)
        n = len(self._decoder_widths()) + 1
        for i in range(n):
            if self.tied:
                kernel = self.encoder[n - 1 - i].variables["params"]["kernel"]  # (out, in)
                h = h @ kernel.T + self.decoder_biases[i]
            else:
                h = self.decoder[i](h)
            if i < n - 1:
                h = act(h)
        return h.reshape(code.shape[0], *self.example_shape)  # (B, *S) logits

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        code, aux = self.encode(x)
        return self.decode(code), code, aux


def code_layer_kernel(params: dict) -> jnp.ndarray:
    """The code layer's kernel (D_in, k) of an MLPAutoencoder's params (used by closed forms)."""
    names = sorted((n for n in params if n.startswith("encoder_")), key=lambda n: int(n[8:]))
    return params[names[-1]]["kernel"]
