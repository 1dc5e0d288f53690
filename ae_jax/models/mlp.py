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
from ae_jax.models.sparse import k_sparse


class MLPAutoencoder(nn.Module):
    example_shape: tuple[int, ...]
    latent_dim: int
    widths: tuple[int, ...] = ()  # encoder hidden widths
    decoder_widths: tuple[int, ...] | None = None  # None: reversed(widths)
    activation: str = "gelu"
    code_activation: str = "linear"
    tied: bool = False
    output_activation: str = "linear"  # data space = output_fn(logits); see models/__init__
    sparse_k: int | None = None  # k-sparse code: units kept per example; None: dense
    sparse_k_max: int | None = None  # the largest k ever asked for (static; None: the width)

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

    def encode_dense(self, x: jax.Array) -> tuple[jax.Array, dict]:
        """The code layer's activations before any k-sparse selection: (B, k), aux."""
        h = x.reshape(x.shape[0], -1)  # (B, D)
        act = activation_fn(self.activation)
        for layer in self.encoder[:-1]:
            h = act(layer(h))  # (B, width)
        pre_code = self.encoder[-1](h)  # (B, k)
        code = activation_fn(self.code_activation)(pre_code)
        return code, {"pre_code": pre_code, "code_input": h}

    def encode(self, x: jax.Array, k: jax.Array | int | None = None) -> tuple[jax.Array, dict]:
        """The code the run uses, (B, k), and aux (``dense_code``: before selection)."""
        code, aux = self.encode_dense(x)
        return _select(code, self.sparse_k, k, self.sparse_k_max), {**aux, "dense_code": code}

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

    def reconstruct(self, code: jax.Array) -> jax.Array:
        """The reconstruction in data space: ``output_fn(decode(code))``, (B, *S)."""
        return activation_fn(self.output_activation)(self.decode(code))

    def __call__(self, x: jax.Array, k=None) -> tuple[jax.Array, jax.Array, dict]:
        code, aux = self.encode(x, k)
        return self.decode(code), code, aux


def _select(code: jax.Array, sparse_k: int | None, k, k_max: int | None = None) -> jax.Array:
    """k-sparse selection of a code (identity for a dense code); k None: ``sparse_k``."""
    if sparse_k is None:
        return code
    return k_sparse(code, sparse_k if k is None else k, k_max)


def code_layer_kernel(params: dict) -> jnp.ndarray:
    """The code layer's kernel (D_in, k) of an MLPAutoencoder's params (used by closed forms)."""
    names = sorted((n for n in params if n.startswith("encoder_")), key=lambda n: int(n[8:]))
    return params[names[-1]]["kernel"]
