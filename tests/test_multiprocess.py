"""Two processes on localhost (4 fake CPU devices each, coordinator on 127.0.0.1) train exactly
what one process with 8 devices trains: same global batches, same final parameters."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO
from flax import serialization

ARGS = (
    "trainer.epochs=4",
    "trainer.figures=false",
    "trainer.checkpoint_every=2",
    "noise=masking",
    "noise.level=0.2",
)


def _env(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(workdir):
    raw = serialization.msgpack_restore((workdir / "params.msgpack").read_bytes())
    return jax.tree.leaves(raw)


def test_two_processes_equal_one_process_with_the_same_devices(tmp_path):
    single = tmp_path / "single"
    proc = subprocess.run(
        [
            sys.executable,
            "experiments/train.py",
            f"hydra.run.dir={single}",
            "trainer.devices=8",
            *ARGS,
        ],
        cwd=REPO,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    multi = tmp_path / "multi"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "experiments/train.py",
                f"hydra.run.dir={multi}",
                *ARGS,
                "trainer.distributed=true",
                f"trainer.coordinator_address=127.0.0.1:{port}",
                "trainer.num_processes=2",
                f"trainer.process_id={i}",
            ],
            cwd=REPO,
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "process 0 of 2, 4 local / 8 global devices" in outs[0]
    assert "on 8 cpu devices (8 examples each, shard_map)" in outs[0]
    devices = json.loads((multi / "run.json").read_text())["devices"]
    assert devices == {"count": 8, "platform": "cpu", "parallel": "shard_map"}
    for a, b in zip(_params(multi), _params(single)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    m_multi = json.loads((multi / "metrics.json").read_text())
    m_single = json.loads((single / "metrics.json").read_text())
    assert abs(m_multi["test/mse"] - m_single["test/mse"]) < 1e-5
    # only process 0 wrote the run's files; the checkpoint was written by both together
    assert json.loads((multi / "status.json").read_text())["status"] == "completed"
    assert (multi / "checkpoints" / "4").exists()


def test_distributed_without_a_meeting_place_is_one_config_error(monkeypatch):
    # it was JAX's "coordinator_address should be defined" traceback
    from ae_jax.config import ConfigError, TrainerConfig
    from ae_jax.training.distributed import initialize

    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match=r"needs trainer.coordinator_address, trainer.num_proc"):
        initialize(TrainerConfig(distributed=True))
    cfg = TrainerConfig(distributed=True, coordinator_address="127.0.0.1:1", num_processes=2)
    with pytest.raises(ConfigError, match=r"needs trainer.process_id \(e.g."):
        initialize(cfg)


def test_a_slurm_job_of_several_tasks_not_started_by_srun_trains_in_one_process(
    monkeypatch, caplog
):
    """``python train.py`` in an sbatch script of 2 tasks (or in ``salloc -n 2``) is one
    process: it was taken for a multi-process launch, and JAX's own SLURM detection, which
    needs what srun sets, failed with "coordinator_address should be defined" and a
    traceback."""
    import logging

    from ae_jax.config import ConfigError, TrainerConfig
    from ae_jax.training.distributed import SRUN_VARIABLES, detected_cluster, initialize

    for var in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", *SRUN_VARIABLES):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert detected_cluster() is None
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        assert initialize(TrainerConfig()) is False  # auto: trains alone, and says why
    assert "a SLURM job of 2 tasks, but this process was not started by srun" in caplog.text
    with pytest.raises(ConfigError, match=r"trainer.distributed=true in a SLURM job of 2 tasks"):
        initialize(TrainerConfig(distributed=True))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ae_jax"):  # meeting settings, not used
        assert initialize(TrainerConfig(distributed=False, num_processes=2, process_id=1)) is False
    assert "trainer.num_processes=2 trainer.process_id=1: not used, this run is one" in caplog.text
    for var, value in zip(SRUN_VARIABLES, ("node1", "0", "0")):  # started by srun
        monkeypatch.setenv(var, value)
    assert detected_cluster() == "slurm"


def test_ctrl_c_while_waiting_for_the_other_processes_stops_at_once(tmp_path):
    """jax.distributed.initialize blocks in C++ until every process has joined, where the
    Ctrl-C handler cannot run: a process whose partner never came ignored Ctrl-C for JAX's 5
    minutes. It now stops at once, in one line, with exit status 130."""
    import signal
    import time

    cmd = [
        sys.executable,
        "experiments/train.py",
        f"hydra.run.dir={tmp_path}",
        "trainer.distributed=true",
        f"trainer.coordinator_address=127.0.0.1:{_free_port()}",
        "trainer.num_processes=2",
        "trainer.process_id=0",
    ]
    log = tmp_path.parent / "alone.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=_env(1))
        deadline = time.time() + 120
        while "waiting for all 2 processes" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # in the wait itself
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=20)
        finally:
            proc.kill()
    said = log.read_text()
    assert code == 130, said[-3000:]
    assert "Ctrl-C: stopped waiting for the other processes of the run" in said
    assert "Traceback" not in said and "Check failure" not in said
