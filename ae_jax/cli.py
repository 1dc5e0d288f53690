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

from ae_jax.config import ConfigError
from ae_jax.data import DataError
from ae_jax.run_io import write_json_atomic

log = logging.getLogger("ae_jax")
USER_ERRORS = (ConfigError, DataError)
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


def run_or_exit(
    fn: Callable[..., dict], cfg: Any, workdir: str | Path, exit_on_error: bool = True
) -> dict:
    """Run ``fn(cfg, workdir)``, recording ``status.json`` (running / completed / failed /
    preempted).

    A configuration or data problem is the user's to fix: it is reported as one clear line and
    the process exits with status 2 instead of a traceback. Anything else is re-raised.
    In a multi-process run only process 0 writes ``status.json``. With ``exit_on_error=False``
    (a Hydra multirun) the error is recorded and re-raised, so Hydra marks this job failed and
    goes on with the next one.
    """
    from ae_jax.config import to_config, validate
    from ae_jax.train import fresh_or_resumed_workdir
    from ae_jax.training import distributed
    from ae_jax.training.checkpoint import CheckpointError
    from ae_jax.training.trainer import Preempted, TrainingDiverged

    resume = bool(getattr(getattr(cfg, "trainer", None), "resume", True))
    workdir = fresh_or_resumed_workdir(Path(workdir), resume)
    started = time.time()
    main = True

    def record(**fields) -> None:
        if main:
            write_json_atomic(workdir / "status.json", {"started": started, **fields})

    try:
        cfg = validate(to_config(cfg))
        distributed.initialize(cfg.trainer)  # before anything else touches the JAX backend
        main = distributed.is_main_process()
        record(status="running")
        result = fn(cfg, workdir)
    except Preempted as err:
        record(status="preempted", message=str(err), ended=time.time())
        log.warning("%s", err)
        sys.exit(0)  # a clean stop: the scheduler may requeue the same command to resume
    except (*USER_ERRORS, TrainingDiverged, CheckpointError) as err:
        record(status="failed", error=f"{type(err).__name__}: {err}", ended=time.time())
        log.error("%s: %s", type(err).__name__, err)
        if not exit_on_error:
            raise
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
