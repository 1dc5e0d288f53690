"""The per-device train step and the one-program epoch built on it.

Both are written for ONE device holding a slice of the global batch, with the data axis named
``DATA_AXIS`` for their collectives (``pmean`` of gradients; global batch statistics inside the
objective). The same functions run under ``jax.shard_map`` over a one-axis mesh, under
``jax.pmap``, or alone with ``axis_name=None`` (see ``parallel.py``).

The loss and its gradient are traced under ``jax.default_matmul_precision`` of the objective's
``trainer.precision`` (``ae_jax.registry.PRECISIONS``): ``float32`` asks for true float32
products and convolutions, so that a GPU (whose default is TensorFloat-32) or a TPU (one
bfloat16 pass) computes what the CPU computes; ``bfloat16`` runs the model in bfloat16 (see
``objective.py``) with XLA's default of one bfloat16 pass accumulated in float32. Parameters,
optimiser state and updates are float32 either way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ae_jax.registry import PRECISIONS
from ae_jax.training.objective import HParams, Objective
from ae_jax.training.state import TrainState

DATA_AXIS = "data"


def example_keys(key: jax.Array, step: jax.Array, first: jax.Array, count: int) -> jax.Array:
    """Noise keys of ``count`` examples starting at global batch position ``first``: (count,)."""
    step_key = jax.random.fold_in(key, step)
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(first + jnp.arange(count))


def device_offset(axis_name: str | None, local_batch: int) -> jax.Array:
    """Position of this device's first example in the global batch."""
    if axis_name is None:
        return jnp.zeros((), jnp.int32)
    return jax.lax.axis_index(axis_name) * local_batch


def make_train_step(
    objective: Objective,
    tx: optax.GradientTransformation,
    axis_name: str | None,
    norms: bool = False,
):
    """``step(state, x, hparams) -> (state, metrics)`` for a per-device batch x (b, *S).

    ``norms`` adds ``l2_grads``, ``l2_params`` and ``l2_updates``: three more passes over the
    parameters, which on a 2-core CPU cost ~10% of a batch-128 step of the 784-1000-500-250-30
    autoencoder and a third of its compile time (see PERFORMANCE.md).
    """

    matmul = PRECISIONS.entry(objective.precision).info["matmul"]

    def train_step(state: TrainState, x: jax.Array, hparams: HParams):
        b = x.shape[0]
        keys = example_keys(state.key, state.step, device_offset(axis_name, b), b)

        def loss_fn(params):
            return objective(params, x, keys, hparams, state.running, state.step, axis_name)

        with jax.default_matmul_precision(matmul):  # forward and backward (custom VJPs too)
            (_, (metrics, running)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: hparams["lr"] * u, updates)
        params = optax.apply_updates(state.params, updates)
        if norms:
            metrics = {
                **metrics,
                "l2_grads": optax.tree.norm(grads),
                "l2_params": optax.tree.norm(params),
                "l2_updates": optax.tree.norm(updates),
            }
        new = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, running=running
        )
        return new, metrics

    return train_step


def make_train_epoch(
    objective: Objective,
    tx: optax.GradientTransformation,
    *,
    num_examples: int,
    batch_size: int,
    num_devices: int,
    axis_name: str | None,
    step_norms: bool = False,
    passes: int = 1,
):
    """``epoch(state, data, epoch, hparams) -> (state, per_step_metrics)``: one compiled program.

    ``data`` (N, *S) is the whole training split, resident on the device; each step gathers its
    batch from a permutation drawn inside the program (``state.data_key`` folded with the epoch),
    so the host does nothing between steps. An epoch makes ``passes`` passes over the data, each
    with its own permutation (pass p of epoch e folds in e * passes + p, so one pass is the
    plain epoch): a tiny training split's thousands of epochs as a few hundred programs.
    Metrics come back per step, (passes * steps,) each, except ``l2_params``, the parameters'
    norm at the end of the epoch (a scalar), unless ``step_norms`` asks for the three norms
    of every step.
    """
    steps = num_examples // batch_size
    local = batch_size // num_devices
    step_fn = make_train_step(objective, tx, axis_name, norms=step_norms)

    def pass_order(data_key: jax.Array, index: jax.Array) -> jax.Array:
        order = jax.random.permutation(jax.random.fold_in(data_key, index), num_examples)
        return order[: steps * batch_size].reshape(steps, batch_size)  # (steps, B) global

    def train_epoch(state: TrainState, data: jax.Array, epoch: jax.Array, hparams: HParams):
        if passes == 1:
            order = pass_order(state.data_key, epoch)
        else:
            first = epoch * passes
            orders = jax.vmap(pass_order, in_axes=(None, 0))(
                state.data_key, first + jnp.arange(passes)
            )  # (passes, steps, B)
            order = orders.reshape(passes * steps, batch_size)
        order = jax.lax.dynamic_slice_in_dim(order, device_offset(axis_name, local), local, axis=1)

        def body(state, idx):  # idx: (b,) this device's share of the global batch
            return step_fn(state, jnp.take(data, idx, axis=0), hparams)

        state, metrics = jax.lax.scan(body, state, order)
        if not step_norms:  # once an epoch: finite losses and finite final parameters suffice
            metrics["l2_params"] = optax.tree.norm(state.params)
        return state, metrics

    return train_epoch
