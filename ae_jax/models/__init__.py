"""Autoencoder models: one interface, three variants (MLP, linear, convolutional).

Every model is a Flax Linen module with
  ``encode(x) -> (code, aux)``     x: (B, *example_shape) -> code: (B, k)
  ``decode(code) -> logits``       code: (B, k) -> logits: (B, *example_shape)
  ``__call__(x) -> (logits, code, aux)``
where ``logits`` are the output layer's pre-activations (the reconstruction is
``output_fn(logits)``, see ``activations.py``) and ``aux`` holds what regularisers need
(``pre_code``: the code layer's pre-activation).
"""

from ae_jax.models.activations import activation_fn
from ae_jax.models.builder import build_model, default_widths, resolve_output_activation
from ae_jax.models.conv import ConvAutoencoder
from ae_jax.models.mlp import MLPAutoencoder

__all__ = [
    "ConvAutoencoder",
    "MLPAutoencoder",
    "activation_fn",
    "build_model",
    "default_widths",
    "resolve_output_activation",
]
