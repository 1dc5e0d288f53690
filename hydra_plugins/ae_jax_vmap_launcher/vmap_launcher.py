"""The ``vmap`` Hydra launcher: run a sweep's jobs through ae-jax's vectorised engine.

    python experiments/train.py --multirun +sweep=noise_level hydra/launcher=vmap

Hydra composes every job as usual (its own run directory, ``.hydra/`` files, overrides); instead
of training the jobs one after another, the launcher groups those that differ only in scalars
that do not change the program (noise level, regularisation strength, learning rate, seed) and
trains each group as one ``jax.vmap``-ed program (``ae_jax.sweeps.vectorized``). Every job ends
with the same files a sequential run writes.
"""

import contextlib
import logging
import sys
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
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


# No `from __future__ import annotations` in this module: Hydra imports plugins without
# registering them in sys.modules, and dataclasses then cannot resolve string annotations.
@dataclass
class VmapLauncherConf:
    _target_: str = "hydra_plugins.ae_jax_vmap_launcher.vmap_launcher.VmapLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="vmap", node=VmapLauncherConf)


class SweepComposer:
    """Hydra's ``load_sweep_config``, composing once per shape of the jobs' overrides.

    Composing a job's config costs Hydra about 0.15 s (its defaults tree, then merges and
    copies), and a sweep pays it twice per job: the sweeper composes each job to check it
    (``Sweeper.validate_batch_is_legal``), then the launcher composes it again. For 64 members
    that is longer than training them. Jobs whose overrides differ only in the VALUES of plain
    keys (``noise.level=0.1``: no group choice, no ``+``/``~``, no ``hydra.`` key) share one
    composition, of the overrides that are not plain. Each job's config is a copy of it with
    the job's plain overrides applied by Hydra's own code (``_apply_overrides_to_config``, what
    composition does last), and its own ``hydra.overrides.task`` and
    ``hydra.job.override_dirname``; ``tests/test_sweep_composer.py`` checks it equals
    Hydra's composition. The job checked by the sweeper is handed to the launcher, not
    composed again."""

    def __init__(self, loader: Any) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.loader = loader
        self.compose_fully = loader.load_sweep_config  # Hydra's, bound to the loader
        self.parser = OverridesParser.create()
        self.shapes: dict[tuple[str, ...], DictConfig] = {}
        self.checked: dict[tuple[str, ...], DictConfig] = {}
        self.compositions = 0  # full compositions (the test counts them)

    @classmethod
    def install(cls, loader: Any) -> "SweepComposer":
        current = loader.__dict__.get("load_sweep_config")
        if isinstance(current, cls):
            return current
        composer = cls(loader)
        loader.load_sweep_config = composer  # this loader (and so this sweep) only
        return composer

    def _plain(self, override: Any) -> bool:
        from hydra.core.override_parser.types import OverrideType

        key = override.key_or_group
        return (
            override.type == OverrideType.CHANGE
            and not override.is_hydra_override()
            and not override.is_sweep_override()
            and override.package is None
            and "/" not in key
            and not self.loader.repository.group_exists(key.replace(".", "/"))
        )

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        import copy

        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        job = tuple(sweep_overrides)
        if job in self.checked:  # composed for the sweeper's check moments ago
            return self.checked.pop(job)
        parsed = self.parser.parse_overrides(list(sweep_overrides))
        plain = [o for o in parsed if self._plain(o)]
        shape = tuple(o.input_line for o in parsed if not self._plain(o))
        if shape not in self.shapes:
            self.shapes[shape] = self.compose_fully(master_config, list(shape))
            self.compositions += 1
        cfg = copy.deepcopy(self.shapes[shape])
        ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
        app = [o for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in app]
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app,
                kv_sep=dirname.kv_sep,
                item_sep=dirname.item_sep,
                exclude_keys=dirname.exclude_keys,
            )
        self.checked[job] = cfg  # the sweeper's check only reads it
        return cfg


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
        SweepComposer.install(hydra_context.config_loader)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from ae_jax.cli import USER_ERRORS, is_search, job_score, quiet_console
        from ae_jax.config import register_configs, to_config, validate
        from ae_jax.training.rundir import (
            RunDirError,
            claimed,
            fresh_or_resumed_workdir,
            hydra_record,
        )

        setup_globals()
        register_configs()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        # A trial of an Optuna search that fails scores +inf (job_score), here as under the
        # basic launcher: the jobs train outside their Hydra context, so it is said here.
        search = is_search(self.config.hydra)

        # 1. Let Hydra set up each job (directory, .hydra/ files, logging) with a task that only
        #    records the job's config and directory.
        jobs: list[tuple[Any, Path, JobReturn]] = []
        records: list[dict] = []  # each job's .hydra/ texts, written when its group starts
        log_files: list[list[dict]] = []  # each job's log files (hydra.job_logging)
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
                seen["hydra"] = hydra_record(cfg)
                seen["log_files"] = job_log_files(HydraConfig.get().job_logging)

            # Without the job's logging: its log file is opened while the job trains
            # (job_logs), and the console keeps the launcher's format for every "#k" line.
            ret = run_job(
                hydra_context=self.hydra_context,
                task_function=record,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
                configure_logging=False,
            )
            jobs.append((seen.get("cfg"), seen.get("dir"), ret))
            records.append(seen.get("hydra", {}))
            log_files.append(seen.get("log_files", []))
        quiet_console()  # library chatter (JAX's "Unable to initialize backend") off the console

        # 2. Train: one vectorised program per group of compatible jobs. A bad member or a
        #    group that fails is recorded in each of its jobs' status.json (one line on the
        #    console, no traceback); the other groups still run, and ae_jax.cli.MultirunSummary
        #    lists the failures at the end.
        configs, valid = [], []
        for i, (cfg, workdir, ret) in enumerate(jobs):
            try:
                configs.append(validate(to_config(cfg)))
                valid.append(i)
            except USER_ERRORS as err:  # a bad member fails alone, with its reason
                log.error("job #%d: %s: %s", initial_job_idx + i, type(err).__name__, err)
                _fail_or_refuse(workdir, err, records[i])
                ret._return_value = job_score(cfg, {}, search)
        # A layer-wise pipeline (pretrain.enabled) is several programs in sequence, not one
        # program the members could share: such a job trains on its own, the normal way.
        alone = [k for k, c in enumerate(configs) if c.pretrain.enabled]
        for k in alone:
            i = valid[k]
            log.info(
                "job #%d: a layer-wise pipeline does not vectorise; trained on its own",
                initial_job_idx + i,
            )
            with job_logs([(jobs[i][1], log_files[i])]):
                _run_alone(configs[k], jobs[i][1], records[i], jobs[i][2], search)
        configs = [c for k, c in enumerate(configs) if k not in alone]
        valid = [v for k, v in enumerate(valid) if k not in alone]
        for k, cfg in enumerate(configs):  # trainer.resume=false: beside an earlier run, kept
            i = valid[k]
            old, (job_cfg, _, ret) = jobs[i][1], jobs[i]
            fresh = fresh_or_resumed_workdir(old, cfg.trainer.resume)
            if fresh != old:
                jobs[i] = (job_cfg, fresh, ret)
                log_files[i] = [_moved_log(f, old, fresh) for f in log_files[i]]
        # Each job's directory is claimed (locked, its earlier run's config compared) before
        # the groups form: one that holds another run refuses its own job, as under the basic
        # launcher, and the others still train together. The claims last until every group
        # has trained. This process is the multirun's only one (main=True: asking JAX would
        # start its backend before the groups' CPU devices are set up).
        with contextlib.ExitStack() as claims:
            rundirs: dict[int, Any] = {}
            for k, cfg in enumerate(configs):
                i = valid[k]
                try:
                    rundirs[i] = claims.enter_context(
                        claimed(cfg, jobs[i][1], hydra_files=records[i], main=True)
                    )
                except RunDirError as err:
                    log.error("job #%d: %s: %s", initial_job_idx + i, type(err).__name__, err)
                    _fail_or_refuse(jobs[i][1], err, records[i])
                    jobs[i][2]._return_value = job_score(jobs[i][0], {}, search)
            configs = [c for k, c in enumerate(configs) if valid[k] in rundirs]
            valid = [v for v in valid if v in rundirs]
            self._train_groups(
                configs, valid, jobs, records, rundirs, alone, search, initial_job_idx, log_files
            )
        return [ret for _, _, ret in jobs]

    def _train_groups(
        self, configs, valid, jobs, records, rundirs, alone, search, first, log_files
    ) -> None:
        """One vectorised program per group of compatible jobs (their directories claimed)."""
        from ae_jax.cli import (
            USER_ERRORS,
            job_score,
        )
        from ae_jax.sweeps.vectorized import (
            VECTORIZABLE,
            finished_members,
            group_by_program,
            grouping_settings,
            host_cores_as_devices,
            load_group_data,
        )

        programs = group_by_program(configs)
        if len(programs) > 1:
            log.info(
                "%d vectorised groups: the jobs differ in %s, which the members of one program "
                "share (they may differ in %s)",
                len(programs),
                ", ".join(grouping_settings(configs)),
                ", ".join(VECTORIZABLE),
            )
        groups = []
        for group in programs:
            # members that finished this very run in an earlier group (the sweep had other
            # values then) keep their results; the others form the group
            done = finished_members([configs[g] for g in group], [jobs[valid[g]][1] for g in group])
            for k, metrics in done.items():
                m = valid[group[k]]
                log.info(
                    "job #%d: %s holds this run, completed: not trained again",
                    first + m,
                    jobs[m][1],
                )
                jobs[m][2]._return_value = job_score(jobs[m][0], metrics, search, jobs[m][1])
            if len(done) < len(group):
                groups.append([g for k, g in enumerate(group) if k not in done])
        # Every group's data is loaded and checked against its model before any group trains:
        # a group the data refuses (a kernel larger than the images, bce on data outside
        # [0, 1], a member's earlier run on other data) fails in one line, at no cost to the
        # groups that can train. Groups of the same data setting share one loaded dataset.
        loaded: dict[str, Any] = {}
        ready = []
        for group in groups:
            members = [valid[g] for g in group]
            with job_logs([(jobs[m][1], log_files[m]) for m in members]):
                try:
                    key = repr(configs[group[0]].data)
                    loaded[key] = load_group_data(
                        [configs[g] for g in group],
                        [rundirs[m] for m in members],
                        loaded.get(key),
                    )
                    ready.append((group, loaded[key]))
                except USER_ERRORS as err:
                    log.error(
                        "vectorised group of jobs %s: %s: %s", members, type(err).__name__, err
                    )
                    for m in members:
                        _fail_or_refuse(jobs[m][1], err)
                        jobs[m][2]._return_value = job_score(jobs[m][0], {}, search)
        log_files = [[{**f, "mode": "a"} for f in files] for files in log_files]  # opened above
        if not alone and ready:  # jobs trained alone keep one device, as they would sequentially
            host_cores_as_devices(max(len(g) for g, _ in ready))
        for group, data in ready:
            while group:  # again without a member refused on its own (MemberRefused)
                group = self._train_group(
                    group, data, configs, valid, jobs, records, rundirs, search, log_files, first
                )

    def _train_group(
        self, group, data, configs, valid, jobs, records, rundirs, search, log_files, first
    ) -> list[int]:
        """Train one group; the group left to train again when one member was refused on its
        own (its tracker could not be opened), else []."""
        from ae_jax.cli import (
            USER_ERRORS,
            job_score,
            os_error_line,
            stop_multirun_if_asked,
            stop_status,
        )
        from ae_jax.sweeps.vectorized import MemberRefused, train_group
        from ae_jax.training.loop import Preempted
        from ae_jax.training.rundir import RunDirError

        members = [valid[g] for g in group]
        # the group's error line reaches its members' train.log too, as a run's does
        with job_logs([(jobs[m][1], log_files[m]) for m in members]):
            try:
                results = train_group(
                    [configs[g] for g in group],
                    [jobs[m][1] for m in members],
                    hydra_files=[records[m] for m in members],
                    rundirs=[rundirs[m] for m in members],
                    data=data,
                )
            except MemberRefused as err:  # before anything was compiled or written
                m = members[err.index]
                log.error("job #%d: %s: %s", first + m, type(err.error).__name__, err.error)
                _fail_or_refuse(jobs[m][1], err.error)
                jobs[m][2]._return_value = job_score(jobs[m][0], {}, search)
                rest = [g for k, g in enumerate(group) if k != err.index]
                if rest:
                    log.info("the group's %d other jobs train without it", len(rest))
                return rest
            except Preempted as err:
                status, code = stop_status()
                for m in members:
                    _write_status(jobs[m][1], status, message=str(err))
                log.warning("%s", err)
                sys.exit(code)  # the same command resumes every group
            except (*USER_ERRORS, OSError) as err:
                written = isinstance(err, OSError) and not isinstance(err, USER_ERRORS)
                if written:  # a file the group could not write (a full disk): one line naming it
                    err = RunDirError(os_error_line(err, jobs[members[0]][1]))
                log.error("vectorised group of jobs %s: %s: %s", members, type(err).__name__, err)
                for m in members:
                    if written:  # these jobs began: it is their failure, not a refusal
                        _fail(jobs[m][1], err)
                    else:
                        _fail_or_refuse(jobs[m][1], err)
                    jobs[m][2]._return_value = job_score(jobs[m][0], {}, search)
                return []
            except Exception as err:
                log.exception("vectorised group of jobs %s failed", members)
                for m in members:
                    _fail(jobs[m][1], err)
                    jobs[m][2].status, jobs[m][2]._return_value = JobStatus.FAILED, err
                return []
            for m, metrics in zip(members, results):
                jobs[m][2]._return_value = job_score(jobs[m][0], metrics, search, jobs[m][1])
        stop_multirun_if_asked(f"the group of jobs {members} is complete")
        return []


def _moved_log(spec: dict, old: Path, new: Path) -> dict:
    """A job's log file (``job_log_files``) in ``new`` where it was in ``old``."""
    path = Path(spec["filename"])
    if path.parent.absolute() != Path(old).absolute():
        return spec
    Path(new).mkdir(parents=True, exist_ok=True)
    return {**spec, "filename": str(Path(new) / path.name)}


def job_log_files(job_logging: DictConfig) -> list[dict]:
    """The log files that Hydra's ``hydra.job_logging`` gives a job (its file handlers,
    resolved in the job's context: ``<job dir>/train.log`` by default), with their formats."""
    spec = OmegaConf.to_container(job_logging, resolve=True) or {}
    formatters = spec.get("formatters") or {}
    files = []
    for handler in (spec.get("handlers") or {}).values():
        if isinstance(handler, dict) and handler.get("filename"):
            fmt = formatters.get(handler.get("formatter"), {})
            files.append(
                {
                    "filename": handler["filename"],
                    "mode": handler.get("mode", "a"),
                    "format": fmt.get("format"),
                    "datefmt": fmt.get("datefmt"),
                }
            )
    return files


@contextlib.contextmanager
def job_logs(jobs_files: list[tuple[Path, list[dict]]]):
    """The lines logged in the block also go to these jobs' own log files (each job's
    directory with its ``job_log_files``): a vectorised group's layout and progress reach
    every member's train.log, and a member's own lines (its test line, its warnings:
    ``ae_jax.run_io.member_lines``) its own only, as a job's lines reach its file under the
    basic launcher."""
    from ae_jax.cli import guard_log_file
    from ae_jax.run_io import OwnLines

    root = logging.getLogger()
    handlers = []
    try:
        for workdir, files in jobs_files:
            for f in files:
                try:
                    handler = logging.FileHandler(f["filename"], mode=f["mode"])
                except OSError as err:  # as for a log file that can no longer be written
                    log.warning(
                        "%s cannot be opened (%s): the console has this job's lines",
                        f["filename"],
                        err.strerror or err,
                    )
                    continue
                handler.setFormatter(logging.Formatter(f["format"], f["datefmt"]))
                handler.addFilter(OwnLines(workdir))
                guard_log_file(handler)
                root.addHandler(handler)
                handlers.append(handler)
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def _run_alone(cfg, workdir, record, ret, search: bool) -> None:
    """Train one job the way ``experiments/train.py`` does (``ae_jax.cli.run_or_exit``: its
    status.json, one line for a user error, SIGTERM a clean stop that the same command resumes)."""
    from ae_jax.cli import job_score, run_or_exit
    from ae_jax.train import train_and_evaluate

    metrics = run_or_exit(train_and_evaluate, cfg, workdir, exit_on_error=False, hydra_files=record)
    ret._return_value = job_score(cfg, metrics, search, workdir)


def _write_status(workdir, status, **fields):
    import time

    from ae_jax.run_io import write_json_atomic

    try:
        write_json_atomic(
            Path(workdir) / "status.json",
            {"status": status, "engine": "vmap", "ended": time.time(), **fields},
        )
    except OSError:  # a full disk: the error is on the console and in the multirun's summary
        if status == "failed":
            from ae_jax.cli import failed_unrecorded

            failed_unrecorded(workdir, fields.get("error", "failed"))


def _fail(workdir, err):
    _write_status(workdir, "failed", error=f"{type(err).__name__}: {err}")


def _fail_or_refuse(workdir, err, hydra_files: dict | None = None) -> None:
    """A job refused before it trained: its status.json says why, unless its directory holds
    another run, or another process runs there, whose files stay as they were (the multirun
    summary lists it as refused)."""
    from ae_jax.cli import refused
    from ae_jax.training.rundir import RunDir, RunDirInUse, write_hydra_files

    if isinstance(err, RunDirInUse) or RunDir(workdir).holds_run():
        refused(workdir, err)
        return
    if hydra_files is not None:
        with contextlib.suppress(OSError):  # a directory not writable: the error says so
            write_hydra_files(workdir, hydra_files)
    _fail(workdir, err)
