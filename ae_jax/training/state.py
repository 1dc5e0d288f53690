"""The train state and the optimiser built from the config."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax.config import OptimConfig
from ae_jax.registry import OPTIMIZERS, SCHEDULES


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimisation steps taken
    params: Any
    opt_state: Any
    key: jax.Array  # typed key: noise stream, folded with the step and the example index
    data_key: jax.Array  # typed key: data order, folded with the epoch
    running: dict  # running statistics (e.g. the KL sparsity rho_hat EMA)


# ---------------------------------------------------------------- schedules (registry.SCHEDULES)
def _constant(cfg: OptimConfig, total: int, steps_per_epoch: int) -> optax.Schedule:
    return optax.constant_schedule(1.0)


def _cosine(cfg: OptimConfig, total: int, steps_per_epoch: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(1.0, total)


def _warmup_cosine(cfg: OptimConfig, total: int, steps_per_epoch: int) -> optax.Schedule:
    warm = cfg.warmup_epochs * steps_per_epoch
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, max(warm, 1), total)


def _exponential(cfg: OptimConfig, total: int, steps_per_epoch: int) -> optax.Schedule:
    return optax.exponential_decay(1.0, total, cfg.decay_rate)


def lr_multiplier(cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule with peak 1; the peak itself is the traced ``hparams['lr']``."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(
            f"optim.schedule={cfg.schedule!r} is not valid; choose one of: "
            f"{', '.join(SCHEDULES.names())}"
        )
    return SCHEDULES.get(cfg.schedule)(cfg, max(total_steps, 1), steps_per_epoch)


# ---------------------------------------------------------------- optimisers (registry.OPTIMIZERS)
# Each gives the descent DIRECTION before the learning rate: make_optimizer scales it by the
# schedule (peak 1) and the step by the traced peak rate hparams["lr"].
def _adam(cfg: OptimConfig) -> optax.GradientTransformation:
    return optax.scale_by_adam()


def _is_kernel(params: Any) -> Any:
    """Mask: True on leaves named ``kernel`` (weights), False on biases and the rest."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(path) and getattr(path[-1], "key", None) == "kernel", params
    )


def _adamw(cfg: OptimConfig) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as ``optax.adamw``.

    The direction is ``adam(g) + wd * W`` on kernels (biases are not decayed, as in our
    ``reg=weight_decay``); the update is ``-lr * schedule * (adam(g) + wd * W)``, i.e. the decay
    is scaled by the same (traced) learning rate and schedule as the gradient step, exactly as
    ``optax.adamw(lr, weight_decay=wd)`` and PyTorch's AdamW do. ``optim.weight_decay`` is wd.
    """
    return optax.chain(
        optax.scale_by_adam(), optax.add_decayed_weights(cfg.weight_decay, mask=_is_kernel)
    )


def _sgd(cfg: OptimConfig) -> optax.GradientTransformation:
    return optax.identity()


def _momentum(cfg: OptimConfig) -> optax.GradientTransformation:
    return optax.trace(decay=cfg.momentum)


def _nesterov(cfg: OptimConfig) -> optax.GradientTransformation:
    return optax.trace(decay=cfg.momentum, nesterov=True)


def _rmsprop(cfg: OptimConfig) -> optax.GradientTransformation:
    return optax.scale_by_rms(decay=cfg.momentum)


def _adagrad(cfg: OptimConfig) -> optax.GradientTransformation:
    return optax.scale_by_rss()


def make_optimizer(cfg: OptimConfig, total_steps: int, steps_per_epoch: int):
    """An optax transformation producing DESCENT directions scaled by the schedule (peak 1).

    The step multiplies the updates by the traced peak learning rate, so a vectorised sweep can
    give every member its own rate without recompiling. The optimiser and schedule come from
    ``ae_jax.registry.OPTIMIZERS`` / ``SCHEDULES``.
    """
    if cfg.name not in OPTIMIZERS:
        raise ValueError(
            f"optim.name={cfg.name!r} is not valid; choose one of: {', '.join(OPTIMIZERS.names())}"
        )
    parts = []
    if cfg.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(OPTIMIZERS.get(cfg.name)(cfg))
    schedule = lr_multiplier(cfg, total_steps, steps_per_epoch)
    parts.append(optax.scale_by_schedule(lambda count: -schedule(count)))
    return optax.chain(*parts)


# An initialiser runs once per seed, so compiling it is most of what it costs: on the CPU it is
# compiled at LLVM's -O1 instead of XLA's default -O3, which takes 40-60% less compile time (the
# default digits model 1.5 -> 0.9 CPU-s, the conv model 2.7 -> 1.1, Hinton's 2.2 -> 1.5) and
# computes bitwise the same values (tests/test_trainer.py checks every model). Not so for the
# evaluation programs: at -O1 the conv model's differ in their last bits and run 2.7x slower.
INIT_CPU_OPTIONS = {"xla_backend_optimization_level": 1}


def jit_initializer(fn):
    """``jax.jit(fn)``, compiled with ``INIT_CPU_OPTIONS`` when the backend is the CPU (decided at
    the first call, so that importing this module does not start JAX's backends). Traced inside
    another program (``jax.eval_shape``, a ``jit``), where JAX refuses compiler options, it is a
    plain ``jax.jit(fn)``."""
    plain, jitted = jax.jit(fn), None

    @functools.wraps(fn)
    def call(*args):
        nonlocal jitted
        if jitted is None:
            cpu = jax.default_backend() == "cpu"
            jitted = jax.jit(fn, compiler_options=INIT_CPU_OPTIONS) if cpu else plain
        try:
            return jitted(*args)
        except ValueError:  # nested in a trace (or fn's own error, which plain raises again)
            return plain(*args)

    return call


@functools.lru_cache(maxsize=32)
def _init_fn(model, tx, example_shape: tuple[int, ...]):
    """The jitted initialiser of a (hashable) model and optimiser: from a seed, the three keys
    (init, noise, data) and the initial (params, opt_state), in ONE program compiled once and
    reused by every seed (op by op, init and each key derivation would compile separately)."""

    def init(seed):
        init_key, noise_key, data_key = jax.random.split(jax.random.key(seed), 3)
        params = model.init(init_key, jnp.zeros((1, *example_shape), jnp.float32))["params"]
        return params, tx.init(params), noise_key, data_key

    return jit_initializer(init)


def create_state(
    model, tx, example_shape, seed: int, running: dict, abstract: bool = False
) -> TrainState:
    """Initial parameters and optimiser state for ``seed`` (deterministic). ``abstract``: their
    shapes and dtypes only (``jax.ShapeDtypeStruct``), traced without compiling anything (the
    compiled initialiser, with its compiler options, cannot be traced inside another program)."""
    init = _init_fn(model, tx, tuple(example_shape))
    if abstract:
        params, opt_state, noise_key, data_key = jax.eval_shape(init.__wrapped__, np.int32(seed))
        running = jax.eval_shape(lambda: running)
    else:
        params, opt_state, noise_key, data_key = init(np.int32(seed))
    return TrainState(
        step=jax.ShapeDtypeStruct((), np.int32) if abstract else np.zeros((), np.int32),
        params=params,
        opt_state=opt_state,
        key=noise_key,
        data_key=data_key,
        running=running,
    )
