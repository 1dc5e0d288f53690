"""Input corruption of denoising autoencoders: Gaussian, masking and salt-and-pepper noise.

Vincent et al. (2010), "Stacked Denoising Autoencoders", JMLR 11, section "Types of corruption
considered": the autoencoder sees a corrupted x̃ ~ q(x̃ | x) and is trained to reconstruct the
clean x. ``corrupt`` also returns which elements were corrupted, so the loss can put an emphasis
alpha on them and beta on the rest (same paper, "Extension: putting an emphasis on corrupted
dimensions"; ``emphasis_weights``).

``corrupt`` runs inside the jitted training step and under ``jax.vmap`` over sweep members: the
noise level may be a traced scalar and nothing branches on its value; only the noise kind (a
static string) selects code. ``validate_level`` is the host-side check of a concrete level.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ae_jax.registry import CORRUPTIONS

NOISE_KINDS = CORRUPTIONS.names()  # the registered kinds (ae_jax.registry.CORRUPTIONS)


class CorruptionError(ValueError):
    """An unknown noise kind or a noise level outside its valid range; the message says which."""


def _check_kind(kind: str) -> None:
    if kind not in CORRUPTIONS:
        raise CorruptionError(
            f"noise kind={kind!r} is not valid; choose one of: {', '.join(CORRUPTIONS.names())}"
        )


def validate_level(kind: str, level: Any) -> None:
    """Check a concrete (host) noise level for its kind; raise ``CorruptionError`` if invalid.

    masking and salt_pepper: a probability, ``0 <= level <= 1``; gaussian: a standard deviation,
    finite and ``>= 0``; none: the level is ignored. Call it on config values before compiling,
    not on traced values.
    """
    _check_kind(kind)
    if kind == "none":
        return
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise CorruptionError(
            f"noise level={level!r} for kind={kind!r} is not a number; give a float"
        ) from None
    if CORRUPTIONS.entry(kind).info.get("probability"):
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise CorruptionError(
                f"noise level={level!r} is not valid for kind={kind!r}; it is the probability "
                "that an element is corrupted and must satisfy 0 <= level <= 1"
            )
    elif not (math.isfinite(value) and value >= 0.0):
        raise CorruptionError(
            f"noise level={level!r} is not valid for kind='gaussian'; it is the noise standard "
            "deviation and must be finite and >= 0"
        )


def corrupt(
    key: jax.Array,
    x: jnp.ndarray,
    kind: str,
    level: Any,
    *,
    low: Any = 0.0,
    high: Any = 1.0,
    clip: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Draw x̃ ~ q(x̃ | x) and the mask of corrupted elements.

    * ``"gaussian"``: additive isotropic noise ``x̃ = x + level * N(0, I)``, clipped to
      [low, high] when ``clip``; every element counts as corrupted when level > 0.
    * ``"masking"``: each element independently forced to 0 with probability ``level``.
    * ``"salt_pepper"``: each element independently, with probability ``level``, set to ``low``
      or ``high`` by a fair coin.
    * ``"none"``: x unchanged, nothing corrupted.

    Level 0 returns x exactly for every kind (clipping included), so a sweep member with no noise
    is a plain autoencoder.

    Args:
      key: a PRNG key; the same key gives the same corruption.
      x: clean inputs, (B, *S).
      kind: one of ``NOISE_KINDS``; static.
      level: sigma (gaussian) or probability (masking, salt_pepper); may be traced.
      low, high: the data range: salt-and-pepper values and gaussian clip bounds.
      clip: gaussian only; static.
    Returns:
      ``(x_tilde, mask)``: x̃ with the shape and dtype of x, and a bool mask of that shape,
      True where the element was corrupted.
    Raises:
      CorruptionError: unknown ``kind``.
    """
    _check_kind(kind)
    x = jnp.asarray(x)
    level = jnp.asarray(level, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else None)
    low = jnp.asarray(low, dtype=x.dtype)
    high = jnp.asarray(high, dtype=x.dtype)
    return CORRUPTIONS.get(kind)(key, x, level, low, high, clip)


# The registered kinds: (key, x, level, low, high, clip) -> (x_tilde, mask), level etc. arrays.
def _no_noise(key, x, level, low, high, clip):
    return x, jnp.zeros(x.shape, dtype=bool)


def _gaussian(key, x, level, low, high, clip):
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise CorruptionError(
            f"gaussian noise needs floating-point inputs but x has dtype {x.dtype}; "
            "scale the data to float32 first"
        )
    noise = jax.random.normal(key, x.shape, dtype=x.dtype)  # (B, *S)
    noisy = x + level * noise
    if clip:
        noisy = jnp.clip(noisy, low, high)
    on = level > 0
    # where, not arithmetic: clipping must not alter x when level is 0.
    return jnp.where(on, noisy, x), jnp.broadcast_to(on, x.shape)


def _pick(key, x, level):
    pick_key, coin_key = jax.random.split(key)
    # uniform in [0, 1) < level: never True at level 0, always True at level 1.
    return jax.random.uniform(pick_key, x.shape) < level, coin_key  # (B, *S)


def _masking(key, x, level, low, high, clip):
    mask, _ = _pick(key, x, level)
    return jnp.where(mask, jnp.zeros_like(x), x), mask


def _salt_pepper(key, x, level, low, high, clip):
    mask, coin_key = _pick(key, x, level)
    salt = jax.random.bernoulli(coin_key, 0.5, x.shape)  # (B, *S): True -> high
    return jnp.where(mask, jnp.where(salt, high, low), x), mask


def emphasis_weights(mask: jnp.ndarray, alpha: Any, beta: Any) -> jnp.ndarray:
    """Per-element loss weights: alpha on corrupted elements, beta on the others.

    The emphasised denoising criterion of Vincent et al. (2010, "Extension: putting an emphasis
    on corrupted dimensions"): ``alpha * sum_{j corrupted} l_j + beta * sum_{j not corrupted} l_j``.
    Pass the result as ``weights`` to ``reconstruction_loss``; alpha = beta = 1 is the plain loss.

    Args:
      mask: bool, (B, *S), from ``corrupt``.
      alpha, beta: weights >= 0; may be traced.
    Returns:
      float32 weights of the mask's shape.
    """
    alpha = jnp.asarray(alpha, jnp.float32)
    beta = jnp.asarray(beta, jnp.float32)
    return jnp.where(mask, alpha, beta)
