"""What the command-line entry points share: clean errors and a status file per run."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from ae_jax.config import ConfigError
from ae_jax.data import DataError
from ae_jax.loggers import LoggerError
from ae_jax.run_io import write_json_atomic
from ae_jax.training.checkpoint import CheckpointError
from ae_jax.training.loop import Preempted, TrainingDiverged
from ae_jax.training.rundir import RunDirError

log = logging.getLogger("ae_jax")
# Problems that are the user's to fix: reported in one line, exit status 2, no traceback.
USER_ERRORS = (ConfigError, DataError, RunDirError, CheckpointError, TrainingDiverged, LoggerError)
CACHE_ENV = "AE_JAX_COMPILATION_CACHE"  # a directory for compiled programs, or "off"
CACHE_DEFAULT = Path.home() / ".cache" / "ae_jax" / "xla"


def enable_compilation_cache() -> str | None:
    """Keep compiled XLA programs on disk between runs (JAX's persistent compilation cache).

    Compiling is most of a CPU run's startup: the parameter init and the epoch program take
    1-3 s each for the default run on 2 cores; a later run with the same shapes loads them
    instead (process start to the first step: 4.6 s -> 2.6 s; see PERFORMANCE.md).
    The directory is ``$AE_JAX_COMPILATION_CACHE`` (``off`` disables it), else
    ``~/.cache/ae_jax/xla``; a cache already chosen through JAX's own settings
    (``JAX_COMPILATION_CACHE_DIR``) is kept. A directory that cannot be created turns the
    cache off with one warning. Returns the directory in use, or None.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = os.environ.get(CACHE_ENV, str(CACHE_DEFAULT))
    if path.strip().lower() in ("", "off", "none", "0", "false"):
        return None
    try:
        Path(path).expanduser().mkdir(parents=True, exist_ok=True)
    except OSError as err:  # once, here, rather than a warning per compiled program
        print(
            f"warning: compilation cache off: cannot create {path} ({err.strerror}); set "
            f"{CACHE_ENV} to a writable directory, or to 'off'",
            file=sys.stderr,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # JAX's default threshold (1 s) leaves out the small programs that add up at startup.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return path


def quiet_console() -> None:
    """Keep library chatter (JAX's "Unable to initialize backend 'tpu'" on every CPU run, and
    the like) off the console: console handlers pass ae_jax's and Hydra's own lines and any
    warning; everything still reaches ``train.log``."""

    def ours(record: logging.LogRecord) -> bool:
        return record.name.startswith(("ae_jax", "hydra", "__main__"))

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.addFilter(lambda r: ours(r) or r.levelno >= logging.WARNING)


def check_output_dirs(argv: list[str]) -> None:
    """Refuse, in one line and before Hydra starts, a ``hydra.run.dir`` / ``hydra.sweep.dir``
    given on the command line that cannot be created (Hydra would stop with its own error)."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir") or "${" in value:
            continue
        try:
            Path(value).expanduser().mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(
                f"error: {key}={value} cannot be created ({err.strerror}); choose a writable "
                "directory",
                file=sys.stderr,
            )
            sys.exit(2)


def run_or_exit(
    fn: Callable[..., dict],
    cfg: Any,
    workdir: str | Path,
    exit_on_error: bool = True,
    hydra_files: dict | None = None,
) -> dict:
    """Run ``fn(cfg, workdir, rundir)``, recording ``status.json`` (running / completed /
    failed / preempted).

    The run directory is claimed first (``ae_jax.training.rundir``: a lock naming the holder,
    the stored config compared, writability). A problem that is the user's to fix (a value, the
    data, the directory, a diverged run) is reported as one line and the process exits with
    status 2 instead of a traceback; in a Hydra multirun (``exit_on_error=False``) the job is
    recorded as failed in its ``status.json`` and the multirun goes on (``MultirunSummary``
    lists the failures at the end and sets the exit status). Anything else is re-raised.

    A run that is refused before it starts (``RunDir.start``) writes nothing into a directory
    that holds an earlier run; in a fresh directory it records ``status.json`` = failed.
    In a multi-process run only process 0 writes.
    """
    from ae_jax.config import to_config, validate
    from ae_jax.training import distributed
    from ae_jax.training.rundir import (
        RunDir,
        claimed,
        fresh_or_resumed_workdir,
        hydra_record,
        write_hydra_files,
    )

    resume = bool(getattr(getattr(cfg, "trainer", None), "resume", True))
    workdir = fresh_or_resumed_workdir(Path(workdir), resume)
    earlier = RunDir(workdir).holds_run()
    started = time.time()
    state = {"main": True, "rundir": None}

    if hydra_files is None:  # a launcher that set the job up passes its record
        hydra_files = hydra_record(cfg)  # Hydra's record of this job, for .hydra/

    def record(**fields) -> None:
        rundir = state["rundir"]
        began = rundir is not None and rundir.started
        if not state["main"] or not (began or not earlier):
            return  # a refused rerun leaves the earlier run's files as they were
        try:
            if not began:  # a fresh directory: say what this job was (sweep reports read it)
                write_hydra_files(workdir, hydra_files)
            write_json_atomic(workdir / "status.json", {"started": started, **fields})
        except OSError:
            pass  # an unwritable directory was already reported in the error itself

    try:
        cfg = validate(to_config(cfg))
        distributed.initialize(cfg.trainer)  # before anything else touches the backend
        state["main"] = distributed.is_main_process()
        with claimed(cfg, workdir, hydra_files=hydra_files) as rundir:
            state["rundir"] = rundir
            rundir.on_start = lambda: record(status="running")
            result = fn(cfg, workdir, rundir)
    except Preempted as err:
        record(status="preempted", message=str(err), ended=time.time())
        log.warning("%s", err)
        sys.exit(0)  # a clean stop: the scheduler may requeue the same command to resume
    except (*USER_ERRORS, OSError) as err:
        if isinstance(err, OSError) and not isinstance(err, USER_ERRORS):
            # a file the run could not write or read (a full disk, a path that vanished):
            # one line naming it; the training state is in the last checkpoint
            err = RunDirError(f"{err.filename or 'a file'}: {err.strerror or err}")
        record(status="failed", error=f"{type(err).__name__}: {err}", ended=time.time())
        log.error("%s: %s", type(err).__name__, err)
        if not exit_on_error:
            return {}
        sys.exit(2)
    except BaseException as err:
        record(
            status="failed",
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc(),
            ended=time.time(),
        )
        raise
    record(status="completed", ended=time.time())
    return result


class MultirunSummary(Callback):
    """At the end of a Hydra multirun: one line per failed job (from each job's
    ``status.json``, whichever launcher ran it, vectorised members included) and exit status 2
    when any job failed, instead of Hydra's traceback of the first failure."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        import json

        root = Path(str(config.hydra.sweep.dir))
        counts: dict[str, int] = {}
        failed = []
        for status_file in sorted(root.glob("**/status.json")):
            try:
                status = json.loads(status_file.read_text())
            except (OSError, ValueError):
                continue
            s = status.get("status", "unknown")
            counts[s] = counts.get(s, 0) + 1
            if s == "failed":
                failed.append(f"  {status_file.parent}: {status.get('error', 'failed')}")
        if not counts:
            return
        log.info(
            "multirun %s: %s",
            root,
            ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        )
        if failed:
            log.error("%d job(s) failed:\n%s", len(failed), "\n".join(failed))
            sys.exit(2)
