"""Autoencoder models: one interface, three variants (MLP, linear, convolutional).

Every model is a Flax Linen module with
  ``encode(x, k=None) -> (code, aux)``  x: (B, *example_shape) -> code: (B, k), the code the
                                        run uses: code activation applied and, with
                                        ``sparse_k`` set, the k largest units kept (``k``: the
                                        annealed k during training; None: ``sparse_k``)
  ``encode_dense(x) -> (code, aux)``    the code before k-sparse selection
  ``decode(code) -> logits``            code -> the output layer's pre-activations, (B, *S)
                                        (what BCE-with-logits takes)
  ``reconstruct(code) -> x_hat``        ``output_fn(decode(code))``: the reconstruction in
                                        data space (``output_activation``: sigmoid | linear)
  ``__call__(x, k=None) -> (logits, code, aux)``
``aux`` holds what regularisers need (``pre_code``: the code layer's pre-activation,
``code_input``: its input, ``dense_code``: the code before selection). Training
(``ae_jax.training.objective``), evaluation, figures and feature extraction
(``ae_jax.features``) all go through these methods.
"""

from ae_jax.models.activations import activation_fn
from ae_jax.models.builder import build_model, default_widths, resolve_output_activation
from ae_jax.models.conv import ConvAutoencoder
from ae_jax.models.mlp import MLPAutoencoder
from ae_jax.models.sparse import k_schedule, k_sparse

__all__ = [
    "ConvAutoencoder",
    "MLPAutoencoder",
    "activation_fn",
    "build_model",
    "default_widths",
    "k_schedule",
    "k_sparse",
    "resolve_output_activation",
]
