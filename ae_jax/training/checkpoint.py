"""Checkpoints of a training state with Orbax, verified on restore.

A checkpoint holds the state (any pytree: a ``TrainState`` with parameters, optimiser state,
step, both RNG keys and running statistics; a classifier's state; a vectorised group's stacked
states) and a JSON record: the epoch reached, the history so far, a SHA-256 digest of every
array, and the state's *signature* (its tree structure, shapes and dtypes). The data order is a
pure function of the data key and the epoch, so restoring continues a run exactly: an
interrupted-and-resumed run ends bitwise equal to an uninterrupted one on CPU.

On restore, a checkpoint whose signature differs from the state being trained belongs to
ANOTHER run (another model or stage) and is refused as such (``RunMismatch``), never called
corrupt; a truncated or altered checkpoint is skipped with a warning naming it and the one used
instead. A checkpoint that cannot be written raises ``CheckpointWriteError`` naming the path and
the reason, after saving the state to a rescue file where possible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ae_jax.run_io import free_bytes, size_text

log = logging.getLogger("ae_jax")
# Orbax reports every save at INFO through absl; our own log line says what matters.
logging.getLogger("absl").setLevel(logging.WARNING)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected; the message says what was found."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written; the message names the path, the reason, and where
    the state was saved instead."""


class RunMismatch(CheckpointError):
    """The checkpoints in a directory belong to another run (another model or stage)."""


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_saveable(state: Any) -> Any:
    """The state with typed PRNG keys as their raw uint32 data (what Orbax can write)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def _from_saveable(tree: Any, template: Any) -> Any:
    return jax.tree.map(
        lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        template,
        tree,
    )


def signature(state: Any) -> str:
    """The structure, shapes and dtypes of a state: equal for states of the same run."""
    leaves, treedef = jax.tree.flatten(_to_saveable(state))
    shapes = [f"{tuple(np.shape(x))}{np.dtype(getattr(x, 'dtype', np.float32))}" for x in leaves]
    return hashlib.sha256(f"{treedef}|{shapes}".encode()).hexdigest()[:16]


def _shapes(state: Any) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(_to_saveable(state))[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(x)) for path, x in flat}


def digest(tree: Any) -> str:
    """SHA-256 over the shapes, dtypes and bytes of every leaf (in tree order)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _read_failure(err: BaseException) -> str:
    """Why a checkpoint could not be read, in a few words: the error's first sentence without
    TensorStore's appended details (its specs, source locations, bound methods)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    text = re.split(r"\s*(?:See full TensorStore details|\[source locations|<bound method)", text)[
        0
    ]
    text = text.rstrip(" :;,")
    return text if len(text) <= 160 else text[:160].rsplit(" ", 1)[0] + " ..."


def _reason(err: BaseException) -> str:
    """One line for an OS or Orbax error: the OS reason where there is one."""
    while err is not None:
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
        code = re.search(r"os_error_code='(\d+)'", str(err))  # tensorstore's way to say it
        if code:
            return os.strerror(int(code.group(1)))
        if "RESOURCE_EXHAUSTED" in str(err):
            return "No space left on device"
        err = err.__cause__ or err.__context__
    return "write failed"


# What a checkpoint takes on disk beyond its arrays and JSON record: Orbax's metadata files
# (measured: ~90 KiB for the default run's, on 4 KiB blocks), rounded up.
_CHECKPOINT_OVERHEAD = 128 * 1024
# What a run writes besides its checkpoints (figures, history, logs, the final parameters of a
# small model), for the space check before training: a floor, not a promise.
OUTPUTS_FLOOR = 1024 * 1024


def nbytes(tree: Any) -> int:
    """Bytes of a pytree's arrays (typed PRNG keys as their raw data)."""
    return sum(
        int(np.prod(np.shape(x))) * np.dtype(getattr(x, "dtype", np.float32)).itemsize
        for x in jax.tree.leaves(_to_saveable(tree))
    )


def _free_here(directory: Path) -> int | None:
    """Free bytes where a checkpoint is written, as every process of a run sees it: process
    0's answer, so that all of them refuse a save (or a stage) together, never some of them
    while the others wait in the save's collective writes."""
    free = free_bytes(directory)
    if jax.process_count() == 1:
        return free
    from jax.experimental import multihost_utils

    # two int32s (JAX's default integers): GiB and the bytes beyond, -1 for "cannot say"
    parts = [-1, -1] if free is None else [free >> 30, free & (2**30 - 1)]
    gib, rest = (int(v) for v in multihost_utils.broadcast_one_to_all(np.int32(parts)))
    return None if gib < 0 else (gib << 30) + rest


def _absl_errors(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def _absl_warnings(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


def _not_missing_metadata(record: logging.LogRecord) -> bool:
    """Orbax warns, from a thread of its own, of a step without its ``_CHECKPOINT_METADATA``:
    whether such a checkpoint is usable is what ``restore_latest`` checks and says."""
    return not record.getMessage().startswith("Metadata file does not exist")


def _closed_loop_hook(previous):
    """``sys.unraisablehook`` without the "Event loop is closed" errors that tensorstore's
    threads raise, one traceback each, once a failed write has closed Orbax's event loop."""

    def hook(unraisable) -> None:
        err = unraisable.exc_value
        if not (isinstance(err, RuntimeError) and "Event loop is closed" in str(err)):
            previous(unraisable)

    return hook


@contextlib.contextmanager
def _orbax_failures_quiet(reading: bool = False):
    """While Orbax writes (or reads a checkpoint that may be damaged), its failures are this
    module's to report, in one line: Orbax's own error records (tracebacks from its writer
    threads; reading, also its warnings, such as a missing metadata file) are dropped, and
    after a failure also what its abandoned work raises later (asyncio's "exception was never
    retrieved" records, tensorstore's closed-loop errors). After success all is as before."""
    absl, previous = logging.getLogger("absl"), sys.unraisablehook
    quiet = _absl_warnings if reading else _absl_errors
    absl.addFilter(quiet)
    sys.unraisablehook = _closed_loop_hook(previous)
    try:
        yield
    except BaseException:
        logging.getLogger("asyncio").addFilter(lambda r: "never retrieved" not in r.getMessage())
        raise  # the hook stays: the abandoned writes fail after this
    else:
        sys.unraisablehook = previous
    finally:
        absl.removeFilter(quiet)


class Checkpointer:
    """Save / restore a state + history under ``directory`` (one subdirectory per epoch)."""

    def __init__(self, directory: str | Path, keep: int = 3):
        logging.getLogger("absl").addFilter(_not_missing_metadata)  # once: filters are a set
        self.directory = Path(directory).absolute()
        self.keep = keep
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep, create=True, enable_async_checkpointing=False
                ),
            )
        except Exception as err:
            raise CheckpointWriteError(
                f"cannot create the checkpoint directory {self.directory} ({_reason(err)}); "
                "choose a writable run directory (hydra.run.dir=...)"
            ) from None
        self.last_saved: Path | None = None
        self.last_extra: dict = {}
        self.last_aux: Any = None

    def path(self, epoch: int) -> Path:
        return self.directory / str(epoch)

    def epochs(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def newest(self) -> Path | None:
        """The checkpoint saved or restored last by this object, else the newest on disk."""
        if self.last_saved is not None:
            return self.last_saved
        epochs = self.epochs()
        return self.path(epochs[-1]) if epochs else None

    def save(
        self, epoch: int, state: Any, history: list, extra: dict | None = None, aux: Any = None
    ) -> Path:
        """Write the state after ``epoch`` epochs (collectively, on every process).

        ``aux`` is a second pytree saved beside the state (early stopping's best parameters);
        it is verified like the state but is not part of the run's signature.
        """
        tree = _to_saveable(state)
        items = {"state": ocp.args.StandardSave(tree)}
        meta = {
            "epoch": epoch,
            "digest": digest(tree),
            "signature": signature(state),
            "shapes": {k: list(v) for k, v in _shapes(state).items()},
            "history": history,
            "extra": extra or {},
        }
        if aux is not None:
            meta["aux_digest"] = digest(aux)
            items["aux"] = ocp.args.StandardSave(aux)
        need = nbytes(tree) + nbytes(aux) + len(json.dumps(meta)) + _CHECKPOINT_OVERHEAD
        free = _free_here(self.directory)
        if free is not None and free < need:  # refused here, not half-written by Orbax
            raise self._write_failed(
                epoch,
                tree,
                f"No space left on device: {size_text(free)} free in {self.directory}, the "
                f"checkpoint takes about {size_text(need)}",
            )
        try:
            with _orbax_failures_quiet():
                self.manager.save(
                    epoch,
                    args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items),
                    force=True,
                )
                self.manager.wait_until_finished()
        except Exception as err:
            raise self._write_failed(epoch, tree, _reason(err)) from None
        self.last_saved = self.path(epoch)
        return self.last_saved

    def check_space(
        self, state: Any, aux: Any = None, label: str = "this run", runs: int = 1
    ) -> None:
        """Refuse, before training, a directory without room for one checkpoint of this
        state and the other outputs of its ``runs`` runs (each later save is checked again
        before it is written)."""
        one = nbytes(state) + nbytes(aux) + _CHECKPOINT_OVERHEAD
        outputs = runs * OUTPUTS_FLOOR
        need = one + outputs
        free = _free_here(self.directory)
        if free is not None and free < need:
            raise CheckpointWriteError(
                f"{self.directory} has {size_text(free)} free, and {label} needs at least "
                f"{size_text(need)} there (a checkpoint of {size_text(one)} and "
                f"{size_text(outputs)} of figures and logs); free space there, or choose another "
                "directory (hydra.run.dir=..., or hydra.sweep.dir=... for a multirun)"
            )

    def _write_failed(self, epoch: int, tree: Any, reason: str) -> CheckpointWriteError:
        """The error of a checkpoint that could not be written: the path, the reason, where the
        state was saved instead, and what the same command would resume from."""
        newest = self.newest()
        then = (
            f"the same command resumes from {newest}" if newest else "the same command starts over"
        )
        return CheckpointWriteError(
            f"cannot write checkpoint {self.path(epoch)} ({reason}); "
            f"{self._rescue(epoch, tree)}. Once it can be written, {then}"
        )

    def _rescue(self, epoch: int, tree: Any) -> str:
        """Save the state where it can be written, so a failed checkpoint loses no training."""
        from flax import serialization

        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"ae_jax-rescue-epoch{epoch}-{stamp}-{os.getpid()}.msgpack"
        target = Path(tempfile.gettempdir()) / name
        try:
            target.write_bytes(serialization.to_bytes(jax.device_get(tree)))
        except OSError as err:
            return f"the state of epoch {epoch} could not be saved anywhere ({err.strerror})"
        return (
            f"the state of epoch {epoch} was saved to {target} instead "
            "(flax.serialization msgpack of the checkpoint tree)"
        )

    def _meta(self, epoch: int) -> dict:
        restored = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def _refuse_other_run(self, epoch: int, meta: dict, template: Any) -> None:
        stored = meta.get("signature")
        if stored is None or stored == signature(template):
            return
        theirs, ours = meta.get("shapes", {}), _shapes(template)
        diff = [
            k for k in sorted(set(theirs) | set(ours)) if tuple(theirs.get(k, ())) != ours.get(k)
        ]
        example = ""
        if diff:
            k = diff[0]
            example = (
                f" (e.g. {k}: {tuple(theirs[k]) if k in theirs else 'absent'} there, "
                f"{ours.get(k, 'absent')} here)"
            )
        raise RunMismatch(
            f"the checkpoints in {self.directory} belong to another run: their state differs "
            f"from this config's{example}. Use a new run directory, or trainer.resume=false "
            "to keep that run and write this one beside it"
        )

    def check_same_run(self, template: Any) -> None:
        """Raise ``RunMismatch`` if the newest readable checkpoint holds another run's state;
        called before a run writes anything, so that a refused run changes nothing."""
        for epoch in reversed(self.epochs()):
            try:
                meta = self._meta(epoch)
            except Exception:
                continue  # unreadable: restore_latest deals with it
            self._refuse_other_run(epoch, meta, template)
            return

    def _remove_unfinished_writes(self) -> None:
        """Orbax's temporary directories of saves a killed session did not finish
        (``<epoch>.orbax-checkpoint-tmp*``): never a checkpoint, and left there by Orbax."""
        import shutil

        if jax.process_index() != 0 or not self.directory.is_dir():
            return
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def restore_latest(self, template: Any, allow_none_valid: bool = False, aux: Any = None):
        """``(state, epoch, history)`` from the newest VALID checkpoint, or None; the
        checkpoint's ``extra`` record (e.g. a group's failed members) is in ``last_extra``, and
        its ``aux`` tree (restored like the template ``aux``, when both exist) in ``last_aux``.

        A checkpoint of another run raises ``RunMismatch``. Corrupt checkpoints are skipped
        with a warning naming them and the fallback; if some exist but none is valid,
        CheckpointError unless ``allow_none_valid``.
        """
        self._remove_unfinished_writes()
        epochs = self.epochs()
        if not epochs:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
        bad: list[str] = []
        for epoch in reversed(epochs):
            try:
                with _orbax_failures_quiet(reading=True):
                    meta = self._meta(epoch)
            except Exception as err:
                meta = None
                reason = _read_failure(err)
            if meta is not None:
                self._refuse_other_run(epoch, meta, template)  # not corrupt: another run
                try:
                    items = {"state": ocp.args.StandardRestore(abstract)}
                    with_aux = aux is not None and "aux_digest" in meta
                    if with_aux:
                        items["aux"] = ocp.args.StandardRestore(
                            jax.tree.map(ocp.utils.to_shape_dtype_struct, aux)
                        )
                    with _orbax_failures_quiet(reading=True):
                        restored = self.manager.restore(epoch, args=ocp.args.Composite(**items))
                    tree = restored["state"]
                    if digest(tree) != meta["digest"] or (
                        with_aux and digest(restored["aux"]) != meta["aux_digest"]
                    ):
                        raise CheckpointError("digest mismatch: the arrays on disk were altered")
                except Exception as err:  # any failure to read back means this one is unusable
                    reason = _read_failure(err)
                    meta = None
            if meta is None:
                bad.append(f"{self.path(epoch)} ({reason})")
                continue
            if bad:
                log.warning(
                    "skipped corrupt checkpoint(s): %s; resuming from %s instead",
                    "; ".join(bad),
                    self.path(epoch),
                )
                self._set_aside(e for e in epochs if e > epoch)
            self.last_saved = self.path(epoch)
            self.last_extra = dict(meta.get("extra", {}))
            self.last_aux = restored["aux"] if with_aux else None
            return _from_saveable(tree, template), int(meta["epoch"]), list(meta["history"])
        message = f"no valid checkpoint in {self.directory}: " + "; ".join(bad)
        if not allow_none_valid:
            raise CheckpointError(
                message + ". Set trainer.restart_if_corrupt=true to start this run from scratch"
            )
        log.warning("%s; starting from scratch (trainer.restart_if_corrupt=true)", message)
        self._set_aside(epochs)
        return None

    def _set_aside(self, epochs) -> None:
        """Rename corrupt checkpoints to ``corrupt-<epoch>-<time>`` (kept for inspection, out of
        the way of the epochs this run will save again)."""
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for epoch in epochs:
                self.path(epoch).rename(self.directory / f"corrupt-{epoch}-{stamp}")
        self.manager.reload()
