"""The run loop: build everything a config asks for, compile one epoch program, train.

``Trainer`` owns the model, objective, optimiser and the compiled programs for one dataset and
config; ``fit`` runs the epochs. The host never waits on the device between epochs: epoch e+1
is dispatched before epoch e's metrics are fetched, and a non-finite loss is found (at the exact
step) from those lagged metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax.config import Config, ConfigError
from ae_jax.data import Dataset
from ae_jax.models import build_model, resolve_output_activation
from ae_jax.objectives.losses import squared_error
from ae_jax.training.checkpoint import Checkpointer
from ae_jax.training.objective import HParams, Objective, build_objective, make_hparams
from ae_jax.training.parallel import Parallel, select_devices
from ae_jax.training.state import TrainState, create_state, make_optimizer
from ae_jax.training.step import make_train_epoch

log = logging.getLogger("ae_jax")
EVAL_EXAMPLES = 2048  # held-out examples behind the eval/mse curve during training


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


@contextlib.contextmanager
def sigterm_flag():
    """Within the block, SIGTERM sets a flag (read by calling the yielded function) instead of
    killing the process, so the epoch in flight can finish and be checkpointed."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received.is_set  # signals can only be handled on the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: received.set())
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


def validate_against_data(cfg: Config, data: Dataset) -> None:
    """Checks that need the loaded data (value range, shapes, sizes); raise ConfigError."""
    lo, hi = float(data.x_train.min()), float(data.x_train.max())
    if cfg.loss.kind == "bce" and not data.in_unit_interval:
        raise ConfigError(
            f"loss=bce needs data in [0, 1], but {data.name} spans [{lo:.4g}, {hi:.4g}] "
            f"(data.scaling={data.scaling}); use data.scaling=unit or loss=mse"
        )
    if cfg.model.output_activation == "sigmoid" and not data.in_unit_interval:
        raise ConfigError(
            f"model.output_activation=sigmoid cannot reproduce data in [{lo:.4g}, {hi:.4g}]; "
            "use output_activation=linear (or auto) or data.scaling=unit"
        )
    n = data.x_train.shape[0]
    if cfg.trainer.batch_size > n:
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} exceeds the {n} training examples "
            f"of {data.name}; valid: 1..{n}"
        )
    d = data.num_features
    if cfg.model.latent_dim > d and cfg.reg.kind in ("none", "weight_decay"):
        log.warning(
            "model.latent_dim=%d > input dimension %d with reg=%s: an overcomplete code can "
            "learn the identity; add a sparsity or contractive regulariser",
            cfg.model.latent_dim,
            d,
            cfg.reg.kind,
        )


class Trainer:
    """Model, objective, optimiser and the compiled epoch program of one config and dataset."""

    def __init__(self, cfg: Config, data: Dataset):
        validate_against_data(cfg, data)
        self.cfg, self.data = cfg, data
        t = cfg.trainer
        self.steps_per_epoch = data.x_train.shape[0] // t.batch_size
        self.total_steps = self.steps_per_epoch * t.epochs
        self.model = build_model(cfg.model, data.example_shape)
        self.output_activation = resolve_output_activation(
            cfg.model, cfg.loss.kind, data.in_unit_interval
        )
        self.objective: Objective = build_objective(
            cfg,
            self.model,
            self.output_activation,
            float(data.x_train.min()),
            float(data.x_train.max()),
            self.steps_per_epoch,
        )
        self.tx = make_optimizer(cfg.optim, self.total_steps, self.steps_per_epoch)
        self.parallel = Parallel(select_devices(t.devices, t.batch_size), t.parallel)
        self.epoch_fn = make_train_epoch(
            self.objective,
            self.tx,
            num_examples=data.x_train.shape[0],
            batch_size=t.batch_size,
            num_devices=len(self.parallel.devices),
            axis_name=self.parallel.axis_name,
            step_norms=t.step_norms,
        )
        self._program: Callable | None = None
        objective = self.objective

        @jax.jit
        def eval_mse(params, x):  # clean reconstruction MSE of held-out examples
            return jnp.mean(squared_error(objective.forward(params, x)[1], x))

        self.eval_mse = eval_mse

    def init_state(self, seed: int | None = None) -> TrainState:
        seed = self.cfg.trainer.seed if seed is None else seed
        return create_state(
            self.model, self.tx, self.data.example_shape, seed, self.objective.init_running()
        )

    def hparams(self) -> HParams:
        return make_hparams(self.cfg)

    def compile(self, state: TrainState, x_train, hparams: HParams) -> Callable:
        if self._program is None:
            self._program = self.parallel.compile(
                self.epoch_fn, state, x_train, jnp.zeros((), jnp.int32), hparams
            )
        return self._program

    def fit(
        self,
        state: TrainState,
        hparams: HParams | None = None,
        *,
        start_epoch: int = 0,
        history: list[dict] | None = None,
        checkpointer: Checkpointer | None = None,
        on_epoch: Callable[[dict], None] | None = None,
    ):
        """Train from ``start_epoch`` to ``trainer.epochs``; returns (state, history, timing).

        ``on_epoch(row)`` is called with each epoch's history row (mean train metrics, and
        ``eval/mse`` on up to ``EVAL_EXAMPLES`` test examples every ``trainer.eval_every`` epochs)
        once it is on the host: one epoch late, so the device never waits for the host.
        With a ``checkpointer``, the state is saved every ``trainer.checkpoint_every`` epochs
        and at the end, only after that epoch's losses were checked finite; SIGTERM saves a
        checkpoint after the epoch in flight and raises ``Preempted``.
        """
        t = self.cfg.trainer
        hparams = self.hparams() if hparams is None else hparams
        x_train = self.parallel.place(jnp.asarray(self.data.x_train))
        state = self.parallel.place(state)
        hparams = self.parallel.place(hparams)
        program = self.compile(state, x_train, hparams)
        history = list(history or [])
        pending: list[tuple[int, dict, jax.Array | None]] = []
        x_eval = jnp.asarray(self.data.x_test[:EVAL_EXAMPLES])
        start = time.perf_counter()
        self.checkpointer = checkpointer

        def drain(keep: int) -> None:
            while len(pending) > keep:
                epoch, dev_metrics, dev_eval = pending.pop(0)
                per_step = jax.device_get(dev_metrics)
                self._check_finite(epoch, per_step)
                row = {"epoch": epoch + 1}
                row.update({f"train/{k}": float(np.mean(v)) for k, v in per_step.items()})
                if dev_eval is not None:
                    row["eval/mse"] = float(dev_eval)
                row["time/elapsed"] = time.perf_counter() - start
                history.append(row)
                if on_epoch is not None:
                    on_epoch(row)

        with sigterm_flag() as preempted:
            for epoch in range(start_epoch, t.epochs):
                state, metrics = program(state, x_train, jnp.int32(epoch), hparams)
                done = epoch + 1
                dev_eval = None
                if done % t.eval_every == 0 or done == t.epochs:
                    dev_eval = self.eval_mse(state.params, x_eval)
                pending.append((epoch, metrics, dev_eval))
                due = done == t.epochs or (t.checkpoint_every and done % t.checkpoint_every == 0)
                if checkpointer is not None and (due or preempted()):
                    drain(keep=0)  # a checkpoint only ever holds a state whose losses were finite
                    checkpointer.save(done, state, history)
                    if preempted() and done < t.epochs:
                        raise Preempted(
                            f"SIGTERM: saved epoch {done}/{t.epochs} to {checkpointer.path(done)}; "
                            "run the same command again to resume"
                        )
                else:
                    drain(keep=1)
            drain(keep=0)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - start
        examples = (t.epochs - start_epoch) * self.steps_per_epoch * t.batch_size
        timing = {
            "time/train_seconds": seconds,
            "time/compile_seconds": self.parallel.compile_seconds,
            "train/samples_per_second": examples / seconds if seconds > 0 else math.nan,
            "compile/epoch_traces": self.parallel.traces,
        }
        return state, history, timing

    def _check_finite(self, epoch: int, per_step: dict) -> None:
        """Raise TrainingDiverged at the first step whose loss or parameters are not finite."""
        ok = np.isfinite(per_step["loss"])
        params = np.asarray(per_step["l2_params"])
        if params.ndim:  # trainer.step_norms: the norm after every step
            ok &= np.isfinite(params)
        elif ok.all() and not np.isfinite(params):  # only the epoch's last update broke them
            ok[-1] = False
        bad = np.flatnonzero(~ok)
        if bad.size:
            step = epoch * self.steps_per_epoch + int(bad[0])
            saved = getattr(self, "checkpointer", None)
            last = saved.newest() if saved is not None else None
            where = f"; the last good checkpoint is {last}" if last else "; no checkpoint was saved"
            raise TrainingDiverged(
                f"non-finite loss ({per_step['loss'][bad[0]]}) at epoch {epoch + 1}, global step "
                f"{step + 1}{where}. Lower optim.lr (now {self.cfg.optim.lr}) or reg.strength, "
                "or set optim.grad_clip"
            )
