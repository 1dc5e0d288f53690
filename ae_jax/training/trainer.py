"""The run loop: build everything a config asks for, compile one epoch program, train.

``Trainer`` owns the model, objective, optimiser and the compiled programs for one dataset and
config; ``fit`` runs the epochs. The host never waits on the device between epochs: epoch e+1
is dispatched before epoch e's metrics are fetched, and a non-finite loss is found (at the exact
step) from those lagged metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ae_jax.chunks import mean_in_chunks
from ae_jax.config import Config, ConfigError
from ae_jax.data import Dataset
from ae_jax.models import build_model, resolve_output_activation
from ae_jax.objectives.losses import squared_error
from ae_jax.training.checkpoint import Checkpointer
from ae_jax.training.loop import (  # noqa: F401
    Preempted,
    Stage,
    TrainingDiverged,
    checkpoint_schedule,
    run_stage,
)
from ae_jax.training.objective import HParams, Objective, build_objective, make_hparams
from ae_jax.training.parallel import Parallel, fit_batch, select_devices
from ae_jax.training.state import TrainState, create_state, make_optimizer
from ae_jax.training.step import make_train_epoch

log = logging.getLogger("ae_jax")
EVAL_EXAMPLES = 2048  # the chunk size of every evaluation during training


def validate_against_data(cfg: Config, data: Dataset, is_code: bool = True) -> None:
    """Checks that need the loaded data (value range, shapes, sizes); raise ConfigError.
    ``is_code``: the model's code is the run's code (False for a hidden layer of a stack
    trained on its own, whose width above its input is by design, e.g. Hinton's 784-1000)."""
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
    if is_code:
        warn_if_overcomplete(cfg, data.num_features)


def warn_if_anneal_unfinished(cfg: Config, epochs: int, stage: str = "") -> None:
    """One warning when a k-sparse code's annealing (``model.sparse_anneal_epochs``) is longer
    than the epochs that train it: k never reaches ``model.sparse_k``, at which the model is
    evaluated and gives its features."""
    m = cfg.model
    if m.sparse_k is None or m.sparse_k_start is None or m.sparse_anneal_epochs <= epochs:
        return
    start, k = m.sparse_k_start, m.sparse_k
    reached = round(start + (k - start) * epochs / m.sparse_anneal_epochs)
    log.warning(
        "model.sparse_anneal_epochs=%d is longer than the %d epoch%s %s: k ends at %d (from "
        "model.sparse_k_start=%d), not at model.sparse_k=%d, which the evaluation and the "
        "features use; anneal over at most %d epochs",
        m.sparse_anneal_epochs,
        epochs,
        "s" * (epochs != 1),
        f"of {stage}" if stage else "this run trains",
        reached,
        start,
        k,
        epochs,
    )


def warn_if_overcomplete(
    cfg: Config,
    input_dim: int,
    where: str = "",
    remedy: str = "add a sparsity or contractive regulariser, model.sparse_k or denoising noise",
) -> None:
    """One warning line when ``cfg`` trains a code wider than its input with nothing that
    stops it from learning the identity (no code regulariser, k-sparsity or input noise);
    ``where`` names the stage when the objective is not the user's config's own."""
    code_terms = [k for k in cfg.reg if k != "weight_decay"]  # terms that act on the code
    # input noise regularises too: a denoising AE cannot copy its corrupted input
    denoising = cfg.noise.kind != "none" and cfg.noise.level > 0
    if cfg.model.kind == "linear" and cfg.model.latent_dim > input_dim:
        log.warning(  # no identity to fear: PCA's subspace is then the whole input space
            "model.latent_dim=%d > input dimension %d%s: a linear autoencoder this wide "
            "reconstructs its input exactly, as PCA with every component does, and has no "
            "subspace to compare with PCA's; a code of at most %d units does",
            cfg.model.latent_dim,
            input_dim,
            where,
            input_dim,
        )
    elif (
        cfg.model.latent_dim > input_dim
        and not code_terms
        and cfg.model.sparse_k is None
        and not denoising
    ):
        log.warning(
            "model.latent_dim=%d > input dimension %d with reg=%s and no input noise%s: an "
            "overcomplete code can learn the identity; %s",
            cfg.model.latent_dim,
            input_dim,
            "[" + ",".join(cfg.reg) + "]" if cfg.reg else "none",
            where,
            remedy,
        )


def divergence_hint(cfg: Config, lr_key: str = "optim.lr") -> str:
    """What to change when a run of ``cfg`` diverges (the end of its one error line);
    ``lr_key``: the setting its learning rate comes from."""
    causes = [f"{lr_key} (now {cfg.optim.lr})"]
    if cfg.reg:
        causes.append("the regularisation strengths")
    if cfg.noise.kind == "gaussian" and cfg.noise.level > 1:  # sigma of the data's scale or more
        causes.append(f"noise.level (now {cfg.noise.level})")
    said = "Lower " + (" or ".join(causes) if len(causes) < 3 else ", ".join(causes))
    if cfg.optim.grad_clip is None:
        said += ", or set optim.grad_clip"
    # the same directory holds this config's run: another config there is refused
    return said + "; then run it in a new directory (or with trainer.resume=false)"


class Trainer:
    """Model, objective, optimiser and the compiled epoch program of one config and dataset."""

    def __init__(
        self,
        cfg: Config,
        data: Dataset,
        is_code: bool = True,
        batch_key: str = "trainer.batch_size",
        lr_key: str = "optim.lr",
    ):
        """``batch_key``: the setting a batch larger than the training split is named by;
        ``lr_key``: the setting the learning rate comes from (named when the run diverges)."""
        validate_against_data(cfg, data, is_code)
        t = cfg.trainer
        batch = fit_batch(t.batch_size, data.x_train.shape[0], t.devices, batch_key, data.name)
        if batch != t.batch_size:  # the caller's config keeps the value it was given
            cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(t, batch_size=batch))
        self.cfg, self.data, self.lr_key = cfg, data, lr_key
        t = cfg.trainer
        per_pass = data.x_train.shape[0] // t.batch_size
        # trainer.min_steps on a small training split: each epoch makes several passes over
        # the data (one compiled program still), so that trainer.epochs reach min_steps
        self.passes = max(1, -(-t.min_steps // (t.epochs * per_pass)))
        self.steps_per_epoch = per_pass * self.passes
        self.epochs = t.epochs
        if self.passes > 1:
            log.info(
                "trainer.min_steps=%d: each of the %d epochs makes %d passes over the %d "
                "training examples (%d steps of %d per pass)",
                t.min_steps,
                self.epochs,
                self.passes,
                data.x_train.shape[0],
                per_pass,
                t.batch_size,
            )
        self.total_steps = self.steps_per_epoch * self.epochs
        self.output_activation = resolve_output_activation(
            cfg.model, cfg.loss.kind, data.in_unit_interval
        )
        self.objective: Objective = build_objective(
            cfg,
            build_model(cfg.model, data.example_shape),
            self.output_activation,
            float(data.x_train.min()),
            float(data.x_train.max()),
            self.steps_per_epoch,
        )
        self.model = self.objective.model  # the one model: output activation and sparse_k set
        self.tx = make_optimizer(cfg.optim, self.total_steps, self.steps_per_epoch)
        self.parallel = Parallel(select_devices(t.devices, t.batch_size, batch_key), t.parallel)
        self.epoch_fn = make_train_epoch(
            self.objective,
            self.tx,
            num_examples=data.x_train.shape[0],
            batch_size=t.batch_size,
            num_devices=len(self.parallel.devices),
            axis_name=self.parallel.axis_name,
            step_norms=t.step_norms,
            passes=self.passes,
        )
        self._program: Callable | None = None
        self._pca: dict = {}
        objective = self.objective

        @jax.jit
        def eval_mse(params, x):  # clean reconstruction MSE of held-out examples, in chunks
            def per_example(xb):
                se = squared_error(objective.forward(params, xb)[1], xb)
                return jnp.mean(se.reshape(xb.shape[0], -1), axis=1)

            return mean_in_chunks(per_example, EVAL_EXAMPLES, x)

        self.eval_mse = eval_mse
        # What the curves during training are measured on: the whole validation split when
        # there is one (and early stopping decides on it), else the whole test split (a curve
        # only, whose last point is the final test/mse: nothing is chosen on the test split).
        if data.x_val is not None:
            self.eval_prefix, self.x_eval = "val", data.x_val
        else:
            self.eval_prefix, self.x_eval = "eval", data.x_test

    def pca(self, k: int):
        """PCA-k of the training split (the baseline every evaluation reports), fitted once per
        trainer: a run's metrics and reconstructions, and every member of a vmap group, share
        it."""
        from ae_jax.evaluation.pca import fit_pca

        if k not in self._pca:
            x = self.data.x_train
            self._pca[k] = fit_pca(x.reshape(x.shape[0], -1), k)
        return self._pca[k]

    def selection(self) -> dict:
        """The Stage settings of early stopping on the held-out curve (none without it)."""
        t = self.cfg.trainer
        settings = {"eval_prefix": self.eval_prefix}
        if t.early_stopping:
            settings.update(monitor="mse", patience=t.patience)
        return settings

    def init_state(self, seed: int | None = None, abstract: bool = False) -> TrainState:
        """The run's initial state (``abstract``: its shapes and dtypes, compiling nothing)."""
        seed = self.cfg.trainer.seed if seed is None else seed
        running = self.objective.init_running()
        return create_state(self.model, self.tx, self.data.example_shape, seed, running, abstract)

    def hparams(self) -> HParams:
        return make_hparams(self.cfg)

    def compile(self, state: TrainState, x_train, hparams: HParams) -> Callable:
        if self._program is None:
            self._program = self.parallel.compile(
                self.epoch_fn, state, x_train, jnp.zeros((), jnp.int32), hparams
            )
        return self._program

    def stage(self, state, hparams: HParams, x_train, name: str = "", **settings) -> Stage:
        """This trainer's epochs as a ``Stage`` of the one loop (``ae_jax.training.loop``);
        the epoch program is compiled here, for the shapes of ``state``, once."""
        t = self.cfg.trainer
        program = self.compile(state, x_train, hparams)
        x_eval = jnp.asarray(self.x_eval)

        def run_epoch(state, epoch):
            return program(state, x_train, jnp.int32(epoch), hparams)

        return Stage(
            name=name,
            epochs=self.epochs,
            run_epoch=run_epoch,
            steps_per_epoch=self.steps_per_epoch,
            batch_size=t.batch_size,
            evaluate=lambda state: {"mse": self.eval_mse(state.params, x_eval)},
            eval_every=t.eval_every,
            **checkpoint_schedule(t),
            log_every=t.log_every,
            progress=t.progress,
            hint=divergence_hint(self.cfg, self.lr_key),
            **{**self.selection(), **settings},
        )

    def fit(
        self,
        state: TrainState,
        hparams: HParams | None = None,
        *,
        start_epoch: int = 0,
        history: list[dict] | None = None,
        checkpointer: Checkpointer | None = None,
        resume: bool = False,
        stage_name: str = "",
        on_epoch: Callable[[dict], None] | None = None,
        on_compiled: Callable[[], None] | None = None,
        profile_dir=None,
        snapshots=None,
    ):
        """Train from ``start_epoch`` (or, with ``resume``, from the newest checkpoint) to
        ``trainer.epochs`` through the one loop; returns (state, history, timing).

        History rows hold the mean train metrics, and ``val/mse`` on the validation split (or,
        without one, ``eval/mse`` on the test split) every
        ``trainer.eval_every`` epochs; they reach the host one epoch late,
        so the device never waits for it. With a ``checkpointer`` the state is saved every
        ``trainer.checkpoint_seconds`` of training (or ``trainer.checkpoint_every`` epochs) and
        at the end, only after that epoch's losses were checked finite; SIGTERM saves after the
        epoch in flight and raises ``Preempted``. ``on_compiled()`` is called once the epoch
        program is ready, before the first epoch is dispatched. ``snapshots``: arrays of the
        state for the host at some epochs (``ae_jax.training.loop.Snapshots``).
        """
        t = self.cfg.trainer
        warn_if_anneal_unfinished(self.cfg, self.epochs, stage_name)
        hparams = self.parallel.place(self.hparams() if hparams is None else hparams)
        x_train = self.parallel.place(jnp.asarray(self.data.x_train))
        state = self.parallel.place(state)
        compiles = self.parallel.compiles
        stage = self.stage(state, hparams, x_train, stage_name, profile_dir=profile_dir)
        # a later fit of the same program (a pipeline's baseline) compiled nothing
        compile_seconds = (
            self.parallel.compile_seconds if self.parallel.compiles > compiles else 0.0
        )
        if on_compiled is not None:
            on_compiled()
        result = run_stage(
            stage,
            state,
            checkpointer=checkpointer,
            resume=resume,
            allow_none_valid=t.restart_if_corrupt,
            start_epoch=start_epoch,
            history=history,
            on_epoch=on_epoch,
            snapshots=snapshots,
        )
        seconds = result.seconds
        trained = result.epochs_trained or self.epochs  # every session's epochs, as seconds
        self.trained_now = result.start_epoch < trained  # False: a finished run, run again
        examples = trained * self.steps_per_epoch * t.batch_size
        timing = {}
        if result.best_epoch is not None:
            timing["train/best_epoch"] = result.best_epoch
            timing["train/epochs_trained"] = result.epochs_trained
        timing |= {
            "time/train_seconds": seconds,
            "time/compile_seconds": compile_seconds,
            "train/samples_per_second": examples / seconds if seconds > 0 else math.nan,
            "compile/epoch_traces": self.parallel.traces,
        }
        return result.state, result.history, timing
