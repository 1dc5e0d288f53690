"""The ``vmap`` Hydra launcher: run a sweep's jobs through ae-jax's vectorised engine.

    python experiments/train.py --multirun +sweep=noise_level hydra/launcher=vmap

Hydra composes every job as usual (its own run directory, ``.hydra/`` files, overrides); instead
of training the jobs one after another, the launcher groups those that differ only in scalars
that do not change the program (noise level, regularisation strength, learning rate, seed) and
trains each group as one ``jax.vmap``-ed program (``ae_jax.sweeps.vectorized``). Every job ends
with the same files a sequential run writes.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


# No `from __future__ import annotations` in this module: Hydra imports plugins without
# registering them in sys.modules, and dataclasses then cannot resolve string annotations.
@dataclass
class VmapLauncherConf:
    _target_: str = "hydra_plugins.ae_jax_vmap_launcher.vmap_launcher.VmapLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="vmap", node=VmapLauncherConf)


class VmapLauncher(Launcher):
    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from ae_jax.config import register_configs, to_config, validate
        from ae_jax.run_io import write_json_atomic
        from ae_jax.sweeps.vectorized import group_by_program, train_group

        setup_globals()
        register_configs()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

        # 1. Let Hydra set up each job (directory, .hydra/ files, logging) with a task that only
        #    records the job's config and directory.
        jobs: list[tuple[Any, Path, JobReturn]] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            seen: dict = {}

            def record(cfg: DictConfig, seen=seen) -> None:
                seen["cfg"] = cfg
                seen["dir"] = Path(HydraConfig.get().runtime.output_dir)

            ret = run_job(
                hydra_context=self.hydra_context,
                task_function=record,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            jobs.append((seen.get("cfg"), seen.get("dir"), ret))
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

        # 2. Train: one vectorised program per group of compatible jobs. A group that fails is
        #    recorded as failed in each of its jobs; the other groups still run.
        configs, valid = [], []
        for i, (cfg, workdir, ret) in enumerate(jobs):
            try:
                configs.append(validate(to_config(cfg)))
                valid.append(i)
            except Exception as err:  # a bad member fails alone, with its reason
                write_json_atomic(workdir / "status.json", {"status": "failed", "error": str(err)})
                ret.status, ret._return_value = JobStatus.FAILED, err
        for group in group_by_program(configs):
            members = [valid[g] for g in group]
            try:
                results = train_group([configs[g] for g in group], [jobs[m][1] for m in members])
            except Exception as err:
                log.exception("vectorised group of jobs %s failed", members)
                for m in members:
                    write_json_atomic(
                        jobs[m][1] / "status.json",
                        {"status": "failed", "error": f"{type(err).__name__}: {err}"},
                    )
                    jobs[m][2].status, jobs[m][2]._return_value = JobStatus.FAILED, err
                continue
            for m, metrics in zip(members, results):
                jobs[m][2]._return_value = metrics.get("test/mse", float("nan"))
        return [ret for _, _, ret in jobs]
