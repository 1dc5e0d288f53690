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
    from ae_jax.training.trainer import TrainingDiverged

    workdir = Path(workdir)
    status = workdir / "status.json"
    started = time.time()
    write_json_atomic(status, {"status": "running", "started": started})
    try:
        result = fn(cfg, workdir)
    except (*USER_ERRORS, TrainingDiverged) as err:
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
