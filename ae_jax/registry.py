"""Registries: the one list of names of every pluggable piece of ae-jax.

A ``Registry`` maps a name to an implementation (a callable, or a ``"module:attribute"`` string
imported on first use) plus optional metadata (``config``: the dataclass of the entry's settings;
anything else as keyword ``info``). Config validation (``ae_jax.config``: its error messages list
the registered names) and the code that dispatches on a name both read the same registry, so a
name is listed exactly once (Hydra's option files in ``conf/`` are presets of registered names).

This module imports neither JAX nor any other part of ae-jax: ``ae_jax.config`` validates
against it, and the implementations (which import JAX) are only imported when an entry is used.

The registries:

  ``REGULARIZERS``           objective terms ``reg.<name>``: config dataclass + pure function
                             (``ae_jax.objectives.terms``)
  ``CORRUPTIONS``            ``noise.kind`` (``ae_jax.corruption``)
  ``RECONSTRUCTION_LOSSES``  ``loss.kind`` (``ae_jax.objectives.losses``)
  ``OPTIMIZERS``             ``optim.name``, ``pretrain.layer_optim``,
                             ``pretrain.supervised_optim`` (``ae_jax.training.state``)
  ``SCHEDULES``              ``optim.schedule``, ``pretrain.supervised_schedule``
  ``ACTIVATIONS``            ``model.activation`` / ``code_activation``
                             (``ae_jax.models.activations``)
  ``CONV_IMPLS``             how the conv model's layers compute: ``cpu_fast`` / ``flax``
                             (``ae_jax.models.conv_ops``; env ``AE_JAX_CONV_IMPL``)
  ``PRECISIONS``             ``trainer.precision``: float32 / bfloat16 compute
                             (``ae_jax.training.step``)

Adding an objective term is one function and one dataclass (and, for Hydra, one file
``conf/reg/<name>.yaml`` holding ``<name>: {strength: ...}``)::

    @dataclasses.dataclass
    class L2ActivityConfig(TermConfig):
        strength: float = 1e-3

    def l2_activity(cfg, inp):  # inp: ae_jax.objectives.terms.TermInputs
        return jnp.mean(jnp.sum(jnp.square(inp.code), axis=-1))

    REGULARIZERS.register("l2_activity", l2_activity, config=L2ActivityConfig)
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value is out of range or does not fit the data; the message says which."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name: its implementation, its config dataclass (if any), metadata."""

    name: str
    target: Any  # a callable, or "module:attribute" imported on first use
    config: type | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def fn(self) -> Any:
        """The implementation (imported now when registered as a ``"module:attr"`` string)."""
        return resolve(self.target)


def resolve(target: Any) -> Any:
    """``target`` itself, or the object a ``"module:attr"`` string names (imported now)."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Names -> implementations of one kind (``what`` names the kind in error messages)."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        target: Any = None,
        *,
        config: type | None = None,
        overwrite: bool = False,
        **info: Any,
    ):
        """Register ``target`` under ``name``; without ``target``, a decorator.

        Raises:
          ValueError: when ``name`` is taken (unless ``overwrite``).
        """
        if target is None:
            return lambda fn: self.register(name, fn, config=config, overwrite=overwrite, **info)
        if name in self._entries and not overwrite:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = Entry(name, target, config, dict(info))
        return target

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; ConfigError listing the registered names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.what} {name!r}; registered: {', '.join(self._entries)}"
            ) from None

    def get(self, name: str) -> Any:
        """The implementation registered as ``name``."""
        return self.entry(name).fn

    def check(self, key: str, value: Any, names: tuple[str, ...] | None = None) -> None:
        """ConfigError ``key=value is not valid; choose one of: ...`` unless registered."""
        valid = self.names() if names is None else names
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


# ---------------------------------------------------------------------------- objective terms


def _check_strength(prefix: str, strength: Any) -> None:
    ok = (
        isinstance(strength, (int, float))
        and not isinstance(strength, bool)
        and math.isfinite(strength)
        and strength >= 0
    )
    if not ok:
        raise ConfigError(
            f"{prefix}.strength={strength!r} is not valid; it must be a finite number >= 0"
        )


@dataclasses.dataclass
class TermConfig:
    """Base of every objective term's config: the term enters the loss as ``strength * term``.

    ``strength`` is traced (``hparams['reg/<name>']``): a vectorised sweep may vary it.
    Subclasses add their own settings and may extend ``check``.
    """

    strength: float = 0.0

    def check(self, cfg: Any, prefix: str) -> None:
        """Raise ConfigError for a bad value; ``cfg`` is the whole Config, ``prefix`` e.g.
        ``reg.kl_sparse``."""
        _check_strength(prefix, self.strength)


@dataclasses.dataclass
class L1Config(TermConfig):
    strength: float = 1e-4  # lambda of mean_b sum_j |h_bj|


@dataclasses.dataclass
class KLSparseConfig(TermConfig):
    strength: float = 0.1  # beta of sum_j KL(target || rho_hat_j)
    target: float = 0.05  # rho, the target mean activation
    estimate: str = "batch"  # batch (minibatch rho_hat) | running (EMA of rho_hat)
    momentum: float = 0.99  # running estimate: EMA momentum

    def check(self, cfg: Any, prefix: str) -> None:
        super().check(cfg, prefix)
        if not (
            isinstance(self.target, (int, float)) and not isinstance(self.target, bool)
        ) or not (0.0 < self.target < 1.0):
            raise ConfigError(
                f"{prefix}.target={self.target!r} is not valid; KL sparsity needs 0 < target < 1"
            )
        if self.estimate not in ("batch", "running"):
            raise ConfigError(
                f"{prefix}.estimate={self.estimate!r} is not valid; choose one of: batch, running"
            )
        # 1 would keep the running estimate at its start, the target: the penalty and its
        # gradient 0 for the whole run, without a word
        ok = isinstance(self.momentum, (int, float)) and 0.0 <= self.momentum < 1.0
        if not ok:
            raise ConfigError(
                f"{prefix}.momentum={self.momentum!r} must be a number in [0, 1) (at 1 the "
                "running estimate never leaves the target, and the penalty is 0)"
            )
        code = cfg.model.code_activation
        if code != "sigmoid" or cfg.model.kind == "linear":
            raise ConfigError(
                f"reg {prefix.rsplit('.', 1)[-1]} needs code activations in (0, 1) but "
                f"model.code_activation={code!r}"
                f"{' (model.kind=linear)' if cfg.model.kind == 'linear' else ''}; "
                "set model.code_activation=sigmoid"
            )


CONTRACTIVE_METHODS = ("auto", "closed_form", "autodiff")


@dataclasses.dataclass
class ContractiveConfig(TermConfig):
    strength: float = 0.1  # lambda of mean_b ||J_f(x_b)||_F^2
    method: str = "auto"  # auto | closed_form (one sigmoid layer) | autodiff

    def check(self, cfg: Any, prefix: str) -> None:
        super().check(cfg, prefix)
        if self.method not in CONTRACTIVE_METHODS:
            raise ConfigError(
                f"{prefix}.method={self.method!r} is not valid; choose one of: "
                f"{', '.join(CONTRACTIVE_METHODS)}"
            )
        m = cfg.model
        if self.method == "closed_form" and not (
            m.depth == 0 and m.code_activation == "sigmoid" and m.kind == "mlp"
        ):
            got = (
                f"model={m.kind}"
                if m.kind != "mlp"
                else f"depth={m.depth}, code_activation={m.code_activation!r}"
            )
            raise ConfigError(
                f"{prefix}.method=closed_form needs a single sigmoid encoder layer "
                f"(model=shallow, or model.depth=0 and model.code_activation=sigmoid), got "
                f"{got}; use {prefix}.method=autodiff"
            )


@dataclasses.dataclass
class WeightDecayConfig(TermConfig):
    strength: float = 1e-4  # lambda of lambda/2 * sum ||W||^2 (kernels only)


REGULARIZERS = Registry("regulariser term")
REGULARIZERS.register("l1", "ae_jax.objectives.terms:l1_term", config=L1Config)
REGULARIZERS.register(
    "kl_sparse",
    "ae_jax.objectives.terms:kl_sparse_term",
    config=KLSparseConfig,
    init_running="ae_jax.objectives.terms:kl_sparse_init_running",
)
REGULARIZERS.register(
    "contractive", "ae_jax.objectives.terms:contractive_term", config=ContractiveConfig
)
REGULARIZERS.register(
    "weight_decay", "ae_jax.objectives.terms:weight_decay_term", config=WeightDecayConfig
)


def entry_settings(
    registry: Registry, name: str, value: Any, prefix: str, kind: str, default: type | None = None
) -> Any:
    """``value`` (a mapping, None, or the entry's dataclass) as the settings dataclass of
    ``registry``'s entry ``name``; ConfigError for an unknown name or key, naming the registered
    names / the valid keys. ``kind`` names the entries in messages ("term", "logger")."""
    if name not in registry:
        raise ConfigError(
            f"{prefix}.{name} is not a registered {kind}; registered: {', '.join(registry.names())}"
        )
    cls = registry.entry(name).config or default
    if isinstance(value, cls):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{prefix}.{name}={value!r} is not valid; give a mapping of its settings "
            f"({', '.join(f.name for f in dataclasses.fields(cls))})"
        )
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in value:
        if key not in valid:
            raise ConfigError(
                f"{prefix}.{name}.{key} is not a setting of {kind} {name!r}; valid: "
                f"{', '.join(valid)}"
            )
    return cls(**{str(k): v for k, v in value.items()})


def term_config(name: str, value: Any, prefix: str = "reg") -> TermConfig:
    """``value`` as the registered dataclass of regulariser term ``name`` (see
    ``entry_settings``)."""
    return entry_settings(REGULARIZERS, name, value, prefix, "regulariser term", TermConfig)


# ---------------------------------------------------------------------------- the rest

CORRUPTIONS = Registry("noise kind")
CORRUPTIONS.register("none", "ae_jax.corruption:_no_noise", probability=False)
CORRUPTIONS.register("gaussian", "ae_jax.corruption:_gaussian", probability=False)
CORRUPTIONS.register("masking", "ae_jax.corruption:_masking", probability=True)
CORRUPTIONS.register("salt_pepper", "ae_jax.corruption:_salt_pepper", probability=True)

RECONSTRUCTION_LOSSES = Registry("reconstruction loss")
RECONSTRUCTION_LOSSES.register("mse", "ae_jax.objectives.losses:_squared", uses="recon")
RECONSTRUCTION_LOSSES.register("rmse", "ae_jax.objectives.losses:_squared", uses="recon", root=True)
RECONSTRUCTION_LOSSES.register("bce", "ae_jax.objectives.losses:_bce", uses="logits")

# Each optimiser: (OptimConfig) -> an optax transformation giving the descent DIRECTION before
# the learning rate (the step multiplies by the traced lr; see ae_jax.training.state).
OPTIMIZERS = Registry("optimiser")
OPTIMIZERS.register("adam", "ae_jax.training.state:_adam")
OPTIMIZERS.register("adamw", "ae_jax.training.state:_adamw", weight_decay=True)
OPTIMIZERS.register("sgd", "ae_jax.training.state:_sgd")
OPTIMIZERS.register("momentum", "ae_jax.training.state:_momentum")
OPTIMIZERS.register("nesterov", "ae_jax.training.state:_nesterov")
OPTIMIZERS.register("rmsprop", "ae_jax.training.state:_rmsprop")
OPTIMIZERS.register("adagrad", "ae_jax.training.state:_adagrad")

# Each schedule: (OptimConfig, total_steps, steps_per_epoch) -> an optax schedule with peak 1.
SCHEDULES = Registry("learning-rate schedule")
SCHEDULES.register("constant", "ae_jax.training.state:_constant")
SCHEDULES.register("cosine", "ae_jax.training.state:_cosine")
SCHEDULES.register("warmup_cosine", "ae_jax.training.state:_warmup_cosine", warmup=True)
SCHEDULES.register("exponential", "ae_jax.training.state:_exponential")

ACTIVATIONS = Registry("activation")
ACTIVATIONS.register("sigmoid", "jax.nn:sigmoid")
ACTIVATIONS.register("tanh", "jax.numpy:tanh")
ACTIVATIONS.register("relu", "jax.nn:relu")
ACTIVATIONS.register("gelu", "jax.nn:gelu")
ACTIVATIONS.register("linear", "ae_jax.models.activations:identity")

# How the conv model's layers compute (ae_jax.models.conv_ops; env AE_JAX_CONV_IMPL, default
# auto: the entry whose ``backends`` name the default backend, else flax). Same parameters.
CONV_IMPLS = Registry("convolution implementation")
CONV_IMPLS.register(
    "cpu_fast", "ae_jax.models.conv_ops:conv", custom_vjp=True, backends=("cpu",)
)  # canonical-form backward convolutions: XLA:CPU runs them fast inside lax.scan
CONV_IMPLS.register("flax", "flax.linen:Conv", custom_vjp=False)  # autodiff through nn.Conv
CONV_IMPL_ENV = "AE_JAX_CONV_IMPL"  # auto (default) | a name registered in CONV_IMPLS


def requested_conv_impl(requested: str | None = None) -> str:
    """``requested`` (default: ``$AE_JAX_CONV_IMPL``, else ``auto``): ``auto`` or a name of
    ``CONV_IMPLS``, else a ConfigError naming the variable (``config.validate`` asks it of a conv
    model, so that a bad value is refused before the data is read)."""
    if requested is None:
        requested = os.environ.get(CONV_IMPL_ENV, "").strip() or "auto"
    if requested != "auto" and requested not in CONV_IMPLS:
        raise ConfigError(
            f"{CONV_IMPL_ENV}={requested!r} is not valid; choose one of: "
            f"auto, {', '.join(CONV_IMPLS.names())}"
        )
    return requested


# trainer.precision: the dtype of the forward and backward pass (parameters, optimiser state,
# losses and metrics stay float32) and the matmul precision stated for them
# (jax.default_matmul_precision; see ae_jax.training.step).
PRECISIONS = Registry("training precision")
PRECISIONS.register("float32", "jax.numpy:float32", matmul="float32")
PRECISIONS.register("bfloat16", "jax.numpy:bfloat16", matmul="bfloat16")

__all__ = [
    "ACTIVATIONS",
    "CONV_IMPLS",
    "CORRUPTIONS",
    "PRECISIONS",
    "RECONSTRUCTION_LOSSES",
    "OPTIMIZERS",
    "REGULARIZERS",
    "SCHEDULES",
    "ConfigError",
    "ContractiveConfig",
    "Entry",
    "KLSparseConfig",
    "L1Config",
    "Registry",
    "TermConfig",
    "WeightDecayConfig",
    "resolve",
    "term_config",
]
