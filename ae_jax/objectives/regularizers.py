"""Regularisers of the classic autoencoders: L1, KL sparsity, contractive, weight decay.

Each is a pure function with its formula and source in the docstring and an explicit strength.
All are safe inside a jitted per-device step under ``jax.shard_map`` / ``jax.pmap`` and under
``jax.vmap`` over sweep members: strengths, targets and k may be traced scalars, and nothing
branches on array values. Batch statistics that enter a nonlinearity (the KL sparsity's rho_hat)
go through ``global_mean`` so they are global-batch values when ``axis_name`` is set.

These are the formulas; ``ae_jax.objectives.terms`` wraps them as the registered objective terms.
The k-sparse selection is a layer of the model now (``ae_jax.models.sparse``; ``k_sparse`` and
``k_schedule`` are re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from ae_jax.models.sparse import k_schedule, k_sparse
from ae_jax.objectives.losses import global_mean

__all__ = [
    "RegularizerError",
    "batch_mean_activation",
    "contractive",
    "jacobian_frobenius_sq",
    "k_schedule",
    "k_sparse",
    "kl_bernoulli",
    "kl_sparsity",
    "l1_activity",
    "sigmoid_contractive_sq",
    "update_running_mean",
    "weight_decay",
]

_RHO_EPS = 1e-6  # clip for rho_hat so log(rho_hat) and log(1 - rho_hat) stay finite


class RegularizerError(ValueError):
    """A regulariser was given arrays of the wrong shape; the message names them."""


def _check_batched(name: str, x: jnp.ndarray, min_ndim: int = 2) -> None:
    if x.ndim < min_ndim:
        raise RegularizerError(
            f"{name} has shape {tuple(x.shape)}; expected at least {min_ndim} dims, (B, k, ...)"
        )


def l1_activity(code: jnp.ndarray, strength: Any) -> jnp.ndarray:
    """L1 activity penalty ``strength * mean_b sum_j |h_bj|``.

    A Laplace prior on the code (Goodfellow et al., Deep Learning, sec. 14.2.1; the Keras blog
    "Building Autoencoders in Keras", 2016, ``activity_regularizer=l1``).

    Args:
      code: code activations h, (B, k) or (B, *K) (summed over all non-batch axes).
      strength: lambda >= 0, may be traced.
    Returns:
      Scalar penalty.
    """
    _check_batched("code", code)
    per_example = jnp.sum(jnp.abs(code), axis=tuple(range(1, code.ndim)))  # (B,)
    return strength * jnp.mean(per_example)


def kl_bernoulli(rho: Any, rho_hat: jnp.ndarray) -> jnp.ndarray:
    """Elementwise KL divergence between Bernoulli(rho) and Bernoulli(rho_hat).

    ``KL(rho || rho_hat) = rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat))``
    (Ng, CS294A lecture notes "Sparse autoencoder", section "Autoencoders and sparsity").
    rho_hat is clipped to
    [1e-6, 1 - 1e-6] so a saturated unit gives a large finite value, not inf; ``xlogy`` makes
    rho = 0 or 1 well defined (0 log 0 = 0).

    Args:
      rho: target activation in [0, 1], scalar or broadcastable; may be traced.
      rho_hat: mean activations, any shape.
    Returns:
      KL, the broadcast shape of rho and rho_hat; >= 0 and = 0 iff rho_hat = rho.
    """
    rho_hat = jnp.clip(rho_hat, _RHO_EPS, 1.0 - _RHO_EPS)
    rho = jnp.asarray(rho, dtype=rho_hat.dtype)
    return (
        xlogy(rho, rho)
        - xlogy(rho, rho_hat)
        + xlogy(1 - rho, 1 - rho)
        - xlogy(1 - rho, 1 - rho_hat)
    )


def batch_mean_activation(code: jnp.ndarray, axis_name: str | None = None) -> jnp.ndarray:
    """rho_hat_j = mean over the (global) batch of unit j's activation.

    ``rho_hat_j = (1/B) sum_b h_bj`` (Ng, CS294A notes, over the batch instead of the whole
    training set). Under a data axis it is the mean over
    the GLOBAL batch in the forward pass (``global_mean``), so the KL of it, with gradients
    averaged afterwards, has exactly the single-device gradient.

    Args:
      code: code activations in (0, 1), (B, k).
      axis_name: the named data axis, or None on one device.
    Returns:
      (k,) mean activation per unit.
    """
    _check_batched("code", code)
    return global_mean(jnp.mean(code, axis=0), axis_name)  # (k,)


def kl_sparsity(rho_hat: jnp.ndarray, target: Any, strength: Any) -> jnp.ndarray:
    """KL sparsity penalty ``strength * sum_j KL(target || rho_hat_j)``.

    Ng, CS294A lecture notes "Sparse autoencoder" (``beta * sum_j KL(rho || rho_hat_j)``).

    Args:
      rho_hat: mean activation per code unit, (k,) (``batch_mean_activation`` or a running
        estimate).
      target: the target activation rho in (0, 1); may be traced.
      strength: beta >= 0; may be traced.
    Returns:
      Scalar penalty.
    """
    return strength * jnp.sum(kl_bernoulli(target, rho_hat))


def update_running_mean(running: jnp.ndarray, batch_value: jnp.ndarray, momentum: Any) -> Any:
    """Exponential moving average ``momentum * running + (1 - momentum) * batch_value``.

    The running-estimate option of the KL sparsity penalty: Ng's notes define rho_hat over the
    whole training set, which an EMA of minibatch values tracks better than one small batch.
    ``running`` is state, not a parameter: no
    gradient flows into it, while the gradient through ``batch_value`` is kept, so
    ``kl_sparsity(update_running_mean(r, rho_hat, m), ...)`` trains with weight (1 - m) on the
    current batch.

    Args:
      running: previous estimate, any shape.
      batch_value: this batch's value, same shape.
      momentum: in [0, 1]; may be traced. 0 keeps only the batch value.
    Returns:
      The new running estimate, same shape.
    """
    return momentum * jax.lax.stop_gradient(running) + (1 - momentum) * batch_value


def sigmoid_contractive_sq(h: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Closed-form ||J_f(x)||_F^2 of one sigmoid layer ``h = sigmoid(x @ kernel + b)``.

    ``||J_f(x)||_F^2 = sum_i (h_i (1 - h_i))^2 sum_j W_ij^2`` (Rifai et al. 2011, "Contractive
    Auto-Encoders", ICML: the closed form for a sigmoid encoder). The paper's W is (k, D); a Flax
    Dense kernel is (D, k), so
    ``W_ij = kernel[j, i]`` and ``sum_j W_ij^2`` is the squared norm of kernel column i.

    Args:
      h: the layer's activations, (B, k).
      kernel: the Dense kernel, (D, k).
    Returns:
      (B,) squared Frobenius norm of the encoder Jacobian at each example.
    """
    _check_batched("h", h)
    if kernel.ndim != 2 or kernel.shape[1] != h.shape[-1]:
        raise RegularizerError(
            f"kernel has shape {tuple(kernel.shape)} but h has shape {tuple(h.shape)}; "
            f"expected a Dense kernel of shape (D, {h.shape[-1]})"
        )
    col_sq = jnp.sum(jnp.square(kernel), axis=0)  # (k,)
    return jnp.square(h * (1 - h)) @ col_sq  # (B,)


def jacobian_frobenius_sq(
    encode_fn: Callable[[jnp.ndarray], jnp.ndarray], x: jnp.ndarray
) -> jnp.ndarray:
    """||J_f(x_b)||_F^2 of any encoder f, for each example of a batch, by autodiff.

    ``||J_f(x)||_F^2 = sum_ij (d h_i / d x_j)^2`` (Rifai et al. 2011, the CAE penalty), for deep
    encoders
    where the closed form of ``sigmoid_contractive_sq`` does not apply. The Jacobian is k x D;
    reverse mode costs k backward passes and forward mode D forward passes, so ``jacrev`` is used
    when k < D (the usual undercomplete code) and ``jacfwd`` otherwise (overcomplete codes), unless
    the encoder has layers with a custom VJP only (the conv model's), which take ``jacrev``.

    Args:
      encode_fn: maps ONE example (*S) to its code (k,) (any output shape; k = its size).
        Close over the parameters.
      x: inputs, (B, *S).
    Returns:
      (B,) squared Frobenius norms.
    """
    if x.ndim < 1:
        raise RegularizerError(f"x has shape {tuple(x.shape)}; expected a batch, (B, *S)")
    out = jax.eval_shape(encode_fn, x[0])  # static: no compute
    k = 1
    for n in out.shape:
        k *= n
    d = x[0].size
    jac = jax.jacrev(encode_fn)
    if k >= d:
        try:  # forward mode is cheaper here, unless a layer defines only its VJP (conv_ops)
            jax.eval_shape(jax.jacfwd(encode_fn), x[0])
            jac = jax.jacfwd(encode_fn)
        except TypeError:
            pass

    def one(xb: jnp.ndarray) -> jnp.ndarray:
        return jnp.sum(jnp.square(jac(xb)))  # J: (*K, *S)

    return jax.vmap(one)(x)  # (B,)


def contractive(sq_norms: jnp.ndarray, strength: Any) -> jnp.ndarray:
    """Contractive penalty ``strength * mean_b ||J_f(x_b)||_F^2`` (Rifai et al. 2011).

    Args:
      sq_norms: (B,) from ``sigmoid_contractive_sq`` or ``jacobian_frobenius_sq``.
      strength: lambda >= 0; may be traced.
    Returns:
      Scalar penalty.
    """
    return strength * jnp.mean(sq_norms)


def _leaf_name(path: tuple[Any, ...]) -> str | None:
    if not path:
        return None
    last = path[-1]
    for attr in ("key", "name"):  # DictKey.key, GetAttrKey.name
        value = getattr(last, attr, None)
        if isinstance(value, str):
            return value
    return None


def weight_decay(params: Any, strength: Any) -> jnp.ndarray:
    """L2 weight penalty ``strength / 2 * sum ||W||^2`` over all leaves named ``kernel``.

    Biases (and any other leaf) are not decayed (Goodfellow et al., Deep Learning, sec. 7.1.1;
    Hinton & Salakhutdinov 2006 decay weights only). A tied kernel is one leaf, counted once.

    Args:
      params: a Flax parameter pytree (nested dicts).
      strength: lambda >= 0; may be traced.
    Returns:
      Scalar penalty (0 when there are no kernels).
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    total = jnp.zeros((), jnp.float32)
    for path, leaf in leaves:
        if _leaf_name(path) == "kernel":
            total = total + jnp.sum(jnp.square(leaf))
    return 0.5 * strength * total
