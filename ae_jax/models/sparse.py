"""The k-sparse code layer (Makhzani & Frey 2013): keep the k largest units, zero the rest.

A constraint on the code, not a penalty: ``model.sparse_k`` makes it part of the model's
``encode`` (``ae_jax.models``), with k optionally annealed during training (``k_schedule``).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def k_sparse(code: jnp.ndarray, k: Any) -> jnp.ndarray:
    """Keep the k largest code units of each example and zero the rest (Makhzani & Frey 2013).

    "k-Sparse Autoencoders" (ICLR 2014): the support ``supp_k(z)`` keeps the k largest
    activations. Exactly min(k, K) units survive per row even with ties: units are ranked by a
    stable descending sort (earlier index wins a tie) and those of rank < k kept. Ranks, not
    ``lax.top_k``, so k may be a traced integer (annealing, sweeps) without recompiling. The
    gradient is the identity on kept units and zero on dropped ones.

    Args:
      code: (B, K) code before selection.
      k: units kept per example; int or traced int scalar.
    Returns:
      (B, K) code with at most k nonzeros per row.
    """
    if code.ndim < 2:
        raise ValueError(f"code has shape {tuple(code.shape)}; expected (B, K)")
    order = jnp.argsort(code, axis=-1, descending=True, stable=True)  # (B, K) unit indices
    ranks = jnp.argsort(order, axis=-1)  # (B, K): position of each unit in the sorted order
    return jnp.where(ranks < k, code, jnp.zeros_like(code))


def k_schedule(step: Any, k_target: Any, k_start: Any, anneal_steps: Any) -> jnp.ndarray:
    """k at a training step: linear from ``k_start`` to ``k_target`` over ``anneal_steps``.

    ``k(t) = round(k_start + (k_target - k_start) * min(t / anneal_steps, 1))``, then
    ``k_target``. Makhzani & Frey (2013) schedule the sparsity level: a large k first, so every
    unit gets gradient and none dies early, then lowered to the target. ``anneal_steps = 0`` or
    ``k_start = None`` (static) gives ``k_target`` from the first step. All arguments except
    ``k_start = None`` may be traced.

    Returns:
      int32 scalar.
    """
    k_target = jnp.asarray(k_target, jnp.float32)
    if k_start is None:
        return jnp.round(k_target).astype(jnp.int32)
    k_start = jnp.asarray(k_start, jnp.float32)
    steps = jnp.asarray(anneal_steps, jnp.float32)
    frac = jnp.where(
        steps > 0, jnp.clip(jnp.asarray(step, jnp.float32) / jnp.maximum(steps, 1.0), 0.0, 1.0), 1.0
    )
    return jnp.round(k_start + (k_target - k_start) * frac).astype(jnp.int32)
