"""``train_and_evaluate(cfg, workdir)``: one complete run, from config to metrics and figures.

This is the importable library behind ``experiments/train.py``; call it from a notebook with a
``Config`` (or a Hydra DictConfig) and a directory, and it returns the flat metrics dict it also
writes to ``<workdir>/metrics.json``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import jax

from ae_jax.config import to_config, to_yaml, validate
from ae_jax.data import load_dataset
from ae_jax.features import trainer_devices, write_run_info
from ae_jax.outputs import (
    describe,
    epoch_logger,
    evaluate_and_write,
    open_run_loggers,
    reconstruction_snapshots,
    warm_outputs_in_background,
)
from ae_jax.training import distributed
from ae_jax.training.checkpoint import Checkpointer
from ae_jax.training.loop import sigterm_flag
from ae_jax.training.rundir import (
    RunDir,
    RunDirError,
    claimed,
    completed_run,
    fresh_or_resumed_workdir,
    group_member,
)
from ae_jax.training.trainer import Trainer

log = logging.getLogger("ae_jax")


def train_and_evaluate(
    cfg: Any, workdir: str | Path, rundir: RunDir | None = None
) -> dict[str, float]:
    """Train the configured autoencoder, evaluate it, write outputs to ``workdir``.

    The directory is claimed first (lock, stored config, writability; see
    ``ae_jax.training.rundir``); nothing in it is written before the data is loaded and the
    model is built, so a refused run leaves an earlier run's files as they were. Run the same
    call again after an interruption and it resumes from the newest checkpoint.
    """
    cfg = validate(to_config(cfg))
    distributed.initialize(cfg.trainer)
    main = distributed.is_main_process()
    if not main:
        log.setLevel(logging.WARNING)  # process 0 speaks for the run
    if rundir is None:
        workdir = fresh_or_resumed_workdir(Path(workdir), cfg.trainer.resume)
    else:
        workdir = rundir.path  # claimed by the caller (ae_jax.cli.run_or_exit)
    with contextlib.ExitStack() as stack:
        rundir = stack.enter_context(claimed(cfg, workdir, rundir))
        stack.enter_context(sigterm_flag())
        if cfg.pretrain.enabled:
            from ae_jax.pretraining.pipeline import pretrain_and_finetune

            return pretrain_and_finetune(cfg, workdir, rundir)
        if cfg.trainer.resume and not rundir.checkpointed():
            done = _group_member_done(cfg, Path(workdir))
            if done is not None:
                return done
        t0 = time.perf_counter()
        data = load_dataset(cfg.data)
        rundir.check_data(data, cfg.data)
        trainer = Trainer(cfg, data)
        log.info(describe(cfg, trainer))
        checkpointer = Checkpointer(workdir / "checkpoints", keep=cfg.trainer.keep_checkpoints)
        state = trainer.init_state()
        if cfg.trainer.resume:
            checkpointer.check_same_run(state)  # another model's checkpoints: refused here
        rundir.start(to_yaml(cfg))
        if main:  # shapes and output activation, so that ae_jax.features.load_run needs no data
            write_run_info(workdir, data, trainer.output_activation, trainer_devices(trainer))
        # a finished run is evaluated again, not trained: its trackers already hold it
        finished = cfg.trainer.resume and max(checkpointer.epochs(), default=0) >= trainer.epochs
        loggers = stack.enter_context(open_run_loggers(cfg, workdir, main and not finished))
        # the evaluation's programs and matplotlib are readied while the model trains (after
        # the epoch program, which would otherwise wait for the GIL)
        initial, warming = (jax.device_get(state.params) if main else None), []
        stack.callback(lambda: [thread.join() for thread in warming])  # also when fit raises
        state, history, timing = trainer.fit(
            state,
            checkpointer=checkpointer,
            resume=cfg.trainer.resume,
            on_epoch=epoch_logger(loggers),
            on_compiled=(
                (lambda: warming.append(warm_outputs_in_background(cfg, trainer, initial)))
                if main  # process 0 alone evaluates
                else None
            ),
            profile_dir=workdir / "tensorboard" if cfg.trainer.profile else None,
            snapshots=reconstruction_snapshots([cfg], trainer, [loggers]),
        )
        for thread in warming:
            thread.join()
        if not main:
            return {}
        if getattr(trainer, "trained_now", True):
            log.info(
                "trained in %.1fs (%.0f examples/s; compile %.1fs)",
                timing["time/train_seconds"],
                timing["train/samples_per_second"],
                timing["time/compile_seconds"],
            )
        else:  # the seconds are those of the sessions that trained it
            log.info(
                "trained earlier in %.1fs (%.0f examples/s)",
                timing["time/train_seconds"],
                timing["train/samples_per_second"],
            )
        return evaluate_and_write(
            cfg, trainer, jax.device_get(state.params), history, timing, workdir, t0, loggers
        )


def _group_member_done(cfg, workdir: Path) -> dict | None:
    """A single run in the directory of a vectorised sweep's member (a sweep run again without
    ``hydra/launcher=vmap``): the member's metrics when it completed this very run, which is
    not trained again (as a finished single run is not). A member that was stopped, or that
    this config would extend, is refused: its state is in its group's checkpoint, which only
    the group resumes, and training the job alone from the start would redo that work.
    None when the directory holds no such member (or one that diverged: it starts again)."""
    ended = group_member(workdir)
    if ended is None or ended == "failed":
        return None
    metrics = completed_run(cfg, workdir)
    if metrics is not None:
        log.info("%s holds this run, completed by a vectorised sweep: not trained again", workdir)
        return metrics
    what = (
        "completed with other epochs (more epochs extend a member within its group)"
        if ended == "completed"
        else "was stopped before it finished"
    )
    raise RunDirError(
        f"{workdir} holds a member of a vectorised sweep (hydra/launcher=vmap) that {what}; "
        f"its state is in its group's checkpoint under {workdir.parent / '.vmap-groups'}, "
        "which only the group resumes: run the same sweep again with hydra/launcher=vmap, "
        "or give trainer.resume=false to train this job alone from the start"
    )
