"""Strided SAME convolutions and their transposes, with backward passes XLA:CPU runs fast.

``flax.linen.Conv`` / ``ConvTranspose`` leave their gradients to autodiff, which emits
convolutions in non-canonical dimension orders (kernel gradients contract over the batch:
``f01b_i01o->01bf``; input gradients use a reversed ``01oi`` kernel). XLA:CPU rewrites those into
its fast (Eigen) form only in a program's entry computation: inside ``lax.scan`` (the trainer's
one-program epoch) they compile to naive loops. On a 2-core CPU the conv autoencoder's train step
took ~500 ms of CPU per batch of 128 inside the epoch scan against ~105 ms as a standalone jit.

Here every convolution of the forward AND backward pass is written in the canonical
``NHWC x HWIO -> NHWC`` form, and kernel gradients are one matrix product of input patches
against the output gradient. In one spatial dimension (channels contract alike), for a
stride-s convolution with SAME padding ``(lo, hi)`` and kernel size k:

    y[o] = sum_i W[i] x_pad[s o + i]                        (forward)
    dx   = conv(dilate_s(g), flip(W)^T, padding (k-1-lo, .))  (input gradient)
    dW[i] = sum_o x_pad[s o + i] g[o] = patches(x)^T g        (kernel gradient)

A transposed convolution is the adjoint of a strided one (``lax.conv_transpose``), so its input
gradient is the strided convolution with the flipped kernel and its kernel gradient the flipped
patches product. Values and gradients equal flax's to float rounding.

Only XLA:CPU needs this. On a GPU or TPU, XLA's own convolution passes handle autodiff's
backward convolutions inside loops too, and cuDNN / the TPU's convolution units are tuned for
them, so there the layers compute with flax's ``nn.Conv`` / ``nn.ConvTranspose`` (applied to
the same ``kernel`` and ``bias``: parameters and checkpoints are the same either way). The
choice is made when a layer is traced (``conv_impl``): ``AE_JAX_CONV_IMPL`` = ``auto``
(default: ``cpu_fast`` on the CPU backend, ``flax`` on any other), ``cpu_fast`` or ``flax``
forces one (the names: ``ae_jax.registry.CONV_IMPLS``). Set it before the first trace: a
compiled program keeps the path it was traced with.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ae_jax.registry import CONV_IMPLS, requested_conv_impl

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv_impl(backend: str | None = None, requested: str | None = None) -> str:
    """The convolution path for ``backend`` (default: ``jax.default_backend()``).

    ``requested`` (default: ``$AE_JAX_CONV_IMPL``, else ``auto``) is ``auto`` or a name of
    ``CONV_IMPLS``; ``auto`` picks the entry whose ``backends`` name this backend (``cpu_fast``
    for ``cpu``), else ``flax`` (gpu, cuda, rocm, tpu, ...).
    """
    requested = requested_conv_impl(requested)
    if requested != "auto":
        return requested
    backend = jax.default_backend() if backend is None else backend
    for name in CONV_IMPLS:
        if backend in CONV_IMPLS.entry(name).info.get("backends", ()):
            return name
    return "flax"


def same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """(before, after) padding of a stride-s SAME convolution of n positions (TensorFlow's)."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def transpose_padding(k: int, s: int) -> tuple[int, int]:
    """(before, after) padding of the dilated input of a SAME ``lax.conv_transpose``."""
    total = k + s - 2
    before = k - 1 if s > k - 1 else math.ceil(total / 2)
    return before, total - before


def _flip(kernel: jax.Array) -> jax.Array:
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # (k, k, a, b) -> (k, k, b, a)


def _strided(x, kernel, s, pads):
    return lax.conv_general_dilated(x, kernel, (s, s), pads, dimension_numbers=DIMENSIONS)


def _dilated(x, kernel, s, pads):
    return lax.conv_general_dilated(
        x, kernel, (1, 1), pads, lhs_dilation=(s, s), dimension_numbers=DIMENSIONS
    )


def _kernel_grad(x, g, k, s, pads):
    """sum over b, o of x_pad[b, s o + i] g[b, o]: (k, k, C_x, C_g), as one matrix product."""
    x = jnp.pad(x, ((0, 0), *[(lo, max(hi, 0)) for lo, hi in pads], (0, 0)))  # taps read < hi
    b, h, w, c = g.shape[0], g.shape[1], g.shape[2], x.shape[3]
    taps = [
        x[:, i : i + s * (h - 1) + 1 : s, j : j + s * (w - 1) + 1 : s, :]
        for i in range(k)
        for j in range(k)
    ]  # k*k x (B, h, w, C_x)
    patches = jnp.stack(taps, axis=3).reshape(b * h * w, k * k * c)  # (B h w, k k C_x)
    grad = patches.T @ g.reshape(b * h * w, -1)  # (k k C_x, C_g)
    return grad.reshape(k, k, c, g.shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """SAME convolution, (B, H, W, C_in) x (k, k, C_in, C_out) -> (B, H/s, W/s, C_out)."""
    k = kernel.shape[0]
    pads = [same_padding(n, k, stride) for n in x.shape[1:3]]
    return _strided(x, kernel, stride, pads)


def _conv_fwd(x, kernel, stride):
    return conv(x, kernel, stride), (x, kernel)


def _conv_bwd(stride, residuals, g):
    x, kernel = residuals
    k = kernel.shape[0]
    pads = [same_padding(n, k, stride) for n in x.shape[1:3]]
    # dilate_s(g) padded to give back n positions: (k-1-lo) before, the rest after.
    back = [
        (k - 1 - lo, n + k - 2 - (m - 1) * stride - (k - 1 - lo))
        for (lo, _), n, m in zip(pads, x.shape[1:3], g.shape[1:3])
    ]
    dx = _dilated(g, _flip(kernel), stride, back)
    return dx, _kernel_grad(x, g, k, stride, pads)


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``lax.conv_transpose(x, kernel, (s, s), "SAME")``: (B, h, w, C_in) -> (B, sh, sw, C_out)."""
    return lax.conv_transpose(x, kernel, (stride, stride), "SAME", dimension_numbers=DIMENSIONS)


def _adjoint_pads(k, s, in_hw, out_hw):
    p = k - 1 - transpose_padding(k, s)[0]
    return [(p, (n - 1) * s + k - m - p) for n, m in zip(in_hw, out_hw)]


def _conv_transpose_fwd(x, kernel, stride):
    return conv_transpose(x, kernel, stride), (x, kernel)


def _conv_transpose_bwd(stride, residuals, g):
    x, kernel = residuals
    k = kernel.shape[0]
    pads = _adjoint_pads(k, stride, x.shape[1:3], g.shape[1:3])
    dx = _strided(g, _flip(kernel), stride, pads)  # the adjoint: a strided convolution
    return dx, _flip(_kernel_grad(g, x, k, stride, pads))


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


class _SameConvLayer(nn.Module):
    """A SAME-padded (transposed) convolution layer with flax's parameters: a ``kernel``
    (k, k, C_in, C_out), LeCun-normal, and a zero ``bias`` (C_out,)."""

    features: int
    kernel_size: int
    stride: int = 1
    op = staticmethod(conv)  # (x, kernel, stride) -> y; not a dataclass field
    flax_layer = nn.Conv  # what computes on the "flax" path; not a dataclass field

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
        )  # (k, k, C_in, C_out)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if CONV_IMPLS.entry(conv_impl()).info["custom_vjp"]:
            return self.op(x, kernel, self.stride) + bias
        # flax's own layer, unbound (parent=None), applied to this layer's parameters
        layer = self.flax_layer(
            self.features, (k, k), strides=(self.stride,) * 2, padding="SAME", parent=None
        )
        return layer.apply({"params": {"kernel": kernel, "bias": bias}}, x)


class Conv(_SameConvLayer):
    """``nn.Conv(features, (k, k), strides=(s, s), padding="SAME")``: same parameters, outputs
    (B, H/s, W/s, C_out)."""


class ConvTranspose(_SameConvLayer):
    """``nn.ConvTranspose(features, (k, k), strides=(s, s), padding="SAME")``: same parameters
    and outputs (B, s h, s w, C_out)."""

    stride: int = 2
    op = staticmethod(conv_transpose)
    flax_layer = nn.ConvTranspose
