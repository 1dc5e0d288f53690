"""One helper for every "apply a compiled function to a large array in fixed-size chunks".

Evaluation, feature extraction, layer-wise encoding and classification all run a jitted
function over N examples. Chunks of one fixed size (the last one zero-padded) mean one
compilation whatever N is, and a bounded device footprint; the results are gathered to the host
once, concatenated and trimmed to N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def map_in_chunks(fn: Callable[[np.ndarray, int], Any], x: np.ndarray, chunk: int) -> Any:
    """``fn(x[s : s + chunk], s)`` for s = 0, chunk, 2 chunk, ...; the outputs (arrays or dicts
    of arrays, leading axis = examples) concatenated on the host and trimmed to ``len(x)``.

    ``chunk`` is capped at ``len(x)``; the last chunk is zero-padded to the same size, so ``fn``
    sees one shape. ``s`` is the chunk's first example index (e.g. to derive its noise key).
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("x holds no examples; give at least one")
    chunk = min(n, chunk)
    pad = (-n) % chunk
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    parts = jax.device_get([fn(xp[s : s + chunk], s) for s in range(0, xp.shape[0], chunk)])
    return jax.tree.map(lambda *leaves: np.concatenate(leaves)[:n], *parts)


def mean_in_chunks(per_example: Callable[..., Any], chunk: int, *arrays) -> Any:
    """Inside a jitted function: the mean over examples of ``per_example(*chunks) -> (chunk,)``,
    computed over fixed-size chunks of ``arrays`` (same leading axis, the last chunk
    zero-padded and masked out) with ``lax.map``, so a large held-out split never makes one
    huge batch and the program is the same for every epoch."""
    import jax.numpy as jnp

    n = arrays[0].shape[0]
    chunk = min(n, chunk)
    pad = (-n) % chunk

    def chunks(a):
        if pad:
            a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
        return a.reshape(-1, chunk, *a.shape[1:])

    keep = (jnp.arange(n + pad) < n).reshape(-1, chunk)
    sums = jax.lax.map(
        lambda args: jnp.sum(per_example(*args[1:]) * args[0]),
        (keep, *(chunks(a) for a in arrays)),
    )
    return jnp.sum(sums) / n
