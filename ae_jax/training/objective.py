"""The training objective of one run: corrupt -> encode -> (sparsify) -> decode -> loss + penalty.

``Objective`` is a frozen description of everything that shapes the program (loss, corruption
kind, regulariser kind, k-sparse settings, output activation). The scalars a sweep may vary
without recompiling (noise level, regularisation strength, learning rate) are NOT in it: they
arrive as the traced ``hparams`` dict, so one compiled program serves every member of a sweep.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax.config import Config
from ae_jax.corruption import corrupt, emphasis_weights
from ae_jax.models import activation_fn
from ae_jax.models.mlp import code_layer_kernel
from ae_jax.objectives.losses import reconstruction_loss
from ae_jax.objectives.regularizers import (
    batch_mean_activation,
    contractive,
    jacobian_frobenius_sq,
    k_schedule,
    k_sparse,
    kl_sparsity,
    l1_activity,
    sigmoid_contractive_sq,
    update_running_mean,
    weight_decay,
)

HParams = dict[str, jax.Array]  # {"noise_level", "reg_strength", "lr"}: traced float32 scalars


def make_hparams(cfg: Config) -> HParams:
    """The traced hyperparameters of a run (what a vectorised sweep may vary)."""
    return {
        "noise_level": jnp.float32(cfg.noise.level),
        "reg_strength": jnp.float32(cfg.reg.strength),
        "lr": jnp.float32(cfg.optim.lr),
    }


@dataclasses.dataclass(frozen=True)
class JittedObjective:
    forward: Any  # (params, x) -> (logits, reconstruction, code, aux)
    encode: Any  # (params, x) -> code
    corrupt: Any  # (keys, x, level) -> (x_tilde, mask)


@dataclasses.dataclass(frozen=True)
class Objective:
    model: nn.Module
    loss: str  # mse | rmse | bce
    output_activation: str  # sigmoid | linear
    noise_kind: str = "none"
    noise_clip: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    low: float = 0.0  # data range: salt-and-pepper values and gaussian clipping
    high: float = 1.0
    reg_kind: str = "none"
    kl_target: float = 0.05
    kl_running: bool = False
    kl_momentum: float = 0.99
    k: int | None = None  # k-sparse target k
    k_start: int | None = None
    k_anneal_steps: int = 0
    contractive_closed_form: bool = False

    # ------------------------------------------------------------------ pieces
    def reconstruct(self, logits: jax.Array) -> jax.Array:
        return activation_fn(self.output_activation)(logits)

    def sparsify(self, code: jax.Array, step: jax.Array | None) -> jax.Array:
        """k-sparse: keep the k largest units (k annealed with the step during training)."""
        if self.reg_kind != "k_sparse":
            return code
        k = self.k
        if step is not None and self.k_start is not None and self.k_anneal_steps > 0:
            k = k_schedule(step, self.k, self.k_start, self.k_anneal_steps)
        return k_sparse(code, k)

    def encode(self, params, x: jax.Array, step: jax.Array | None = None):
        """Codes as used downstream (after k-sparsification); (B, k), aux."""
        code, aux = self.model.apply({"params": params}, x, method="encode")
        return self.sparsify(code, step), aux

    def forward(self, params, x: jax.Array, step: jax.Array | None = None):
        """(logits, reconstruction, code, aux) of clean or corrupted inputs x."""
        code, aux = self.model.apply({"params": params}, x, method="encode")
        aux = {**aux, "dense_code": code}
        code = self.sparsify(code, step)
        logits = self.model.apply({"params": params}, code, method="decode")
        return logits, self.reconstruct(logits), code, aux

    def jacobian_sq(self, params, x: jax.Array, code: jax.Array, aux: dict) -> jax.Array:
        """||J_f(x)||_F^2 per example, (B,): Rifai's closed form where it applies, else autodiff."""
        if self.contractive_closed_form:
            return sigmoid_contractive_sq(code, code_layer_kernel(params))

        def encode_one(xi):  # (*S) -> (k,)
            return self.model.apply({"params": params}, xi[None], method="encode")[0][0]

        return jacobian_frobenius_sq(encode_one, x)

    # ------------------------------------------------------------------ the loss
    def corrupt(self, keys: jax.Array, x: jax.Array, level) -> tuple[jax.Array, jax.Array]:
        """Corrupt each example with its own key: keys (B,), x (B, *S) -> (x_tilde, mask).

        One key per example (derived from the example's position in the GLOBAL batch) makes
        the noise independent of how the batch is split across devices.
        """

        def one(k, xi):
            xt, m = corrupt(
                k,
                xi[None],
                self.noise_kind,
                level,
                low=self.low,
                high=self.high,
                clip=self.noise_clip,
            )
            return xt[0], m[0]

        # On (B, D) rows: the same draws (random bits come in row-major order) in loops that
        # XLA:CPU vectorises, which it does not over the trailing 1 of (B, H, W, 1) images.
        x_tilde, mask = jax.vmap(one)(keys, x.reshape(x.shape[0], -1))
        return x_tilde.reshape(x.shape), mask.reshape(x.shape)

    def __call__(self, params, x, keys, hparams: HParams, running: dict, step, axis_name=None):
        """Loss of a per-device batch x (B, *S) and its metrics; running stats updated.

        ``keys`` (B,) are the examples' noise keys. Returns ``(loss, (metrics, running))``.
        With ``axis_name`` set, every batch statistic (losses, rho_hat) is the global-batch
        value, and the gradient averaged over the axis is the gradient of the global-batch
        objective.
        """
        x_in, mask = self.corrupt(keys, x, hparams["noise_level"])
        logits, recon, code, aux = self.forward(params, x_in, step)
        weights = None
        if self.noise_kind != "none" and (self.alpha, self.beta) != (1.0, 1.0):
            weights = emphasis_weights(mask, self.alpha, self.beta)
        rec = reconstruction_loss(self.loss, logits, recon, x, weights, axis_name)
        strength = hparams["reg_strength"]
        metrics = {}
        running = dict(running)
        if self.reg_kind == "l1":
            reg = l1_activity(code, strength)
        elif self.reg_kind == "kl_sparse":
            rho_batch = batch_mean_activation(code, axis_name)  # (k,) global-batch mean
            if self.kl_running:
                # Ng's rho_hat is a training-set average: an EMA stands in for it, while the
                # gradient flows through this batch's share of the estimate.
                rho_hat = update_running_mean(running["rho_hat"], rho_batch, self.kl_momentum)
                running["rho_hat"] = jax.lax.stop_gradient(rho_hat)
            else:
                rho_hat = rho_batch
            reg = kl_sparsity(rho_hat, self.kl_target, strength)
            metrics["rho_hat_mean"] = jnp.mean(rho_hat)
        elif self.reg_kind == "contractive":
            sq = self.jacobian_sq(params, x_in, aux["dense_code"], aux)
            reg = contractive(sq, strength)
        elif self.reg_kind == "weight_decay":
            reg = weight_decay(params, strength)
        else:  # none, k_sparse (a constraint on the code, not a penalty)
            reg = jnp.zeros((), jnp.float32)
        loss = rec + reg
        metrics.update({"loss": loss, "loss/rec": rec, "loss/reg": reg})
        return loss, (metrics, running)

    @functools.cached_property
    def jitted(self) -> JittedObjective:
        """Compiled entry points for host-side use (figures, embeddings, evaluation)."""
        return JittedObjective(
            forward=jax.jit(lambda params, x: self.forward(params, x)),
            encode=jax.jit(lambda params, x: self.encode(params, x)[0]),
            corrupt=jax.jit(self.corrupt),
        )

    def init_running(self) -> dict:
        if self.reg_kind == "kl_sparse" and self.kl_running:
            return {"rho_hat": jnp.full((self.model.latent_dim,), self.kl_target, jnp.float32)}
        return {}


def build_objective(
    cfg: Config,
    model: nn.Module,
    output_activation: str,
    low: float,
    high: float,
    steps_per_epoch: int,
) -> Objective:
    """The Objective of a validated config for a model and the data's range."""
    r, m = cfg.reg, cfg.model
    closed = r.contractive_method == "closed_form" or (
        r.contractive_method == "auto"
        and m.kind == "mlp"
        and m.depth == 0
        and m.code_activation == "sigmoid"
    )
    return Objective(
        model=model,
        loss=cfg.loss.kind,
        output_activation=output_activation,
        noise_kind=cfg.noise.kind,
        noise_clip=cfg.noise.clip,
        alpha=float(cfg.noise.alpha),
        beta=float(cfg.noise.beta),
        low=float(low),
        high=float(high),
        reg_kind=r.kind,
        kl_target=float(r.target),
        kl_running=r.estimate == "running",
        kl_momentum=float(r.momentum),
        k=r.k,
        k_start=r.k_start,
        k_anneal_steps=int(r.anneal_epochs) * steps_per_epoch,
        contractive_closed_form=r.kind == "contractive" and closed,
    )


def as_scalar_dict(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}
