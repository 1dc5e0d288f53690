"""Training objectives of ae-jax: reconstruction losses and regularisers, as pure JAX functions.

``losses`` holds the reconstruction losses and ``global_mean`` (global-batch statistics under a
data axis); ``regularizers`` the sparsity, contractive, k-sparse and weight-decay penalties.
Input corruption for denoising lives in ``ae_jax.corruption``.
"""

from ae_jax.objectives.losses import (
    LOSSES,
    LossError,
    binary_cross_entropy_with_logits,
    global_mean,
    reconstruction_loss,
    squared_error,
    sum_squared_error,
)
from ae_jax.objectives.regularizers import (
    RegularizerError,
    batch_mean_activation,
    contractive,
    jacobian_frobenius_sq,
    k_schedule,
    k_sparse,
    kl_bernoulli,
    kl_sparsity,
    l1_activity,
    sigmoid_contractive_sq,
    update_running_mean,
    weight_decay,
)

__all__ = [
    "LOSSES",
    "LossError",
    "RegularizerError",
    "batch_mean_activation",
    "binary_cross_entropy_with_logits",
    "contractive",
    "global_mean",
    "jacobian_frobenius_sq",
    "k_schedule",
    "k_sparse",
    "kl_bernoulli",
    "kl_sparsity",
    "l1_activity",
    "reconstruction_loss",
    "sigmoid_contractive_sq",
    "squared_error",
    "sum_squared_error",
    "update_running_mean",
    "weight_decay",
]
