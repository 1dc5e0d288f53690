"""Activation functions by name, shared by every model (names: ``registry.ACTIVATIONS``)."""

from __future__ import annotations

from collections.abc import Callable

import jax

from ae_jax.registry import ACTIVATIONS


def identity(x: jax.Array) -> jax.Array:
    """The ``linear`` activation."""
    return x


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name``; ValueError listing the registered names otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS.names())}"
        )
    return ACTIVATIONS.get(name)
