"""Tests of the launcher presets in conf/hydra/launcher/ (Hydra's submitit plugin): they
compose onto the plugin's own configs, the GPU-sharing ones turn off JAX's preallocation, the
SLURM ones render an sbatch script through submitit, and the local executor runs a real 2-job
multirun on digits whose jobs both complete."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (REPO / "conf" / "hydra" / "launcher").glob("*.yaml"))
PLUGIN = "hydra_plugins.hydra_submitit_launcher.submitit_launcher."
SHARED_GPU = ("local_gpu", "slurm_gpu_shared")


def hydra_section(preset: str):
    cfg = compose("config", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True)
    return cfg.hydra


def test_the_presets_are_there():
    assert {"local", "local_gpu", "slurm_cpu", "slurm_gpu", "slurm_gpu_shared"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_extends_the_plugins_launcher(hydra_conf, preset):
    h = hydra_section(preset)
    kind = "LocalLauncher" if preset.startswith("local") else "SlurmLauncher"
    assert h.launcher._target_ == PLUGIN + kind
    assert h.launcher.submitit_folder.endswith("/.submitit/%j")  # the plugin's own keys
    assert 0 < h.launcher.timeout_min <= 24 * 60
    text = (REPO / "conf" / "hydra" / "launcher" / f"{preset}.yaml").read_text()
    assert f"hydra/launcher={preset}" in text, "the preset's comment shows how to use it"


@pytest.mark.parametrize("preset", PRESETS)
def test_jobs_sharing_a_gpu_do_not_preallocate_it(hydra_conf, preset):
    h = hydra_section(preset)
    env = OmegaConf.to_container(h.job.env_set)
    wants_gpu = bool(h.launcher.gpus_per_node) or "shard" in str(h.launcher.get("gres"))
    if preset in SHARED_GPU:
        assert wants_gpu
        assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
        fraction = float(env["XLA_CLIENT_MEM_FRACTION"])
        assert 0 < fraction <= 0.5  # at least two jobs fit on the card
        # JAX 0.10 refuses the old and the new name together.
        assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env
    elif not wants_gpu:
        assert env.get("JAX_PLATFORMS") == "cpu"  # no GPU requested: do not probe for one


def _sbatch(h, tmp_path) -> str:
    """The sbatch script submitit would submit, built from the preset as the plugin does."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = OmegaConf.to_container(h.launcher, resolve=False)
    params.pop("_target_")
    params.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        folder=tmp_path / "%j",
        cluster="slurm",
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params["name"] = "train"
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m submitit.core._submit x", "u")


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.startswith("slurm")])
def test_slurm_preset_renders_an_sbatch_script(hydra_conf, preset, tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit checks that srun exists
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    h = hydra_section(preset)
    script = _sbatch(h, tmp_path)
    assert f"#SBATCH --time={h.launcher.timeout_min}" in script
    assert f"#SBATCH --cpus-per-task={h.launcher.cpus_per_task}" in script
    assert f"#SBATCH --mem={h.launcher.mem_gb}GB" in script
    if preset == "slurm_gpu":
        assert "#SBATCH --gpus-per-node=1" in script and "--gres" not in script
    elif preset == "slurm_gpu_shared":
        assert "#SBATCH --gres=shard:1" in script and "--gpus-per-node" not in script
    else:
        assert "gpus" not in script and "--gres" not in script


@pytest.mark.slow
def test_local_executor_runs_a_real_two_job_multirun(tmp_path):
    sweep_dir = tmp_path / "mr"
    cmd = [
        sys.executable,
        "experiments/train.py",
        "--multirun",
        "hydra/launcher=local",
        "trainer.seed=0,1",
        "trainer.epochs=2",
        "trainer.figures=false",
        "trainer.devices=1",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    job_ids = set()
    for num in ("0", "1"):
        run = sweep_dir / num
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "completed", status
        metrics = json.loads((run / "metrics.json").read_text())
        assert math.isfinite(metrics["test/mse"]) and metrics["test/pca_mse"] > 0
        hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra["launcher"]["_target_"] == PLUGIN + "LocalLauncher"
        assert hydra["job"]["env_set"]["JAX_PLATFORMS"] == "cpu"
        assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["seed"] == int(num)
        job_ids.add(hydra["job"]["id"])  # submitit's job id: the job's own process
    assert len(job_ids) == 2 and all(str(i).isdigit() for i in job_ids)
    logs = list((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # each job ran in its own submitit process, with its own log
