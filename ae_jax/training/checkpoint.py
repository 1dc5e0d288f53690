"""Checkpoints of the full training state with Orbax, verified on restore.

A checkpoint holds the ``TrainState`` (parameters, optimiser state, step, both RNG keys, running
statistics) and a JSON record (the epoch reached, the history so far, and a SHA-256 digest of
every array). The data order is a pure function of ``data_key`` and the epoch, so restoring both
continues a run exactly: an interrupted-and-resumed run ends bitwise equal to an uninterrupted
one on CPU. On restore the digest is recomputed; a truncated or corrupt checkpoint is skipped
with a warning naming it and the one used instead.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ae_jax.training.state import TrainState

log = logging.getLogger("ae_jax")
# Orbax reports every save at INFO through absl; our own log line says what matters.
logging.getLogger("absl").setLevel(logging.WARNING)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected; the message says what was found."""


def _to_saveable(state: TrainState) -> dict:
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "key": jax.random.key_data(state.key),
        "data_key": jax.random.key_data(state.data_key),
        "running": state.running,
    }


def _from_saveable(tree: dict, template: TrainState) -> TrainState:
    impl = jax.random.key_impl(template.key)
    return template.replace(
        step=tree["step"],
        params=tree["params"],
        opt_state=tree["opt_state"],
        key=jax.random.wrap_key_data(tree["key"], impl=impl),
        data_key=jax.random.wrap_key_data(tree["data_key"], impl=impl),
        running=tree["running"],
    )


def digest(tree: Any) -> str:
    """SHA-256 over the shapes, dtypes and bytes of every leaf (in tree order)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Save / restore ``TrainState`` + history under ``directory`` (one subdirectory per epoch)."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
        )
        self.last_saved: Path | None = None

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

    def save(self, epoch: int, state: TrainState, history: list[dict]) -> Path:
        """Write the state after ``epoch`` epochs (collectively, on every process)."""
        tree = _to_saveable(state)
        meta = {"epoch": epoch, "step": int(state.step), "digest": digest(tree), "history": history}
        self.manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.manager.wait_until_finished()
        self.last_saved = self.path(epoch)
        return self.last_saved

    def restore_latest(self, template: TrainState, allow_none_valid: bool = False):
        """``(state, epoch, history)`` from the newest VALID checkpoint, or None if there is none.

        Corrupt checkpoints are skipped with a warning naming them and the fallback; if some exist
        but none is valid, CheckpointError unless ``allow_none_valid``.
        """
        epochs = self.epochs()
        if not epochs:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
        bad: list[str] = []
        for epoch in reversed(epochs):
            try:
                restored = self.manager.restore(
                    epoch,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                    ),
                )
                tree, meta = restored["state"], restored["meta"]
                if digest(tree) != meta["digest"]:
                    raise CheckpointError("digest mismatch: the arrays on disk were altered")
            except Exception as err:  # any failure to read back means this one is unusable
                reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
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
