"""The training objective of one run: corrupt -> encode -> decode -> loss + named terms.

``Objective`` is a frozen description of everything that shapes the program (loss, corruption
kind, the configured regulariser terms and their settings, the k-sparse anneal, the model with
its output activation). The scalars a sweep may vary without recompiling (noise level, every
term's strength, learning rate) are NOT in it: they arrive as the traced ``hparams`` dict
(``make_hparams``), so one compiled program serves every member of a sweep.

The loss is ``rec + sum_t hparams['reg/<t>'] * term_t`` over the terms of ``cfg.reg`` (see
``ae_jax.objectives.terms`` and ``ae_jax.registry.REGULARIZERS``). The step's metrics are
``loss``, ``loss/rec`` and one ``loss/<t>`` per term (the weighted value added to the loss), all
global-batch values whatever the number of devices.

``precision`` (``trainer.precision``, ``ae_jax.registry.PRECISIONS``) is the dtype of the
model's forward pass inside the loss (and so of its backward pass): with ``bfloat16`` the
float parameters and the (corrupted) inputs are cast to bfloat16 for the model, and its outputs
back to float32 before the reconstruction loss and the terms, so losses, metrics and the
gradients of the float32 parameters are float32 (the usual mixed precision). Terms that run the
model again (the contractive Jacobian) do so in float32. The step states the matmul precision
(``ae_jax.training.step``). Evaluation (``forward``, ``jitted``) is float32.
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
from ae_jax.models.activations import activation_fn
from ae_jax.models.sparse import k_schedule
from ae_jax.objectives.losses import global_mean, reconstruction_loss
from ae_jax.objectives.terms import TermInputs, contractive_closed_form, jacobian_sq
from ae_jax.registry import PRECISIONS, REGULARIZERS, ContractiveConfig, resolve

# {"noise_level", "lr", "reg/<term>" for each configured term}: traced float32 scalars
HParams = dict[str, jax.Array]


def make_hparams(cfg: Config) -> HParams:
    """The traced hyperparameters of a run (what a vectorised sweep may vary)."""
    out = {"noise_level": jnp.float32(cfg.noise.level), "lr": jnp.float32(cfg.optim.lr)}
    for name, term in cfg.reg.items():
        out[f"reg/{name}"] = jnp.float32(term.strength)
    return out


@dataclasses.dataclass(frozen=True)
class Term:
    """One configured term, hashable: its name and its settings without the (traced) strength."""

    name: str
    config_type: type
    settings: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, name: str, cfg: Any) -> Term:
        items = []
        for f in dataclasses.fields(cfg):
            if f.name == "strength":
                continue
            value = getattr(cfg, f.name)
            items.append((f.name, tuple(value) if isinstance(value, list) else value))
        return cls(name, type(cfg), tuple(items))

    @property
    def config(self) -> Any:
        return self.config_type(**dict(self.settings))


@dataclasses.dataclass(frozen=True)
class JittedObjective:
    forward: Any  # (params, x) -> (logits, reconstruction, code, aux)
    encode: Any  # (params, x) -> code
    features: Any  # (params, x) -> the code as features (k-sparse: model.sparse_k_features kept)
    corrupt: Any  # (keys, x, level) -> (x_tilde, mask)


@dataclasses.dataclass(frozen=True)
class Objective:
    model: nn.Module  # with its output_activation and sparse_k (ae_jax.models)
    loss: str  # registry.LOSSES
    output_activation: str  # sigmoid | linear (= model.output_activation)
    noise_kind: str = "none"
    noise_clip: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    low: float = 0.0  # data range: salt-and-pepper values and gaussian clipping
    high: float = 1.0
    terms: tuple[Term, ...] = ()
    k_start: int | None = None  # k-sparse anneal from k_start to model.sparse_k
    k_anneal_steps: int = 0
    k_features: int | None = None  # k-sparse units kept for features (None: the model's k)
    contractive_closed_form: bool = False  # the Jacobian diagnostic uses Rifai's closed form
    precision: str = "float32"  # the training forward/backward's dtype (registry.PRECISIONS)

    # ------------------------------------------------------------------ pieces
    def reconstruct(self, logits: jax.Array) -> jax.Array:
        """Data space from logits: the model's output activation."""
        return activation_fn(self.model.output_activation)(logits)

    def k_at(self, step: jax.Array | None):
        """The k-sparse k at a training step (None: the model's final ``sparse_k``)."""
        sparse_k = getattr(self.model, "sparse_k", None)
        if sparse_k is None or step is None or self.k_start is None or self.k_anneal_steps <= 0:
            return None
        return k_schedule(step, sparse_k, self.k_start, self.k_anneal_steps)

    def encode(self, params, x: jax.Array, step: jax.Array | None = None):
        """The model's code (after k-sparse selection, k annealed with the step); (B, k), aux."""
        return self.model.apply({"params": params}, x, self.k_at(step), method="encode")

    def forward(self, params, x: jax.Array, step: jax.Array | None = None):
        """(logits, reconstruction, code, aux) of clean or corrupted inputs x."""
        code, aux = self.encode(params, x, step)
        logits = self.model.apply({"params": params}, code, method="decode")
        return logits, self.reconstruct(logits), code, aux

    def compute_forward(self, params, x: jax.Array, step: jax.Array | None = None):
        """``forward`` in the training precision; every output float32 (see the module doc)."""
        dtype = PRECISIONS.get(self.precision)
        if dtype == jnp.float32:
            return self.forward(params, x, step)
        logits, _, code, aux = self.forward(cast_floats(params, dtype), x.astype(dtype), step)
        logits, code, aux = cast_floats((logits, code, aux), jnp.float32)
        return logits, self.reconstruct(logits), code, aux

    def jacobian_sq(self, params, x: jax.Array, code: jax.Array, aux: dict) -> jax.Array:
        """||J_f(x)||_F^2 per example, (B,), of the dense code: Rifai's closed form where the
        contractive term uses it, else autodiff."""
        dense = aux.get("dense_code", code)
        return jacobian_sq(self.model, params, x, dense, self.contractive_closed_form)

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
        logits, recon, code, aux = self.compute_forward(params, x_in, step)
        weights = None
        if self.noise_kind != "none" and (self.alpha, self.beta) != (1.0, 1.0):
            weights = emphasis_weights(mask, self.alpha, self.beta)
        rec = reconstruction_loss(self.loss, logits, recon, x, weights, axis_name)
        metrics = {"loss/rec": rec}
        running = dict(running)
        loss = rec
        for term in self.terms:
            inputs = TermInputs(
                params=params,
                code=code,
                dense_code=aux["dense_code"],
                aux=aux,
                x_in=x_in,
                x=x,
                running=running.get(term.name, {}),
                axis_name=axis_name,
                model=self.model,
                step=step,
            )
            out = REGULARIZERS.get(term.name)(term.config, inputs)
            extra: dict = {}
            if isinstance(out, tuple):
                out, extra = out
            # Global-batch value forward, local gradient backward (see global_mean).
            value = hparams[f"reg/{term.name}"] * global_mean(jnp.asarray(out), axis_name)
            loss = loss + value
            metrics[f"loss/{term.name}"] = value
            if extra.get("running"):
                running[term.name] = extra["running"]
            for key, m in extra.get("metrics", {}).items():
                metrics[key] = m
        metrics["loss"] = loss
        return loss, (metrics, running)

    @functools.cached_property
    def jitted(self) -> JittedObjective:
        """Compiled entry points for host-side use (figures, embeddings, evaluation)."""
        return JittedObjective(
            forward=jax.jit(lambda params, x: self.forward(params, x)),
            encode=jax.jit(lambda params, x: self.encode(params, x)[0]),
            features=jax.jit(
                lambda params, x: self.model.apply(
                    {"params": params}, x, self.k_features, method="encode"
                )[0]
            ),
            corrupt=jax.jit(self.corrupt),
        )

    def init_running(self) -> dict:
        """Each stateful term's running statistics, keyed by the term's name."""
        out = {}
        for term in self.terms:
            init = REGULARIZERS.entry(term.name).info.get("init_running")
            if init is None:
                continue
            state = resolve(init)(term.config, self.model.latent_dim)
            if state:
                out[term.name] = state
        return out


def build_objective(
    cfg: Config,
    model: nn.Module,
    output_activation: str,
    low: float,
    high: float,
    steps_per_epoch: int,
) -> Objective:
    """The Objective of a validated config for a model and the data's range.

    The model gets ``output_activation`` (the resolved one) and ``model.sparse_k`` (with
    its static bound ``sparse_k_max``); the Objective's model is the one every caller must use
    for encode / reconstruct.
    """
    m = cfg.model
    # The largest k the model is asked for (training's anneal, features): top_k's static bound.
    k_max = None
    if m.sparse_k is not None:
        k_max = max(k for k in (m.sparse_k, m.sparse_k_start, m.sparse_k_features) if k)
    model = model.clone(
        output_activation=output_activation, sparse_k=m.sparse_k, sparse_k_max=k_max
    )
    terms = tuple(Term.of(name, term) for name, term in cfg.reg.items())
    closed = any(
        isinstance(t, ContractiveConfig) and contractive_closed_form(t, model)
        for t in cfg.reg.values()
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
        terms=terms,
        k_start=m.sparse_k_start if m.sparse_k is not None else None,
        k_anneal_steps=int(m.sparse_anneal_epochs) * steps_per_epoch,
        k_features=m.sparse_k_features if m.sparse_k is not None else None,
        contractive_closed_form=closed,
        precision=cfg.trainer.precision,
    )


def cast_floats(tree: Any, dtype: Any) -> Any:
    """``tree`` with every floating-point leaf cast to ``dtype`` (integers, keys untouched)."""

    def cast(a):
        return a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a

    return jax.tree.map(cast, tree)


def as_scalar_dict(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}
