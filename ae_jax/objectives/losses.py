"""Reconstruction losses of ae-jax: per-example errors and the scalar training loss.

Every function is pure and safe inside a jitted, per-device training step that may run under
``jax.shard_map`` or ``jax.pmap`` (one named data axis, ``axis_name``), alone (``axis_name=None``),
or ``jax.vmap``-ed over sweep members: nothing branches on array values, only on static strings.

Conventions: ``recon`` / ``logits`` / ``target`` have shape (B, *S) with ``target`` in the model's
data space; per-example functions return (B,); ``reconstruction_loss`` returns a scalar that, when
``axis_name`` is set, is the GLOBAL-batch loss in the forward pass (see ``global_mean``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ae_jax.registry import RECONSTRUCTION_LOSSES as LOSS_REGISTRY

LOSSES = LOSS_REGISTRY.names()  # the registered losses (ae_jax.registry.RECONSTRUCTION_LOSSES)

_TINY = math.ldexp(1.0, -100)  # ~7.9e-31: floor under sqrt, representable in float32 and bfloat16


class LossError(ValueError):
    """A loss was asked for by an unknown name or given arrays whose shapes do not match."""


def global_mean(x: jnp.ndarray, axis_name: str | None) -> jnp.ndarray:
    """Mean over the data axis in the forward pass; local gradient in the backward pass.

    Forward: ``pmean(x, axis_name)``; backward: d/dx = identity. Write a per-device statistic
    ``m_d`` (e.g. the local mean squared error) and a nonlinear ``f`` of the global mean
    ``M = (1/n) sum_d m_d`` (equal per-device batches). Each device then computes
    ``f'(M) dm_d/dθ``; averaging these gradients with ``pmean`` afterwards gives
    ``f'(M) (1/n) sum_d dm_d/dθ = d f(M)/dθ``, exactly the single-device gradient over the whole
    batch (tested in ``tests/test_losses.py``). The backward pass stays local, so the one
    ``pmean`` of gradients the step already does is the only collective gradients go through.

    Convention this relies on (the pmap one): each device differentiates its own loss with
    respect to its own device-varying copy of the parameters, then gradients are averaged with
    ``pmean``. That holds under ``jax.pmap``, under ``jax.shard_map(..., check_vma=False)``, and
    under ``jax.shard_map`` with ``check_vma=True`` once the parameters are cast to varying
    (``jax.lax.pcast(params, axis_name, to="varying")``). With ``check_vma=True`` and
    replicated (invariant) parameters, JAX's autodiff itself sums gradients over the devices,
    so this term, and every plain local mean, would come out n times too large.

    The value equals ``pmean(x)`` on every device but is typed device-varying under
    ``check_vma=True``; ``pmean`` it once more (numerically a no-op) to return it replicated.

    Args:
      x: any array of per-device statistics.
      axis_name: the named data axis, or None when the step runs on one device (identity).
    """
    if axis_name is None:
        return x
    return x + jax.lax.stop_gradient(jax.lax.pmean(x, axis_name) - x)


def _check_same_shape(name: str, a: jnp.ndarray, target: jnp.ndarray) -> None:
    # Shapes are static under jit, so this check costs nothing at run time.
    if a.shape != target.shape:
        raise LossError(
            f"{name} has shape {tuple(a.shape)} but target has shape {tuple(target.shape)}; "
            "they must be equal, (B, *S)"
        )
    if a.ndim < 1:
        raise LossError(f"{name} has shape {tuple(a.shape)}; expected a batch, shape (B, *S)")


def _feature_axes(x: jnp.ndarray) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _flat(a: jnp.ndarray) -> jnp.ndarray:
    """(B, *S) -> (B, D), a free reshape. XLA:CPU vectorises an elementwise loop along the
    minor dimension, which is 1 for (B, H, W, 1) images: on (B, 784) the losses and their
    gradients ran 3-5x faster (1.8 ms of a 6.7 ms forward pass at batch 128, PERFORMANCE.md)."""
    return a.reshape(a.shape[0], -1)


def _per_example_mean(values: jnp.ndarray, weights: jnp.ndarray | None) -> jnp.ndarray:
    """Mean over features of ``weights * values``: (B, *S) -> (B,).

    Normalised by the NUMBER of features, not by the sum of weights: all-ones weights give the
    plain mean, and alpha, beta keep the absolute meaning of Vincent et al. (2010, sec. 4.2),
    ``alpha * sum_{corrupted} + beta * sum_{uncorrupted}`` (up to the constant 1/D). Dividing by
    ``sum(weights)`` instead would make the scale depend on the corruption drawn in each batch.
    """
    if weights is not None:
        values = values * weights
    return jnp.mean(values, axis=_feature_axes(values))


def _squared(recon: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    _check_same_shape("recon", recon, target)
    return jnp.square(_flat(recon) - _flat(target))  # (B, D)


def _bce(logits: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    _check_same_shape("logits", logits, target)
    # max(z, 0) - z t + log(1 + exp(-|z|)): stable for any logit, and one exp and one log a
    # pixel (optax.sigmoid_binary_cross_entropy takes two of each: 2% of a Hinton AE step).
    # Both branches pick z >= 0, so the autodiff gradient is sigmoid(z) - t at z = 0 too
    # (jnp.maximum and jnp.abs each break that tie their own way, and disagree).
    z, t = _flat(logits), _flat(target)
    positive = z >= 0
    magnitude = jnp.where(positive, z, -z)  # |z|
    return jnp.where(positive, z, 0.0) - z * t + jnp.log1p(jnp.exp(-magnitude))  # (B, D)


def squared_error(recon: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Per-pixel mean squared error of each example: ``(1/D) sum_i (x̂_i - x_i)^2``.

    Args:
      recon: reconstructions x̂, (B, *S).
      target: clean inputs x, (B, *S).
    Returns:
      (B,) mean over the D = prod(S) features.
    """
    return _per_example_mean(_squared(recon, target), None)


def sum_squared_error(recon: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Per-image sum of squared errors ``sum_i (x̂_i - x_i)^2``.

    The unit Hinton & Salakhutdinov (2006, Science) report MNIST reconstruction errors in.

    Args:
      recon: reconstructions x̂, (B, *S).
      target: clean inputs x, (B, *S).
    Returns:
      (B,) sum over the features.
    """
    sq = _squared(recon, target)  # (B, D)
    return jnp.sum(sq, axis=_feature_axes(sq))


def binary_cross_entropy_with_logits(logits: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Per-example mean binary cross-entropy of targets in [0, 1] under ``sigmoid(logits)``.

    ``-(1/D) sum_i [x_i log σ(z_i) + (1 - x_i) log(1 - σ(z_i))]`` (Vincent et al. 2010, eq. 2
    with the mean instead of the sum), computed from the logits z as
    ``max(z, 0) - z x + log(1 + exp(-|z|))`` so it never evaluates log(0).

    Args:
      logits: pre-sigmoid outputs z, (B, *S).
      target: inputs x in [0, 1], (B, *S).
    Returns:
      (B,) mean over the features.
    """
    return _per_example_mean(_bce(logits, target), None)


BCE_EPS = 1e-7  # a reconstruction in [0, 1] is clipped to [eps, 1 - eps] (Keras's epsilon)


def binary_cross_entropy(recon: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Per-example mean binary cross-entropy of targets in [0, 1] under a reconstruction x̂
    taken as the probabilities, clipped to [``BCE_EPS``, 1 - ``BCE_EPS``] (Keras's
    ``binary_crossentropy`` of outputs that are no logits): the held-out BCE of a model with a
    linear output, whose decoder output is the reconstruction itself, not a logit.

    Returns:
      (B,) mean over the features.
    """
    p = jnp.clip(recon, BCE_EPS, 1.0 - BCE_EPS)
    return _per_example_mean(-(target * jnp.log(p) + (1.0 - target) * jnp.log1p(-p)), None)


def reconstruction_loss(
    kind: str,
    logits: jnp.ndarray,
    recon: jnp.ndarray,
    target: jnp.ndarray,
    weights: jnp.ndarray | None = None,
    axis_name: str | None = None,
) -> jnp.ndarray:
    """The scalar reconstruction loss of a (per-device) batch, by name.

    * ``"mse"``: ``mean_b (1/D) sum_i w_bi (x̂_bi - x_bi)^2``;
    * ``"rmse"``: ``sqrt(global_mean(mse))``, the square root of the GLOBAL-batch MSE;
    * ``"bce"``: ``mean_b (1/D) sum_i w_bi BCE(z_bi, x_bi)`` with logits z (``recon`` unused).

    ``weights`` (B, *S) are optional per-element weights, e.g. the denoising emphasis of
    Vincent et al. (2010, sec. 4.2): alpha on corrupted and beta on uncorrupted elements
    (``ae_jax.corruption.emphasis_weights``). They multiply the elementwise errors before the mean
    over features, so weights of all ones give exactly the plain loss.

    With ``axis_name`` set, the result passes through ``global_mean``: its value is the
    global-batch loss on every device, and the gradient, once averaged with ``pmean``, is the
    gradient of the global-batch loss. For ``rmse`` this matters: sqrt of a local mean is not
    sqrt of the global mean.

    Args:
      kind: one of ``LOSSES``; static.
      logits: pre-sigmoid outputs, (B, *S); used by ``bce``.
      recon: reconstructions in data space, (B, *S); used by ``mse`` and ``rmse``.
      target: clean inputs, (B, *S).
      weights: optional per-element weights, (B, *S) or broadcastable to it.
      axis_name: the named data axis, or None on one device.
    Returns:
      Scalar loss.
    Raises:
      LossError: unknown ``kind`` or mismatched shapes.
    """
    if weights is not None:  # (B, D), as the elementwise losses
        weights = _flat(jnp.broadcast_to(weights, target.shape))
    if kind not in LOSS_REGISTRY:
        raise LossError(f"loss kind={kind!r} is not valid; choose one of: {', '.join(LOSSES)}")
    entry = LOSS_REGISTRY.entry(kind)  # elementwise loss of (logits or recon, target): (B, D)
    pred = logits if entry.info.get("uses") == "logits" else recon
    per_example = _per_example_mean(entry.fn(pred, target), weights)  # (B,)
    loss = global_mean(jnp.mean(per_example), axis_name)
    if entry.info.get("root"):
        # sqrt'(0) is infinite: floor at a tiny value so a perfect reconstruction gives a zero
        # gradient instead of NaN; the value differs from sqrt(mse) only below 1e-30.
        loss = jnp.sqrt(jnp.maximum(loss, _TINY))
    return loss
