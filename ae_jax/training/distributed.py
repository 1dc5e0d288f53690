"""Multi-process (multi-host) start-up: ``jax.distributed.initialize`` when asked or detected.

Every process runs the same program over a mesh of ALL devices of all processes; the small
training split is held by every process and each device gathers only its own share of each
global batch. Process 0 alone writes metrics, figures and logs; checkpoints are written by
all processes together (Orbax).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import jax

from ae_jax.config import ConfigError, TrainerConfig

log = logging.getLogger("ae_jax")


# What srun sets for each task it starts, and JAX's SLURM detection reads (besides
# SLURM_JOB_ID and SLURM_NTASKS, which the job's batch script has too).
SRUN_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")


def _slurm_tasks() -> int:
    """The number of tasks of the SLURM job this process is in (1 outside one)."""
    if "SLURM_JOB_ID" not in os.environ:
        return 1
    try:
        return int(os.environ.get("SLURM_NTASKS", "1") or 1)
    except ValueError:
        return 1


def slurm_without_srun() -> bool:
    """In a SLURM job of several tasks, but not started by srun (``python train.py`` in the
    job's batch script, or in ``salloc -n 2``): the one process of its batch step."""
    return _slurm_tasks() > 1 and not all(v in os.environ for v in SRUN_VARIABLES)


def detected_cluster() -> str | None:
    """'tpu-pod' or 'slurm' when the environment is a multi-process launch, else None."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h]) > 1:
        return "tpu-pod"
    if _slurm_tasks() > 1 and not slurm_without_srun():
        return "slurm"
    return None


_SAID: set[str] = set()  # warnings given once per process (initialize runs twice)


def _warn_once(message: str, *args) -> None:
    line = message % args
    if line not in _SAID:
        _SAID.add(line)
        log.warning("%s", line)


def initialize(cfg: TrainerConfig) -> bool:
    """Call ``jax.distributed.initialize`` if ``trainer.distributed`` (or auto-detection) says so.

    Returns True when this is a multi-process run. Safe to call twice.
    """
    wanted = cfg.distributed if cfg.distributed is not None else detected_cluster() is not None
    if not wanted:
        if cfg.distributed is None and slurm_without_srun():
            _warn_once(
                "a SLURM job of %d tasks, but this process was not started by srun: it trains "
                "alone, on its own devices (srun python experiments/train.py ... starts one "
                "process per task, which then train together)",
                _slurm_tasks(),
            )
        given = [
            f"trainer.{k}={getattr(cfg, k)}"
            for k in ("coordinator_address", "num_processes", "process_id")
            if getattr(cfg, k) is not None
        ]
        if given:
            _warn_once(
                "%s: not used, this run is one process (trainer.distributed=%s); set "
                "trainer.distributed=true to start a multi-process run",
                " ".join(given),
                "false" if cfg.distributed is False else "null, and no cluster was detected",
            )
        return False
    if jax.distributed.is_initialized():
        return True
    cluster = detected_cluster()
    if cluster is None and slurm_without_srun() and cfg.coordinator_address is None:
        raise ConfigError(
            f"trainer.distributed=true in a SLURM job of {_slurm_tasks()} tasks, but this "
            f"process was not started by srun ({', '.join(SRUN_VARIABLES)} are unset): start "
            "one process per task with srun python experiments/train.py ..., or set "
            "trainer.distributed=false to train in this one"
        )
    if cluster is None and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [
            key
            for key in ("coordinator_address", "num_processes", "process_id")
            if getattr(cfg, key) is None
        ]
        if missing:  # nothing else would say where the processes meet
            raise ConfigError(
                "trainer.distributed=true outside a TPU pod or a SLURM job needs "
                + ", ".join(f"trainer.{k}" for k in missing)
                + " (e.g. trainer.coordinator_address=HOST:PORT trainer.num_processes=2 "
                "trainer.process_id=0 on the first process, 1 on the second)"
            )
        log.info(
            "distributed: process %d waiting for all %d processes at %s (JAX gives up after "
            "5 minutes)",
            cfg.process_id,
            cfg.num_processes,
            cfg.coordinator_address,
        )
    kwargs = {}
    if cfg.coordinator_address is not None:
        kwargs["coordinator_address"] = cfg.coordinator_address
    if cfg.num_processes is not None:
        kwargs["num_processes"] = cfg.num_processes
    if cfg.process_id is not None:
        kwargs["process_id"] = cfg.process_id
    # CPU processes talk through gloo (GPU/TPU use their own collectives; the flag is ignored).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _initialize_interruptibly(kwargs)
    local, total, processes = jax.local_device_count(), jax.device_count(), jax.process_count()
    if local * processes != total:  # Orbax's checkpoint layout would fail with a wrong reason
        raise ConfigError(
            f"every process of a multi-process run needs the same number of devices: process "
            f"{jax.process_index()} has {local}, and the {processes} processes have {total} in "
            "all; give each the same (trainer.devices does not apply per process)"
        )
    log.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def _initialize_interruptibly(kwargs: dict) -> None:
    """``jax.distributed.initialize(**kwargs)``, which blocks in C++ until every process has
    joined: Python's Ctrl-C handler cannot run there, and the process ignored Ctrl-C for up to
    JAX's 5 minutes. It runs on a helper thread while the main thread waits for it, so Ctrl-C
    ends the wait: one line and exit status 130, at once (the pending connection cannot be
    cancelled; nothing has been written yet)."""
    failed: list[BaseException] = []

    def connect() -> None:
        try:
            jax.distributed.initialize(**kwargs)
        except BaseException as err:  # noqa: BLE001 - raised again on the main thread
            failed.append(err)

    helper = threading.Thread(target=connect, name="jax-distributed-initialize", daemon=True)
    helper.start()
    try:
        while helper.is_alive():
            helper.join(0.2)
    except KeyboardInterrupt:
        sys.stderr.write("Ctrl-C: stopped waiting for the other processes of the run\n")
        sys.stderr.flush()
        with open(os.devnull, "w") as quiet:  # the abandoned connection's C++ log, if any
            os.dup2(quiet.fileno(), 2)
        os._exit(130)
    if failed:
        raise failed[0]


def is_main_process() -> bool:
    return jax.process_index() == 0
