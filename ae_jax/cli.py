"""What the command-line entry points share: clean errors and a status file per run."""

from __future__ import annotations

import logging
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
