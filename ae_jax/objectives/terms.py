"""The registered objective terms: the loss is ``rec + sum_t strength_t * term_t``.

A term is a pure function ``fn(cfg, inp) -> value`` of its config dataclass (registered beside
it in ``ae_jax.registry.REGULARIZERS``) and ``TermInputs`` (parameters, the code, the corrupted
input, its running state, the data axis...). It returns its value BEFORE weighting, or
``(value, {"running": new_state, "metrics": {...}})`` when it keeps state or logs more (a term
with state is registered with ``init_running=fn(cfg, latent_dim) -> dict``, its initial state,
which it finds again as ``inp.running``; see ``kl_sparse``). The
objective multiplies it by the traced strength ``hparams['reg/<name>']`` and passes it through
``global_mean``: a per-device mean (e.g. an L1 activity) becomes the global-batch value in the
forward pass, and the gradient stays local, so the ``pmean`` of gradients the step already does
gives exactly the single-device gradient. A term that already is a global value (KL sparsity of
the global rho_hat, weight decay) is unchanged by it.

The formulas and their sources are in ``ae_jax.objectives.regularizers``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax.objectives.regularizers import (
    batch_mean_activation,
    jacobian_frobenius_sq,
    kl_bernoulli,
    sigmoid_contractive_sq,
    update_running_mean,
)
from ae_jax.objectives.regularizers import weight_decay as _weight_decay
from ae_jax.registry import ContractiveConfig, KLSparseConfig, L1Config, WeightDecayConfig


@dataclasses.dataclass(frozen=True)
class TermInputs:
    """What a term may use (all per-device values under a data axis)."""

    params: Any  # the model's parameters
    code: jax.Array  # (B, k) the code the run uses (after k-sparse selection)
    dense_code: jax.Array  # (B, k) the code before selection
    aux: dict  # the model's aux (pre_code, code_input, ...)
    x_in: jax.Array  # (B, *S) the (corrupted) input the encoder saw
    x: jax.Array  # (B, *S) the clean target
    running: dict  # this term's running state ({} when it keeps none)
    axis_name: str | None  # the named data axis, or None on one device
    model: nn.Module  # the autoencoder (for Jacobians and closed forms)
    step: jax.Array | None = None  # optimisation step (traced), None outside training


def l1_term(cfg: L1Config, inp: TermInputs) -> jax.Array:
    """L1 activity ``mean_b sum_j |h_bj|`` of the code (``regularizers.l1_activity``)."""
    code = inp.code
    return jnp.mean(jnp.sum(jnp.abs(code), axis=tuple(range(1, code.ndim))))


def kl_sparse_init_running(cfg: KLSparseConfig, latent_dim: int) -> dict:
    """The running estimate of rho_hat starts at the target (only for ``estimate=running``)."""
    if cfg.estimate != "running":
        return {}
    return {"rho_hat": jnp.full((latent_dim,), cfg.target, jnp.float32)}


def kl_sparse_term(cfg: KLSparseConfig, inp: TermInputs):
    """``sum_j KL(target || rho_hat_j)`` with rho_hat the GLOBAL-batch mean activation (Ng)."""
    rho_batch = batch_mean_activation(inp.code, inp.axis_name)  # (k,)
    running = {}
    if cfg.estimate == "running":
        # Ng's rho_hat is a training-set average: an EMA stands in for it, while the gradient
        # flows through this batch's share of the estimate.
        rho_hat = update_running_mean(inp.running["rho_hat"], rho_batch, cfg.momentum)
        running = {"rho_hat": jax.lax.stop_gradient(rho_hat)}
    else:
        rho_hat = rho_batch
    value = jnp.sum(kl_bernoulli(cfg.target, rho_hat))
    return value, {"running": running, "metrics": {"rho_hat_mean": jnp.mean(rho_hat)}}


def contractive_closed_form(cfg: ContractiveConfig, model: nn.Module) -> bool:
    """Rifai's closed form applies: one sigmoid Dense encoder layer (or asked for)."""
    if cfg.method == "closed_form":
        return True
    if cfg.method == "autodiff":
        return False
    from ae_jax.models.mlp import MLPAutoencoder

    return (
        isinstance(model, MLPAutoencoder)
        and len(model.widths) == 0
        and model.code_activation == "sigmoid"
    )


def jacobian_sq(model: nn.Module, params, x: jax.Array, dense_code, closed_form: bool):
    """||J_f(x)||_F^2 per example, (B,), of the dense code w.r.t. the input."""
    if closed_form:
        from ae_jax.models.mlp import code_layer_kernel

        return sigmoid_contractive_sq(dense_code, code_layer_kernel(params))

    def encode_one(xi):  # (*S) -> (k,)
        return model.apply({"params": params}, xi[None], method="encode_dense")[0][0]

    return jacobian_frobenius_sq(encode_one, x)


def contractive_term(cfg: ContractiveConfig, inp: TermInputs) -> jax.Array:
    """``mean_b ||J_f(x_b)||_F^2`` (Rifai et al. 2011), closed form or autodiff, at the input
    the encoder saw: with denoising noise on, the corrupted x̃_b (the contraction of the map
    the model trains; it costs no second encoder pass), while ``test/jacobian_fro`` is
    measured at clean test inputs."""
    closed = contractive_closed_form(cfg, inp.model)
    return jnp.mean(jacobian_sq(inp.model, inp.params, inp.x_in, inp.dense_code, closed))


def weight_decay_term(cfg: WeightDecayConfig, inp: TermInputs) -> jax.Array:
    """``1/2 sum ||W||^2`` over the kernels (``regularizers.weight_decay`` with strength 1)."""
    return _weight_decay(inp.params, 1.0)
