"""The train state and the optimiser built from the config."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ae_jax.config import OptimConfig


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimisation steps taken
    params: Any
    opt_state: Any
    key: jax.Array  # typed key: noise stream, folded with the step and the example index
    data_key: jax.Array  # typed key: data order, folded with the epoch
    running: dict  # running statistics (e.g. the KL sparsity rho_hat EMA)


def lr_multiplier(cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule with peak 1; the peak itself is the traced ``hparams['lr']``."""
    total = max(total_steps, 1)
    if cfg.schedule == "constant":
        return optax.constant_schedule(1.0)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(1.0, total)
    if cfg.schedule == "warmup_cosine":
        warm = cfg.warmup_epochs * steps_per_epoch
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, max(warm, 1), total)
    if cfg.schedule == "exponential":
        return optax.exponential_decay(1.0, total, cfg.decay_rate)
    raise ValueError(f"optim.schedule={cfg.schedule!r} is not valid")


def make_optimizer(cfg: OptimConfig, total_steps: int, steps_per_epoch: int):
    """An optax transformation producing DESCENT directions scaled by the schedule (peak 1).

    The step multiplies the updates by the traced peak learning rate, so a vectorised sweep can
    give every member its own rate without recompiling.
    """
    parts = []
    if cfg.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    direction = {
        "adam": lambda: optax.scale_by_adam(),
        "sgd": lambda: optax.identity(),
        "momentum": lambda: optax.trace(decay=cfg.momentum),
        "nesterov": lambda: optax.trace(decay=cfg.momentum, nesterov=True),
        "rmsprop": lambda: optax.scale_by_rms(decay=cfg.momentum),
        "adagrad": lambda: optax.scale_by_rss(),
    }
    if cfg.name not in direction:
        raise ValueError(
            f"optim.name={cfg.name!r} is not valid; choose one of: {', '.join(direction)}"
        )
    parts.append(direction[cfg.name]())
    schedule = lr_multiplier(cfg, total_steps, steps_per_epoch)
    parts.append(optax.scale_by_schedule(lambda count: -schedule(count)))
    return optax.chain(*parts)


@functools.lru_cache(maxsize=32)
def _init_fn(model, tx, example_shape: tuple[int, ...]):
    """The jitted initialiser of (params, opt_state) for a (hashable) model and optimiser:
    compiled once, reused by every seed. (Op by op, init would compile each op separately.)"""

    def init(key):
        params = model.init(key, jnp.zeros((1, *example_shape), jnp.float32))["params"]
        return params, tx.init(params)

    return jax.jit(init)


def create_state(model, tx, example_shape, seed: int, running: dict) -> TrainState:
    """Initial parameters and optimiser state for ``seed`` (deterministic)."""
    root = jax.random.key(seed)
    init_key, noise_key, data_key = jax.random.split(root, 3)
    params, opt_state = _init_fn(model, tx, tuple(example_shape))(init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        key=noise_key,
        data_key=data_key,
        running=running,
    )
