"""What the command-line entry points share: clean errors and a status file per run."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ae_jax.config import ConfigError
from ae_jax.data import DataError
from ae_jax.run_io import write_json_atomic

log = logging.getLogger("ae_jax")
USER_ERRORS = (ConfigError, DataError)


def run_or_exit(fn: Callable[..., dict], cfg: Any, workdir: str | Path) -> dict:
    """Run ``fn(cfg, workdir)``, recording ``status.json`` (running / completed / failed).

    A configuration or data problem is the user's to fix: it is reported as one clear line and
    the process exits with status 2 instead of a traceback. Anything else is re-raised.
    """
    from ae_jax.training.checkpoint import CheckpointError
    from ae_jax.training.trainer import Preempted, TrainingDiverged

    from ae_jax.train import fresh_or_resumed_workdir

    resume = bool(getattr(getattr(cfg, "trainer", None), "resume", True))
    workdir = fresh_or_resumed_workdir(Path(workdir), resume)
    status = workdir / "status.json"
    started = time.time()
    write_json_atomic(status, {"status": "running", "started": started})
    try:
        result = fn(cfg, workdir)
    except Preempted as err:
        write_json_atomic(status, {"status": "preempted", "message": str(err),
                                   "started": started, "ended": time.time()})
        log.warning("%s", err)
        sys.exit(0)  # a clean stop: the scheduler may requeue the same command to resume
    except (*USER_ERRORS, TrainingDiverged, CheckpointError) as err:
        write_json_atomic(status, {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                   "started": started, "ended": time.time()})
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(2)
    except BaseException as err:
        write_json_atomic(status, {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                   "traceback": traceback.format_exc(),
                                   "started": started, "ended": time.time()})
        raise
    write_json_atomic(status, {"status": "completed", "started": started, "ended": time.time()})
    return result
