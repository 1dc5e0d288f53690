"""The one training loop: every path that trains goes through ``run_stage``.

A **stage** is what the loop trains: a compiled epoch program, the number of epochs, an optional
evaluation, and a name. A single run is one stage; greedy pretraining is one stage per layer,
then the unrolled fine-tuning, a supervised stage and the baseline; a vectorised sweep group is
one stage whose state has a leading members axis. The loop does not know which kind it runs.
It owns:

- dispatching the epoch program; the host reads epoch e's metrics while epoch e+1 runs;
- the divergence check at the exact step (a whole run stops; a member of a group is marked
  failed, named on the console, and the others go on);
- evaluation every ``eval_every`` epochs, history rows and progress lines;
- checkpoints every ``checkpoint_seconds`` of training or every ``checkpoint_every`` epochs, and
  at the end, and resume from the newest valid one (a stage whose final checkpoint exists is
  complete and is not trained again);
- SIGTERM or Ctrl-C: the epoch in flight finishes, is checkpointed, and ``Preempted`` is raised;
- snapshots (``Snapshots``): arrays computed from the state at chosen epochs (the trackers'
  reconstructions every N epochs), dispatched like the evaluation and handed over with the row;
- early stopping on a validation metric (``Stage.monitor``, ``Stage.patience``): the best
  evaluation's parameters are kept on the device (per member in a group, selected with
  ``jnp.where``, so the host never waits), checkpointed with the state, and returned at the end;
  training stops once ``patience`` evaluations in a row have not improved on the best
  (in a group: once that holds for every member still training).

    state, history = run_stage(stage, state, checkpointer=Checkpointer(dir), resume=True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("ae_jax")


class Preempted(RuntimeError):
    """SIGTERM or Ctrl-C arrived; a checkpoint was saved and the run can be resumed."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the stage, epoch and step."""


# ----------------------------------------------------------------------------- SIGTERM, Ctrl-C
_SIGTERM = threading.Event()
_RECEIVED: list[str] = []  # the stop signal's name, for the messages
_depth = 0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _on_stop_signal(signum, _frame) -> None:
    if signum == signal.SIGINT and _SIGTERM.is_set():
        raise KeyboardInterrupt  # Ctrl-C a second time: stop at once, without a checkpoint
    _RECEIVED[:] = ["Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name]
    _SIGTERM.set()
    # os.write: no lock that the interrupted code may hold. (While XLA compiles, Python runs
    # this handler only once the compile returns: the line then comes with the stop.)
    if signum == signal.SIGINT:
        os.write(
            2,
            b"\nCtrl-C: the epoch in flight finishes and is checkpointed, then the run stops "
            b"(Ctrl-C again: stop at once)\n",
        )
    else:
        os.write(
            2,
            f"\n{_RECEIVED[0]}: the epoch in flight finishes and is checkpointed, "
            "then the run stops\n".encode(),
        )


@contextlib.contextmanager
def sigterm_flag():
    """Within the block (nestable), SIGTERM or Ctrl-C (SIGINT) sets a flag read by
    ``preempt_requested`` instead of killing the process, so the epoch in flight can finish
    and be checkpointed; a second Ctrl-C raises ``KeyboardInterrupt`` at once. A whole
    pipeline holds it once, so a signal between two stages is honoured too."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield preempt_requested  # signals can only be handled on the main thread
        return
    previous = {}
    if _depth == 0:
        _SIGTERM.clear()
        _RECEIVED.clear()
        previous = {s: signal.signal(s, _on_stop_signal) for s in _STOP_SIGNALS}
    _depth += 1
    try:
        yield preempt_requested
    finally:
        _depth -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)


def preempt_requested() -> bool:
    return _SIGTERM.is_set()


def stop_signal() -> str:
    """The name of the stop signal received ("SIGTERM", "Ctrl-C")."""
    return _RECEIVED[0] if _RECEIVED else "SIGTERM"


# ----------------------------------------------------------------------------- the stage
@dataclasses.dataclass
class Stage:
    """What the loop trains.

    ``run_epoch(state, epoch) -> (state, metrics)`` dispatches one compiled epoch; metrics are
    per step, ``(steps,)`` each (``(members, steps)`` in a group), with at least ``loss``.
    ``evaluate(state) -> {name: device scalar (or (members,) array)}`` gives the
    ``<eval_prefix>/...`` columns of the history every ``eval_every`` epochs and at the end
    (``val/`` when they are measured on a validation split, ``eval/`` otherwise).
    With ``monitor`` (one of ``evaluate``'s names, lower is better) and ``patience``, the stage
    stops early and ends with the parameters of its best evaluation (``state.params``).
    """

    name: str  # "" for a single run; "pretrain/layer_0", "supervised", ...
    epochs: int
    run_epoch: Callable[[Any, int], tuple[Any, dict]]
    steps_per_epoch: int
    batch_size: int
    evaluate: Callable[[Any], dict] | None = None
    eval_every: int = 10
    checkpoint_every: int = 0  # epochs between checkpoints; 0: only at the end (or by time)
    checkpoint_seconds: float | None = None  # else: after this much training since the last
    log_every: int = 10
    progress: bool = True
    members: int | None = None  # a vectorised group: every leaf has a leading members axis
    member_names: list[str] | None = None  # for console lines about one member
    member_hints: list[str] | None = None  # each member's ``hint`` (its own learning rate)
    profile_dir: Path | None = None  # a jax.profiler trace of the first epoch trained, here
    hint: str = "Lower optim.lr or the regularisation strengths, or set optim.grad_clip"
    eval_prefix: str = "eval"  # history columns of ``evaluate``: "val" on a validation split
    monitor: str | None = None  # early stopping on evaluate()[monitor] (lower is better)
    patience: int | None = None  # evaluations without improvement before stopping

    @property
    def label(self) -> str:
        return f"[{self.name}] " if self.name else ""

    @property
    def early_stopping(self) -> bool:
        return self.monitor is not None and self.patience is not None


@dataclasses.dataclass
class Snapshots:
    """Arrays taken from the state at some epochs, for the host to use as the run goes on.

    After an epoch ``e`` for which ``due(e)`` holds, ``take(state)`` is dispatched on the
    device before the next epoch donates the state, as the evaluation is; once that epoch's row
    has been handed to the epoch hooks, ``use(e, arrays, skip)`` gets the arrays on the host
    (``skip``: the members of a group whose arrays are not to be used: those that diverged,
    and those whose own run has ended, early stopping having run out of patience). The device
    trains the next epoch meanwhile.
    """

    due: Callable[[int], bool]
    take: Callable[[Any], Any]
    use: Callable[[int, Any, Any], None]


def checkpoint_schedule(trainer_cfg: Any) -> dict[str, Any]:
    """A ``Stage``'s checkpoint settings from ``trainer.checkpoint_every`` (epochs; 0: only at
    the end) and ``trainer.checkpoint_seconds`` (used when ``checkpoint_every`` is null, the
    default: a checkpoint once that much training has passed since the last, so that a short
    run writes one and a long one loses at most that much to a ``kill -9``)."""
    if trainer_cfg.checkpoint_every is None:
        return {"checkpoint_every": 0, "checkpoint_seconds": float(trainer_cfg.checkpoint_seconds)}
    return {"checkpoint_every": trainer_cfg.checkpoint_every, "checkpoint_seconds": None}


@dataclasses.dataclass
class StageResult:
    state: Any
    history: list  # rows; in a group, one list of rows per member
    failed: dict  # member index -> message (a group); empty otherwise
    start_epoch: int  # the epoch training (re)started from: 0, or the checkpoint's epoch
    # wall time of every epoch the stage trained, summed over the sessions that trained it (a
    # rerun of a finished stage reports the time it took, not 0; checkpoint extra "seconds")
    seconds: float
    # early stopping: the epoch whose parameters ``state`` holds (a list per member in a group)
    # and the number of epochs trained before stopping; None without early stopping
    best_epoch: Any = None
    epochs_trained: int | None = None
    # in a group with early stopping: the epochs each member's own run would have trained
    # (it stops when its patience runs out; the group trains on until the last one's does)
    member_epochs: list[int] | None = None


def _first_bad_step(per_step: dict) -> int | None:
    """Index of the first step whose loss (or, at the end, the parameters) is not finite."""
    ok = np.isfinite(np.asarray(per_step["loss"]))
    if "l2_params" in per_step:
        params = np.asarray(per_step["l2_params"])
        if params.ndim:  # the norm after every step
            ok &= np.isfinite(params)
        elif ok.all() and not np.isfinite(params):  # only the epoch's last update broke them
            ok[-1] = False
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def _mean_row(epoch: int, per_step: dict) -> dict:
    """The epoch's means of its steps' values, in float64: a loss near float32's largest
    value in every step, finite, has a finite mean too (in float32 it overflowed to inf)."""
    row = {"epoch": epoch + 1}
    row.update({f"train/{k}": float(np.mean(v, dtype=np.float64)) for k, v in per_step.items()})
    return row


def progress_line(stage: Stage, row: dict, elapsed: float, start_epoch: int) -> str:
    """``[stage] epoch e/E | loss .. (rec .. + term ..) | eval .. | ex/s | elapsed, eta``."""
    e, total = row["epoch"], stage.epochs
    done = e - start_epoch
    rate = done * stage.steps_per_epoch * stage.batch_size / elapsed if elapsed > 0 else math.nan
    eta = elapsed / max(done, 1) * (total - e)
    parts = [
        f"{stage.label}epoch {e:>{len(str(total))}}/{total}",
        f"loss {loss_text(row['train/loss'])}",
    ]
    terms = sorted((k for k in row if k.startswith("train/loss/")), key=lambda k: k[11:] != "rec")
    if len(terms) > 1:
        parts[-1] += " (" + " + ".join(f"{k[11:]} {loss_text(row[k])}" for k in terms) + ")"
    for key in ("train/error_pct",):
        if key in row:
            parts.append(f"{key[6:]} {row[key]:.2f}%")
    for key, value in row.items():
        if key.startswith(("eval/", "val/")):
            shown = f"{value:.2f}%" if key.endswith("error_pct") else f"{value:.5g}"
            parts.append(f"{key.replace('/', ' ')} {shown}")
    parts += [f"{rate:,.0f} ex/s", f"{duration(elapsed, 1)} elapsed, eta {duration(eta)}"]
    return " | ".join(parts)


def loss_text(value: float) -> str:
    """A loss on a console line: five decimals (0.04361), or where those say little, four
    significant digits in scientific notation (1.234e-07 for a linear AE at PCA's optimum,
    2.697e+27 for a diverging run, whose digits were printed in full)."""
    value = float(value)
    if value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e5:
        return f"{value:.5f}"
    return f"{value:.3e}"


def duration(seconds: float, decimals: int = 0) -> str:
    """``12s`` (``12.3s`` with a decimal), ``4m 05s``, ``3h 12m``, ``2d 5h``: a time a reader
    takes in at a glance (an eta of 336843730001s was printed as such)."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.{decimals}f}s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400:,}d {s % 86400 // 3600}h"


def run_stage(
    stage: Stage,
    state: Any,
    *,
    checkpointer=None,
    resume: bool = False,
    allow_none_valid: bool = False,
    start_epoch: int = 0,
    history: list | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_member_epoch: Callable[[int, dict], None] | None = None,
    snapshots: Snapshots | None = None,
) -> StageResult:
    """Train ``stage`` from ``state`` after ``start_epoch`` epochs (with their ``history``), or
    with ``resume`` from the newest checkpoint in ``checkpointer``, to ``stage.epochs``.
    ``snapshots``: arrays of the state taken at some epochs for the host (``Snapshots``).

    Raises ``TrainingDiverged`` when the loss of a single run turns non-finite (naming the
    step and the last good checkpoint, which is never overwritten) and ``Preempted`` after
    SIGTERM once the epoch in flight is saved.
    """
    if history is None:
        history = [] if stage.members is None else [[] for _ in range(stage.members)]
    history = list(history)
    failed: dict[int, str] = {}
    prior = 0.0  # training seconds of earlier sessions (from the checkpoint)
    best = _Best.start(stage, state) if stage.early_stopping else None
    if checkpointer is not None and resume:
        restored = checkpointer.restore_latest(
            state, allow_none_valid=allow_none_valid, aux=None if best is None else best.tree
        )
        if restored is not None:
            state, start_epoch, history = restored
            extra = checkpointer.last_extra
            failed = {int(k): v for k, v in extra.get("failed", {}).items()}
            prior = float(extra.get("seconds", 0.0))
            if best is not None:
                best.restore(checkpointer.last_aux, extra.get("early_stopping"))
            if start_epoch > stage.epochs:  # a longer run's (a vmap group keys out the epochs)
                from ae_jax.training.checkpoint import CheckpointError

                raise CheckpointError(
                    f"{checkpointer.newest()} holds epoch {start_epoch}, more than the "
                    f"{stage.epochs} epochs that "
                    f"{f'stage {stage.name}' if stage.name else 'this run'} trains: it belongs "
                    f"to a longer run; give it {start_epoch} epochs or more to continue that "
                    "run, or use a new run directory"
                )
            if start_epoch >= stage.epochs or (best is not None and best.stopped):
                log.info(
                    "%sstage complete (checkpoint %s): not trained again",
                    stage.label,
                    checkpointer.newest(),
                )
                return _result(stage, state, history, failed, start_epoch, prior, best)
            where, at = checkpointer.newest(), f"epoch {start_epoch} of {stage.epochs}"
            if stage.name:
                log.info("resuming stage %s at %s from %s", stage.name, at, where)
            else:
                log.info("resuming from %s (%s)", where, at)
        # the trackers drop what an earlier session logged after the checkpoint, or after the
        # start when it was killed before its first checkpoint (this one trains it again)
        for hook in (on_epoch, on_member_epoch):
            getattr(hook, "resumed", lambda epoch: None)(start_epoch)
    if checkpointer is not None and start_epoch < stage.epochs:
        checkpointer.check_space(
            state,
            aux=None if best is None else best.tree,
            label=(
                f"stage {stage.name}"
                if stage.name
                else f"this group of {stage.members} runs"
                if stage.members
                else "this run"
            ),
            runs=stage.members or 1,
        )
    pending: list[tuple[int, Any, Any, Any]] = []  # epoch, metrics, evaluation, snapshot
    start = time.perf_counter()
    prefix = f"{stage.eval_prefix}/"

    def drain(keep: int) -> None:
        while len(pending) > keep:
            epoch, dev_metrics, dev_eval, dev_snapshot = pending.pop(0)
            per_step = jax.device_get(dev_metrics)
            evals = jax.device_get(dev_eval) if dev_eval is not None else {}
            elapsed = time.perf_counter() - start
            if best is not None and evals:
                best.observe(epoch + 1, np.asarray(evals[stage.monitor]), failed)
            if stage.members is None:
                _check(stage, epoch, per_step, checkpointer)
                row = _mean_row(epoch, per_step)
                row.update({prefix + k: float(v) for k, v in evals.items()})
                row["time/elapsed"] = prior + elapsed  # training time of every session
                history.append(row)
                if on_epoch is not None:
                    on_epoch(row)
                _progress(stage, row, elapsed, start_epoch)
                if dev_snapshot is not None:
                    snapshots.use(epoch + 1, jax.device_get(dev_snapshot), {})
                continue
            # Every member's means and finiteness at once: the host's work per epoch must stay
            # small beside the device's, whose cores it shares on a CPU.
            per_step = {k: np.asarray(v) for k, v in per_step.items()}
            means = {
                f"train/{k}": v.reshape(v.shape[0], -1).mean(axis=1, dtype=np.float64).tolist()
                for k, v in per_step.items()
            }
            finite = all(np.isfinite(v).all() for v in per_step.values())
            evals = {prefix + k: np.asarray(v).tolist() for k, v in evals.items()}
            # members whose own run has ended (early stopping): their trackers and snapshots
            # stop there, as their history does (the group trains on with them frozen)
            ended = {} if best is None else _ended_members(stage, best, epoch + 1)
            for i in sorted(set(ended) - said_ended - set(failed)):  # said once, as a run's
                said_ended.add(i)
                log.info(
                    "%s%s: early stopping after epoch %d: %s%s has not improved for %d "
                    "evaluations; keeping the parameters of epoch %d",
                    stage.label,
                    _jobs(stage, stage.members)[0][i],
                    _run_alone_stops(stage, int(np.atleast_1d(best.stop_epoch)[i]), stage.epochs),
                    prefix,
                    stage.monitor,
                    stage.patience,
                    int(np.atleast_1d(best.best_epoch)[i]),
                )
            for i in range(stage.members):
                if i in failed:
                    continue
                if not finite:
                    member = {k: v[i] for k, v in per_step.items()}
                    bad = _first_bad_step(member)
                    if bad is not None:
                        failed[i] = _diverged_message(stage, epoch, bad, member, i)
                        log.error("%s", failed[i])
                        continue
                row = {"epoch": epoch + 1}
                row.update({k: v[i] for k, v in means.items()})
                row.update({k: v[i] for k, v in evals.items()})
                row["time/elapsed"] = prior + elapsed  # training time of every session
                history[i].append(row)
                if on_member_epoch is not None and i not in ended:
                    on_member_epoch(i, row)
            _group_progress(stage, epoch, history, failed, elapsed, ended)
            if dev_snapshot is not None:
                snapshots.use(epoch + 1, jax.device_get(dev_snapshot), {**failed, **ended})

    said_ended: set[int] = set()  # the members whose early stop the console has had
    saved: dict[int, float] = {}  # epoch -> training seconds recorded with its checkpoint

    last_save = [start]  # when the last checkpoint was written (the stage's start at first)

    def save(done: int) -> None:
        # the trackers' rows up to ``done`` reach their stores first: a kill after the
        # checkpoint leaves them no gap (the epoch hooks of ae_jax.outputs.epoch_logger)
        for hook in (on_epoch, on_member_epoch):
            getattr(hook, "flush", lambda: None)()
        last_save[0] = time.perf_counter()
        saved[done] = prior + last_save[0] - start
        extra = {"failed": failed, "seconds": saved[done]}
        if best is not None:
            extra["early_stopping"] = best.record()
        checkpointer.save(
            done, state, history, extra=extra, aux=None if best is None else best.tree
        )

    done = start_epoch
    with sigterm_flag() as preempted:
        for epoch in range(start_epoch, stage.epochs):
            if stage.profile_dir is not None and epoch == start_epoch:
                state, metrics = _profiled_epoch(stage, state, epoch)
            else:
                state, metrics = stage.run_epoch(state, epoch)
            done = epoch + 1
            dev_eval = None
            if stage.evaluate is not None and (
                done % stage.eval_every == 0 or done == stage.epochs
            ):
                dev_eval = stage.evaluate(state)  # dispatched before the next epoch donates
                if best is not None:  # on the device, also before the donation
                    best.update(dev_eval[stage.monitor], state, done)
            dev_snapshot = None
            if snapshots is not None and snapshots.due(done):
                dev_snapshot = snapshots.take(state)  # also before the next epoch donates
            pending.append((epoch, metrics, dev_eval, dev_snapshot))
            due = (
                done == stage.epochs
                or (stage.checkpoint_every and done % stage.checkpoint_every == 0)
                or (
                    stage.checkpoint_seconds is not None
                    and time.perf_counter() - last_save[0] >= stage.checkpoint_seconds
                )
            )
            if checkpointer is not None and (due or preempted()):
                drain(keep=0)  # a checkpoint only ever holds a state whose losses were finite
                if best is not None:
                    best.stopped = best.exhausted(stage.patience, failed)
                save(done)
                if preempted() and done < stage.epochs and not (best and best.stopped):
                    where = f"stage {stage.name} " if stage.name else ""
                    raise Preempted(
                        f"{stop_signal()}: saved {where}epoch {done}/{stage.epochs} to "
                        f"{checkpointer.path(done)}; run the same command again to resume"
                    )
            else:
                drain(keep=1)
            if stage.members is not None and len(failed) == stage.members:
                log.error(
                    "%severy member of the group diverged: stopped after epoch %d of %d",
                    stage.label,
                    done,
                    stage.epochs,
                )
                break  # nothing is left to train (its checkpoints keep the last good states)
            if best is not None and best.exhausted(stage.patience, failed):
                drain(keep=0)  # the epoch in flight too, so the record matches the device
                best.stopped = True
                if checkpointer is not None and checkpointer.newest() != checkpointer.path(done):
                    save(done)
                if done < stage.epochs and stage.members is None:  # at the last: below
                    log.info(
                        "%searly stopping after epoch %d: %s%s has not improved for %d "
                        "evaluations; keeping the parameters of epoch %d",
                        stage.label,
                        done,
                        prefix,
                        stage.monitor,
                        stage.patience,
                        int(best.best_epoch),
                    )
                elif done < stage.epochs:
                    log.info(
                        "%searly stopping after epoch %d: no member's %s%s has improved for %d "
                        "evaluations; keeping each member's best epoch: %s",
                        stage.label,
                        done,
                        prefix,
                        stage.monitor,
                        stage.patience,
                        _member_epochs(stage, best, failed),
                    )
                break
        drain(keep=0)
    jax.block_until_ready(state)
    if best is not None and done >= stage.epochs and stage.members is not None:
        kept = np.atleast_1d(best.best_epoch)
        if any(0 < e < done for e in kept.tolist()):  # as a run says it, below
            log.info(
                "%s%s%s was lowest before epoch %d for some members: keeping each member's "
                "best epoch: %s",
                stage.label,
                prefix,
                stage.monitor,
                done,
                _member_epochs(stage, best, failed),
            )
    if best is not None and done >= stage.epochs and stage.members is None:
        kept = int(best.best_epoch)
        if 0 < kept < done:  # the run's parameters are not its last epoch's: say so
            log.info(
                "%s%s%s was lowest at epoch %d of %d: keeping the parameters of epoch %d",
                stage.label,
                prefix,
                stage.monitor,
                kept,
                done,
                kept,
            )
    # the time a rerun of this finished stage will report: that of its last checkpoint
    seconds = saved.get(done, prior + time.perf_counter() - start)
    return _result(stage, state, history, failed, start_epoch, seconds, best, done)


def _result(stage, state, history, failed, start_epoch, seconds, best, done=None):
    if best is None:
        return StageResult(state, history, failed, start_epoch, seconds)
    if done is None:  # restored complete: the record says how far it went
        done = best.epochs_trained or start_epoch
    best.epochs_trained = done
    if any(e > 0 for e in np.atleast_1d(best.best_epoch)):  # at least one evaluation
        state = state.replace(params=best.tree["params"])
    epoch = best.best_epoch.tolist() if stage.members is not None else int(best.best_epoch)
    members = None
    if stage.members is not None:
        members = [_run_alone_stops(stage, int(s), done) for s in best.stop_epoch.tolist()]
    return StageResult(state, history, failed, start_epoch, seconds, epoch, done, members)


def _ended_members(stage: Stage, best: _Best, epoch: int) -> dict[int, str]:
    """The members of a group whose own run, stopped early, trained fewer than ``epoch``
    epochs: index -> why."""
    stops = np.atleast_1d(best.stop_epoch).tolist()
    return {
        i: f"stopped early after epoch {stop}"
        for i, stop in enumerate(stops)
        if stop and _run_alone_stops(stage, int(stop), stage.epochs) < epoch
    }


def _run_alone_stops(stage: Stage, stop: int, done: int) -> int:
    """The epochs a member that ran out of patience at evaluation epoch ``stop`` (0: never)
    trains as a single run: that run's loop reads each epoch's results one epoch late, so it
    has trained one more when it learns of it, unless a checkpoint read everything at once."""
    if not stop:
        return done
    every = stage.checkpoint_every
    at_once = stop >= stage.epochs or (bool(every) and stop % every == 0)
    return min(done, stop if at_once else stop + 1)


@jax.jit
def _improve(tree, value, params, epoch, patience):
    """Keep ``params`` where ``value`` beats the best so far (per member; NaN never does). A
    member that has run out of patience is frozen: it keeps its best while the group trains on,
    so each member ends as its own run would have."""
    active = tree["since"] < patience
    better = (value < tree["value"]) & active

    def pick(new, old):
        return jnp.where(better.reshape(better.shape + (1,) * (new.ndim - better.ndim)), new, old)

    return {
        "value": jnp.where(better, value, tree["value"]),
        "epoch": jnp.where(better, epoch, tree["epoch"]),
        "since": jnp.where(active, jnp.where(better, 0, tree["since"] + 1), tree["since"]),
        "params": jax.tree.map(pick, params, tree["params"]),
    }


class _Best:
    """Early stopping's record. On the device (``tree``): the best monitored value, its epoch
    and its parameters, per member in a group, updated without a host sync. On the host, from
    the lagged evaluations: the same best value and epoch, and evaluations since the best."""

    def __init__(self, tree, members: int | None, patience: int):
        shape = () if members is None else (members,)
        self.tree = tree
        self.patience = patience
        self.best_value = np.full(shape, np.inf)
        self.best_epoch = np.zeros(shape, np.int64)
        self.since = np.zeros(shape, np.int64)
        self.stop_epoch = np.zeros(shape, np.int64)  # when each ran out of patience (0: not)
        self.stopped = False
        self.epochs_trained: int | None = None

    @classmethod
    def start(cls, stage: Stage, state) -> _Best:
        shape = () if stage.members is None else (stage.members,)
        tree = {
            "value": jnp.full(shape, jnp.inf, jnp.float32),
            "epoch": jnp.zeros(shape, jnp.int32),
            "since": jnp.zeros(shape, jnp.int32),
            "params": jax.tree.map(jnp.copy, state.params),  # the state's own are donated
        }
        return cls(tree, stage.members, stage.patience)

    def update(self, value, state, epoch: int) -> None:
        value = jnp.asarray(value, jnp.float32)
        self.tree = _improve(self.tree, value, state.params, epoch, self.patience)

    def observe(self, epoch: int, value: np.ndarray, failed: dict) -> None:
        """The host's mirror of ``_improve``, from the same (lagged) values."""
        value = value.astype(np.float32).astype(np.float64)  # the device compares float32
        active = self.since < self.patience
        better = (value < self.best_value) & active
        self.best_value = np.where(better, value, self.best_value)
        self.best_epoch = np.where(better, epoch, self.best_epoch)
        self.since = np.where(active, np.where(better, 0, self.since + 1), self.since)
        self.stop_epoch = np.where(active & (self.since >= self.patience), epoch, self.stop_epoch)

    def exhausted(self, patience: int, failed: dict) -> bool:
        since = np.atleast_1d(self.since)
        active = [i for i in range(since.size) if i not in failed]
        return bool(active) and all(since[i] >= patience for i in active)

    def record(self) -> dict:
        return {
            "best_value": np.atleast_1d(self.best_value).tolist(),
            "best_epoch": np.atleast_1d(self.best_epoch).tolist(),
            "since": np.atleast_1d(self.since).tolist(),
            "stop_epoch": np.atleast_1d(self.stop_epoch).tolist(),
            "stopped": self.stopped,
        }

    def restore(self, tree, record: dict | None) -> None:
        if tree is None or record is None:
            return
        shape = self.best_value.shape
        # The small counters come back committed to one device, beside parameters laid out
        # over the run's mesh, which a jitted update then refuses to mix: uncommitted, as
        # ``start`` made them, they go wherever the parameters are.
        counters = {k: jnp.asarray(jax.device_get(tree[k])) for k in ("value", "epoch", "since")}
        self.tree = {**tree, **counters}
        self.best_value = np.asarray(record["best_value"], np.float64).reshape(shape)
        self.best_epoch = np.asarray(record["best_epoch"], np.int64).reshape(shape)
        self.since = np.asarray(record["since"], np.int64).reshape(shape)
        stop = record.get("stop_epoch", np.zeros(shape))  # not in a checkpoint of before
        self.stop_epoch = np.asarray(stop, np.int64).reshape(shape)
        self.stopped = bool(record["stopped"])


def _profiled_epoch(stage: Stage, state, epoch: int):
    """One epoch under ``jax.profiler`` (its program was compiled before the loop began), in
    ``stage.profile_dir``: ``plugins/profile/<time>/*.xplane.pb``, what TensorBoard's profile
    plugin reads (``tensorboard --logdir <run dir>/tensorboard``, Profile tab)."""
    jax.block_until_ready(state)  # the trace holds this epoch's steps and nothing before them
    jax.profiler.start_trace(str(stage.profile_dir))
    try:
        state, metrics = stage.run_epoch(state, epoch)
        jax.block_until_ready((state, metrics))
    finally:
        jax.profiler.stop_trace()
    log.info(
        "%sprofile of epoch %d (%d steps) in %s",
        stage.label,
        epoch + 1,
        stage.steps_per_epoch,
        stage.profile_dir,
    )
    return state, metrics


def raise_if_preempted(where: str) -> None:
    """Between stages: honour a SIGTERM that arrived after the last epoch's checkpoint."""
    if preempt_requested():
        raise Preempted(f"{stop_signal()}: stopped {where}; run the same command again to resume")


def _diverged_message(stage: Stage, epoch: int, bad: int, per_step: dict, member=None) -> str:
    step = epoch * stage.steps_per_epoch + bad + 1
    loss = np.asarray(per_step["loss"]).reshape(-1)[bad]
    where = f"non-finite loss ({loss}) at epoch {epoch + 1}, global step {step}"
    if member is None:
        return stage.label + where
    names, hints = stage.member_names, stage.member_hints
    who = names[member] if names else f"member {member}"  # its job's directory
    return f"{stage.label}{who}: {where}. {hints[member] if hints else stage.hint}"


def _check(stage: Stage, epoch: int, per_step: dict, checkpointer) -> None:
    bad = _first_bad_step(per_step)
    if bad is None:
        return
    last = checkpointer.newest() if checkpointer is not None else None
    where = f"; the last good checkpoint is {last}" if last else "; no checkpoint was saved"
    raise TrainingDiverged(
        _diverged_message(stage, epoch, bad, per_step) + f"{where}. {stage.hint}"
    )


def _progress(stage: Stage, row: dict, elapsed: float, start_epoch: int) -> None:
    e = row["epoch"]
    if stage.progress and (e % stage.log_every == 0 or e == stage.epochs or e == start_epoch + 1):
        log.info(progress_line(stage, row, elapsed, start_epoch))


def _group_progress(stage: Stage, epoch: int, history, failed, elapsed: float, ended=()) -> None:
    e = epoch + 1
    if not stage.progress or not (e % stage.log_every == 0 or e == stage.epochs or e == 1):
        return
    evals = _member_evals(stage, history, failed, ended, e)
    log.info(
        "%sepoch %d/%d | %s%s | %s",
        stage.label,
        e,
        stage.epochs,
        _member_losses(stage, history, failed, ended),
        f" | {evals}" if evals else "",
        duration(elapsed, 1),
    )


def _member_evals(stage: Stage, history, failed, ended, epoch: int) -> str:
    """The members' held-out MSE of ``epoch`` where it was evaluated (``val mse 0 0.0160, 1
    0.0091``; beyond 8 members the lowest and the highest), as a single run's line shows it."""
    names, order = _jobs(stage, len(history))
    rows = {
        i: history[i][-1]
        for i in order
        if i not in failed and i not in ended and history[i] and history[i][-1]["epoch"] == epoch
    }
    key = next((k for row in rows.values() for k in row if k.endswith("/mse")), None)
    key = key if key and key.startswith(("eval/", "val/")) else None
    if key is None:
        return ""
    value = {i: row[key] for i, row in rows.items() if key in row}
    said = key.replace("/", " ")
    if len(history) <= 8:
        return f"{said} " + ", ".join(f"{names[i]} {v:.5g}" for i, v in value.items())
    low, high = min(value, key=value.get), max(value, key=value.get)
    return f"{said} {value[low]:.5g} ({names[low]}) to {value[high]:.5g} ({names[high]})"


def _jobs(stage: Stage, n: int) -> tuple[list[str], list[int]]:
    """The members' names by their jobs (each directory's name, ``1`` in a numbered sweep),
    and the members in the jobs' order: numbered jobs by number, named ones by name."""
    names = [Path(m).name for m in stage.member_names or ()] or [str(i) for i in range(n)]

    def job_order(i: int) -> tuple:
        return (not names[i].isdigit(), int(names[i]) if names[i].isdigit() else 0, names[i])

    return names, sorted(range(n), key=job_order)


def _member_epochs(stage: Stage, best: _Best, failed) -> str:
    """Each member's kept epoch, by its job in the jobs' order (``0 24, 1 8``)."""
    kept = np.atleast_1d(best.best_epoch).tolist()
    names, order = _jobs(stage, len(kept))
    return ", ".join(f"{names[i]} {int(kept[i])}" for i in order if i not in failed)


def _member_losses(stage: Stage, history, failed, ended=()) -> str:
    """The members' losses by their jobs: each one's, up to 8 members, in the jobs' order;
    beyond, the lowest, the median and the highest; and the failed, and those stopped early
    (``ended``), whose losses are no longer their runs'."""
    names, order = _jobs(stage, len(history))
    loss = {i: history[i][-1]["train/loss"] for i in order if i not in failed and i not in ended}
    if len(history) <= 8:
        shown = {**{i: "stopped" for i in ended}, **{i: "failed" for i in failed}}
        return "losses " + ", ".join(
            f"{names[i]} {shown[i] if i in shown else f'{loss[i]:.4f}'}" for i in order
        )
    said = []
    if loss:
        low, high = min(loss, key=loss.get), max(loss, key=loss.get)
        median = float(np.median(list(loss.values())))
        said.append(
            f"losses {loss[low]:.4f} ({names[low]}) to {loss[high]:.4f} ({names[high]}), "
            f"median {median:.4f}"
        )
    if failed:
        shown = [names[i] for i in order if i in failed]
        more = ", ..." if len(shown) > 5 else ""
        said.append(f"{len(shown)} failed ({', '.join(shown[:5])}{more})")
    if set(ended) - set(failed):
        said.append(f"{len(set(ended) - set(failed))} stopped early")
    return "; ".join(said)
