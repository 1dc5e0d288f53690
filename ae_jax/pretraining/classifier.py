"""Supervised fine-tuning: a (pretrained) encoder plus a softmax output layer, trained on labels.

After greedy pretraining, "a logistic regression layer is added on top of the encoders and the
whole network is fine-tuned on the supervised criterion" (Vincent et al. 2010, JMLR 11:3371,
sec. 3.5; Rifai et al. 2011 do the same with one contractive layer). The classifier's Dense
layers are named like the autoencoder's (``encoder_0..encoder_L``), so the pretrained encoder
drops in as it is, and ``classifier`` is the new softmax layer.

The train step is written for one device holding a slice of the global batch, with gradients
``pmean``-ed over ``DATA_AXIS``; one ``lax.scan`` is one epoch, compiled once through
``ae_jax.training.parallel.Parallel`` (the same pattern as ``ae_jax/training/step.py``).

``precision`` (``trainer.precision``, ``ae_jax.registry.PRECISIONS``) works as in the autoencoder's
step (``ae_jax.training.objective``, ``ae_jax.training.step``): the forward and backward pass run
in its dtype under its ``jax.default_matmul_precision`` (``float32``: true float32 products on a
GPU or TPU too; ``bfloat16``: parameters and inputs cast to bfloat16 for the model with
``cast_floats``, the logits back to float32), while the parameters, their gradients, the
optimiser state, the loss and the error stay float32. Predictions and evaluation are float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax.chunks import map_in_chunks, mean_in_chunks
from ae_jax.config import OptimConfig
from ae_jax.data import DataError
from ae_jax.models.activations import activation_fn
from ae_jax.registry import PRECISIONS
from ae_jax.training.loop import Stage, run_stage
from ae_jax.training.objective import cast_floats
from ae_jax.training.parallel import Parallel, fit_batch, select_devices
from ae_jax.training.state import jit_initializer, make_optimizer
from ae_jax.training.step import device_offset

EVAL_CHUNK = 4096  # test examples per compiled prediction call


class SupervisedError(DataError):
    """Supervised fine-tuning cannot run with these inputs (no labels, bad shapes); says why.

    A ``DataError``, so the command line reports it as one line, like any data problem.
    """


class EncoderClassifier(nn.Module):
    """``softmax(W_out h_L(x) + b)`` with ``h_L`` the deep encoder (hidden + code layers)."""

    sizes: tuple[int, ...]  # encoder output sizes, bottom first (the code last)
    num_classes: int
    activation: str = "sigmoid"  # hidden layers
    code_activation: str = "sigmoid"  # the top encoder layer

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)  # (B, D)
        last = len(self.sizes) - 1
        for i, width in enumerate(self.sizes):
            act = activation_fn(self.code_activation if i == last else self.activation)
            h = act(nn.Dense(width, name=f"encoder_{i}")(h))  # (B, width)
        return nn.Dense(self.num_classes, name="classifier")(h)  # (B, C) logits


@flax.struct.dataclass
class SupervisedState:
    step: jax.Array  # int32 scalar
    params: Any
    opt_state: Any
    data_key: jax.Array  # typed key: data order, folded with the epoch


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy ``-mean_b log softmax(z_b)[y_b]`` of a batch; scalar."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def make_supervised_epoch(
    model: EncoderClassifier,
    tx: optax.GradientTransformation,
    *,
    num_examples: int,
    batch_size: int,
    num_devices: int,
    axis_name: str | None,
    precision: str = "float32",
) -> Callable:
    """``epoch(state, (x, y), epoch, lr) -> (state, metrics)``, per device; metrics (steps,).

    ``precision`` (``PRECISIONS``): the dtype of the forward and backward pass (module doc).
    """
    steps = num_examples // batch_size
    local = batch_size // num_devices
    dtype = PRECISIONS.get(precision)
    matmul = PRECISIONS.entry(precision).info["matmul"]

    def logits_fn(params, x):  # (b, C) float32 logits, computed in the training precision
        if dtype == jnp.float32:
            return model.apply({"params": params}, x)
        logits = model.apply({"params": cast_floats(params, dtype)}, x.astype(dtype))
        return logits.astype(jnp.float32)

    def step_fn(state: SupervisedState, x, y, lr):
        def loss_fn(params):
            logits = logits_fn(params, x)  # (b, C)
            return cross_entropy(logits, y), logits

        with jax.default_matmul_precision(matmul):  # forward and backward
            (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        errors = jnp.mean((jnp.argmax(logits, -1) != y).astype(jnp.float32))
        if axis_name is not None:
            # equal slices per device: the mean of local means is the global-batch mean
            grads, loss, errors = jax.lax.pmean((grads, loss, errors), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: lr * u, updates)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new, {"loss": loss, "error_pct": 100.0 * errors}

    def epoch_fn(state: SupervisedState, data, epoch: jax.Array, lr: jax.Array):
        x_all, y_all = data
        order = jax.random.permutation(jax.random.fold_in(state.data_key, epoch), num_examples)
        order = order[: steps * batch_size].reshape(steps, batch_size)  # (steps, B) global
        order = jax.lax.dynamic_slice_in_dim(order, device_offset(axis_name, local), local, axis=1)

        def body(state, idx):  # idx: (b,) this device's share of the global batch
            return step_fn(state, jnp.take(x_all, idx, axis=0), jnp.take(y_all, idx, axis=0), lr)

        return jax.lax.scan(body, state, order)

    return epoch_fn


def make_predict(model: EncoderClassifier) -> Callable:
    """A jitted ``fn(params, x) -> (N,)`` predicted classes."""
    return jax.jit(lambda params, x: jnp.argmax(model.apply({"params": params}, x), -1))


def error_pct(
    model: EncoderClassifier,
    params,
    x: np.ndarray,
    y: np.ndarray,
    predict_fn: Callable | None = None,
) -> float:
    """Classification error in % on (x, y), predicted in fixed-size chunks (one compilation)."""
    fn = make_predict(model) if predict_fn is None else predict_fn
    predicted = map_in_chunks(lambda xb, _: fn(params, xb), x, EVAL_CHUNK)
    return float(100.0 * np.mean(predicted != y))


def init_classifier(
    model: EncoderClassifier, example_shape: Sequence[int], seed: int, encoder: dict | None = None
) -> dict:
    """Random params for ``model``, with ``encoder_i`` replaced by a pretrained encoder's."""
    x0 = jnp.zeros((1, *example_shape), jnp.float32)
    params = jax.device_get(jit_initializer(model.init)(jax.random.key(seed), x0)["params"])
    params = dict(params)
    if encoder is not None:
        for name in [k for k in params if k.startswith("encoder_")]:
            if name not in encoder:
                raise SupervisedError(
                    f"the pretrained encoder has no {name} (keys {sorted(encoder)}); "
                    f"the classifier needs {len(model.sizes)} encoder layers"
                )
            for leaf in ("kernel", "bias"):
                got, want = np.shape(encoder[name][leaf]), np.shape(params[name][leaf])
                if got != want:
                    raise SupervisedError(
                        f"pretrained {name}.{leaf} has shape {got}; the classifier needs {want}"
                    )
            params[name] = {k: np.asarray(v) for k, v in encoder[name].items()}
    return params


def train_classifier(
    model: EncoderClassifier,
    params: dict,
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    x_test: np.ndarray,
    y_test: np.ndarray | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optim: str = "adam",
    schedule: str = "constant",
    seed: int = 0,
    devices: int | None = None,
    parallel: str = "shard_map",
    eval_every: int = 5,
    on_epoch: Callable[[dict], None] | None = None,
    name: str = "supervised",
    checkpointer=None,
    resume: bool = False,
    checkpoint_every: int = 0,
    checkpoint_seconds: float | None = None,
    log_every: int = 10,
    progress: bool = True,
    precision: str = "float32",
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    patience: int | None = None,
    batch_key: str = "pretrain.supervised_batch_size",
    data_name: str = "the data",
):
    """Fine-tune ``params`` on the labels through the one loop (``ae_jax.training.loop``:
    progress lines, divergence check, checkpoints with ``checkpointer``, resume with
    ``resume``, SIGTERM); returns ``(params, history, metrics)``.

    ``metrics``: ``test/error_pct``, ``train/error_pct`` (full splits, after training),
    ``train/loss`` (last epoch), ``time/train_seconds``, ``time/compile_seconds``,
    ``compile/epoch_traces`` (1: the epoch program was traced once).

    With a validation split (``x_val``, ``y_val``) the error curve during training is
    ``val/error_pct`` on all of it, and with ``patience`` the stage stops once that many
    evaluations have not improved on the best; the best evaluation's parameters are returned
    (``train/best_epoch``, ``train/epochs_trained``) and the test split is scored once, at the
    end. Without one, the curve is ``eval/error_pct`` on the test split (a curve only).

    A ``batch_size`` larger than the training split trains on full batches (one warning
    line naming ``batch_key`` and ``data_name``; ``ae_jax.training.parallel.fit_batch``).

    ``precision`` (``trainer.precision``: float32 | bfloat16) is the dtype of the training
    forward and backward pass; parameters, optimiser state, loss and errors stay float32.

    Raises:
      SupervisedError: when labels are missing or do not match the inputs.
      ConfigError: when ``precision`` is not one of ``PRECISIONS``.
    """
    PRECISIONS.check("trainer.precision", precision)
    if y_train is None or y_test is None:
        raise SupervisedError(
            "supervised fine-tuning needs class labels, but this dataset has none; use a "
            "labelled source (data=idx, digits, tfds, or array with data.label_column) or set "
            "pretrain.supervised=false"
        )
    if y_train.shape != (x_train.shape[0],) or y_test.shape != (x_test.shape[0],):
        raise SupervisedError(
            f"labels {y_train.shape} / {y_test.shape} do not match inputs {x_train.shape[0]} / "
            f"{x_test.shape[0]}"
        )
    batch_size = fit_batch(batch_size, x_train.shape[0], devices, batch_key, data_name)
    n = x_train.shape[0]
    steps = n // batch_size
    opt_cfg = OptimConfig(name=optim, lr=lr, schedule=schedule)
    tx = make_optimizer(opt_cfg, steps * epochs, steps)
    par = Parallel(select_devices(devices, batch_size, batch_key), parallel)
    epoch_fn = make_supervised_epoch(
        model,
        tx,
        num_examples=n,
        batch_size=batch_size,
        num_devices=len(par.devices),
        axis_name=par.axis_name,
        precision=precision,
    )
    state = SupervisedState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        data_key=jax.random.fold_in(jax.random.key(seed), 0xC1A5),
    )
    data = par.place((jnp.asarray(x_train), jnp.asarray(y_train, jnp.int32)))
    state = par.place(state)
    lr_dev = par.place(jnp.float32(lr))
    program = par.compile(epoch_fn, state, data, jnp.zeros((), jnp.int32), lr_dev)
    predict_fn = make_predict(model)
    if x_val is not None:
        x_eval, y_eval, prefix = jnp.asarray(x_val), jnp.asarray(y_val, jnp.int32), "val"
    else:
        x_eval, y_eval, prefix = jnp.asarray(x_test), jnp.asarray(y_test, jnp.int32), "eval"
    if patience is not None and x_val is None:
        raise SupervisedError("early stopping needs a validation split (data.validation > 0)")
    eval_errors = jax.jit(
        lambda p, x, y: (
            100.0 * mean_in_chunks(lambda xb, yb: predict_fn(p, xb) != yb, EVAL_CHUNK, x, y)
        )
    )
    stage = Stage(
        name=name,
        epochs=epochs,
        run_epoch=lambda state, epoch: program(state, data, jnp.int32(epoch), lr_dev),
        steps_per_epoch=steps,
        batch_size=batch_size,
        evaluate=lambda state: {"error_pct": eval_errors(state.params, x_eval, y_eval)},
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        log_every=log_every,
        progress=progress,
        hint="Lower pretrain.supervised_lr and run again: the stages before it are reused",
        eval_prefix=prefix,
        monitor="error_pct" if patience is not None else None,
        patience=patience,
    )
    result = run_stage(stage, state, checkpointer=checkpointer, resume=resume, on_epoch=on_epoch)
    history = result.history
    params = jax.device_get(result.state.params)
    metrics = {}
    if result.best_epoch is not None:
        metrics["train/best_epoch"] = result.best_epoch
        metrics["train/epochs_trained"] = result.epochs_trained
    if x_val is not None:
        metrics["val/error_pct"] = error_pct(model, params, x_val, y_val, predict_fn)
    metrics |= {
        "test/error_pct": error_pct(model, params, x_test, y_test, predict_fn),
        "train/error_pct": error_pct(model, params, x_train, y_train, predict_fn),
        "train/loss": history[-1]["train/loss"],
        "time/train_seconds": result.seconds,
        "time/compile_seconds": par.compile_seconds,
        "compile/epoch_traces": par.traces,
    }
    return params, history, metrics
