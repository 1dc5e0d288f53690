"""The run-directory contract: a directory belongs to one config and one process at a time.

``RunDir.claim`` runs before any data is read or any program compiled, and writes nothing that
belongs to the run:

- **a lock** (``<dir>/.lock``, held with ``fcntl.flock`` and naming the holder's pid): a second
  process on the same directory is refused with that pid. The kernel releases the lock when
  its holder dies, so a lock left by a killed process is taken over. In a multi-process run
  only process 0 takes it;
- **the stored config** (``config.yaml``) is compared with the new one before resuming: a
  difference in any key outside ``MAY_DIFFER`` is refused, naming every differing key with
  both values and the ways out (a new directory, or ``trainer.resume=false``);
- **writability** of the directory and its ``checkpoints/``, so that a run that could not save
  its results stops before it trains.

``RunDir.start`` then writes ``config.yaml``, Hydra's ``.hydra/`` files and ``status.json``. A
refused or failed rerun never reaches it, so it never modifies a finished run's files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

# Keys that may differ between the run stored in a directory and the command resuming it: how
# the run is executed and reported, never what it computes. ``trainer.epochs`` may grow
# when the learning-rate schedule is constant (the run is extended; a decaying schedule
# depends on the total and would change).
MAY_DIFFER = (
    "name",
    "score",  # what a sweep's job returns to the sweeper, not what the run computes
    "logger",  # every key under it: where the run reports, not what it computes
    "trainer.devices",
    "trainer.parallel",
    "trainer.log_every",
    "trainer.progress",
    "trainer.figures",
    "trainer.checkpoint_every",
    "trainer.checkpoint_seconds",
    "trainer.keep_checkpoints",
    "trainer.resume",
    "trainer.restart_if_corrupt",
    "trainer.distributed",
    "trainer.coordinator_address",
    "trainer.num_processes",
    "trainer.process_id",
    "trainer.step_norms",
    "trainer.profile",
    "data.manual_dir",
    "data.data_dir",
)
EXTENDABLE = "trainer.epochs"

# Keys that only the last stages of a layer-wise pipeline read (``pretrain.enabled``), each
# with the stage directories whose results depend on it: a rerun that changes only these
# reuses every other stage and trains those again, their earlier checkpoints set aside
# (``RunDir.start``). An empty tuple: no stage is checkpointed (the probe, evaluated anew) or
# the key adds or drops stages. Without pretraining no ``pretrain.*`` key is read at all.
SUPERVISED_STAGES = ("supervised", "baseline/supervised")
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    **{
        f"pretrain.{key}": SUPERVISED_STAGES
        for key in ("supervised_epochs", "supervised_lr", "supervised_optim")
        + ("supervised_schedule", "supervised_batch_size")
    },
    **{f"pretrain.{key}": () for key in ("supervised", "baseline", "probe", "probe_steps")},
    "pretrain.probe_l2": (),
}


class RunDirError(RuntimeError):
    """The run directory cannot be used by this run; the message names the path and the way out."""


class RunDirInUse(RunDirError):
    """Another process holds the directory's lock: its files are that run's, left untouched."""


class RunDirNested(RunDirError):
    """The directory is inside another run's, or holds one: nothing is written there."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def config_differences(stored: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """``key: stored -> new`` for every key that differs and may not (see ``MAY_DIFFER``).

    A key that the stored config lacks (written before the key existed) does not differ when
    the new config holds its default (``defaults``: the schema's defaults, flattened alike).
    """
    a, b = _flatten(stored), _flatten(new)
    d = _flatten(defaults or {})
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in a and key in d and b.get(key) == d[key]:
            continue
        exempt = key in MAY_DIFFER or key.split(".")[0] in MAY_DIFFER
        if exempt or a.get(key, "<absent>") == b.get(key, "<absent>"):
            continue
        if key == EXTENDABLE:
            schedule = _flatten(new).get("optim.schedule", "constant")
            pipeline = _flatten(new).get("pretrain.enabled", False)
            old, now = a.get(key), b.get(key)
            if isinstance(old, int) and isinstance(now, int) and now > old:
                if schedule == "constant" and not pipeline:
                    continue
                why = (  # said: a single run's more epochs extend it
                    "the stages after the fine-tuning start from its end"
                    if pipeline
                    else f"optim.schedule={schedule} is laid out over the epochs"
                )
                out.append(
                    f"{key}: {old} -> {now} (more epochs extend a run with a constant learning "
                    f"rate and no layer-wise pretraining; here {why})"
                )
                continue
        out.append(f"{key}: {_shown(a.get(key, '<absent>'))} -> {_shown(b.get(key, '<absent>'))}")
    return out


def _shown(value: Any) -> str:
    """A config value as the command line writes it: true / false / null, else its repr."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise RunDirError(
            f"{path} is not writable ({err.strerror or err}); choose another run directory "
            "(hydra.run.dir=... or hydra.sweep.dir=...)"
        ) from None


# The run directories this process's runs chose (``fresh_or_resumed_workdir``): a multirun's
# summary counts these jobs, not the earlier runs kept beside them (ae_jax.cli.MultirunSummary).
CHOSEN: set[str] = set()


def fresh_or_resumed_workdir(workdir: Path, resume: bool) -> Path:
    """``workdir``, unless resuming is off and it holds an earlier run: then a new sibling
    directory (the earlier run is never touched). Either is added to ``CHOSEN``."""
    chosen = _fresh_or_resumed(workdir, resume)
    CHOSEN.add(str(Path(chosen).absolute()))
    return chosen


def _fresh_or_resumed(workdir: Path, resume: bool) -> Path:
    if resume or not RunDir(workdir).holds_run():
        return workdir
    fresh = workdir.with_name(f"{workdir.name}-fresh-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while fresh.exists():
        fresh = workdir.with_name(f"{workdir.name}-fresh-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    logging.getLogger("ae_jax").warning(
        "trainer.resume=false: %s holds an earlier run, which is kept; this run writes to %s "
        "(stopped, it resumes when run in that directory; this command again would start "
        "another)",
        workdir,
        fresh,
    )
    return fresh


def hold_lock(lock: Path, what: Path | str, way_out: str) -> int:
    """Take the exclusive ``fcntl.flock`` on ``lock`` (created if missing) and write the
    holder (pid and host) into it; returns the descriptor, which holds the lock until it is
    closed or the process dies. Held by another process: ``RunDirError`` naming ``what``, the
    holder and ``way_out``."""
    import fcntl

    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES):
            raise RunDirInUse(f"{what} is in use by {holder} (lock {lock}); {way_out}") from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


# The ways out of a directory whose run's config.yaml is missing or damaged.
_RESTORE_CONFIG = (
    "restore it (Hydra's copy is .hydra/config.yaml), or use a new run directory, or "
    "trainer.resume=false to keep that run and write this one beside it"
)

RUN_INFO = "run.json"  # what the run saw: its data's fingerprint, shapes (ae_jax.features)


class RunDir:
    """One run's directory: ``claim`` (lock, config check, writability), ``check_data`` once
    the data is loaded, then ``start``."""

    LOCK = ".lock"

    def __init__(self, path: str | Path, main: bool = True):
        self.path = Path(path)
        self.main = main
        self._lock_fd: int | None = None
        self.started = False
        self.hydra_files: dict[str, str] = {}  # hydra_record(): written to .hydra/ at start
        self.on_start: Any = None  # called once the run has begun (status.json: running)
        self.changed: list[str] = []  # "key: old -> new" of the stored run (STAGE_KEYS)
        self.redo: tuple[str, ...] = ()  # its stages that train again (STAGE_KEYS)
        self._completed: bool | None = None  # read once, before start (``completed``)

    # -------------------------------------------------------------- state of the directory
    def holds_run(self) -> bool:
        """Whether an earlier run began here: its ``config.yaml`` (written by ``start``, so a
        refused job leaves none), results or checkpoints. A vectorised member keeps its
        checkpoints with its group's, outside its directory: its config.yaml is what says
        that an interrupted member's directory belongs to that run."""
        p = self.path
        return (p / "metrics.json").exists() or (p / "config.yaml").exists() or self.checkpointed()

    def completed(self) -> bool:
        """Whether the run here ended completed (its ``status.json``), as found before this
        run starts (``start`` has it say running): a changed rerun killed part-way leaves the
        earlier config's ``metrics.json`` beside a status of running, and is no finished run."""
        if self._completed is None:
            try:
                status = json.loads((self.path / "status.json").read_text())
            except (OSError, ValueError):
                status = None
            self._completed = isinstance(status, dict) and status.get("status") == "completed"
        return self._completed

    def checkpointed(self) -> bool:
        """Whether any stage of a run here saved a checkpoint (``checkpoints/``, a pipeline's
        ``<stage>/checkpoints/``; not those of another run's directory inside this one)."""
        for c in self.path.glob("**/checkpoints/*"):
            if c.name.isdigit() and not _in_another_run(c.parent.parent, self.path):
                return True
        return False

    def stored_config(self) -> dict | None:
        f = self.path / "config.yaml"
        if not f.exists():
            return None
        import yaml

        try:
            stored = yaml.safe_load(f.read_text())
            problem = None if isinstance(stored, dict) and stored else "it holds no config"
        except (OSError, yaml.YAMLError) as err:
            problem = " ".join(str(getattr(err, "problem", None) or err).split())
        if problem is not None:
            raise RunDirError(
                f"{f} cannot be read ({problem}); this directory's run is damaged: "
                + _RESTORE_CONFIG
            )
        return stored

    # -------------------------------------------------------------- claim
    def claim(self, config: dict, resume: bool = True, defaults: dict | None = None) -> None:
        """Lock the directory, refuse another run's config, check writability. Writes only
        the lock file (and creates the directory)."""
        if not self.main:
            return
        self._refuse_nested()
        _check_writable(self.path)
        self._lock()
        try:
            if resume and self.holds_run():
                stored = self.stored_config()
                if stored is None:  # checkpoints or results, and no record of their config
                    raise RunDirError(
                        f"{self.path} holds a run whose config.yaml is missing, so whether "
                        "this config is that run's cannot be checked: " + _RESTORE_CONFIG
                    )
                diff = config_differences(stored, config, defaults)
                redo = _stages_to_redo(stored, config, diff)
                if redo is not None:
                    self.changed, self.redo, diff = diff, redo, []
                if diff:
                    raise RunDirError(
                        f"{self.path} holds a run with another config: "
                        + "; ".join(diff)
                        + ". "
                        + self._another_directory(diff)
                        + ", or trainer.resume=false to keep that run and write this one "
                        "beside it"
                    )
            _check_writable(self.path / "checkpoints")
        except BaseException:
            self.release()
            raise

    def _set_aside_stages(self) -> None:
        """The stages a changed setting invalidates (``self.redo``) train again: their
        checkpoints and results (parameters, histories) move to
        ``<stage>/checkpoints-before-<time>`` (kept, never resumed), and when a stage trains,
        the run's ``metrics.json``, which the rerun writes anew, to
        ``metrics-before-<time>.json``: a rerun stopped part-way leaves no numbers of the
        earlier settings beside the new config."""
        if not self.changed:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        present = [stage for stage in self.redo if (self.path / stage).is_dir()]
        moved = False
        for stage in present:
            old = self.path / stage / "checkpoints"
            kept = old.with_name(f"checkpoints-before-{stamp}")
            if old.is_dir() and any(old.iterdir()):
                old.rename(kept)
                moved = True
            for f in old.parent.iterdir():  # the stage's results: trained again, written anew
                if f.is_file():
                    kept.mkdir(exist_ok=True)
                    f.rename(kept / f.name)
                    moved = True
        said = f"{self.path} holds this run with {'; '.join(self.changed)}"
        switches = ("pretrain.supervised", "pretrain.baseline", "pretrain.probe")
        added = [k for k in switches if f"{k}: false -> true" in self.changed]
        metrics = self.path / "metrics.json"
        if (present or added) and metrics.is_file():  # else evaluated again in seconds
            metrics.rename(metrics.with_name(f"metrics-before-{stamp}.json"))
        if present or added:
            kept = f" (earlier checkpoints and results kept as <stage>/checkpoints-before-{stamp})"
            parts = []
            if present:
                verb = "stage {} trains" if len(present) == 1 else "stages {} train"
                parts.append(verb.format(", ".join(present)) + " again" + (kept if moved else ""))
            if added:  # stages this run has not trained yet
                turn = "turns" if len(added) == 1 else "turn"
                on = " and ".join(f"{k}=true" for k in added)
                parts.append(f"the stages that {on} {turn} on train")
            said += f": {', '.join(parts)}; the other stages are reused"
        else:
            said += ", which nothing it trained depends on: it is reused"
        logging.getLogger("ae_jax").warning("%s", said)

    def _refuse_nested(self) -> None:
        """A run directory inside another run's, or holding one: either run's files would be
        taken for the other's (a report of the outer directory counts the inner run as its
        own; the inner run's checkpoints were read as the outer run's)."""
        path = self.path.absolute()
        outer = next((p for p in path.parents if (p / "status.json").is_file()), None)
        inner = next(
            (
                s.parent
                for pattern in ("*/status.json", "*/*/status.json")
                for s in path.glob(pattern)
            ),
            None,
        )
        if outer is not None or inner is not None:
            where = f"is inside {outer}" if outer is not None else f"holds {inner}"
            raise RunDirNested(
                f"{path} {where}, the directory of another run; the two runs' files would be "
                "taken for each other's: use a run directory outside it (hydra.run.dir=...)"
            )

    def _another_directory(self, diff: list[str]) -> str:
        """How to give a run another directory: a sweep's job (its parent holds Hydra's
        multirun.yaml) is numbered by its place in the sweep, not named by its values."""
        sweep = self.path.parent
        if not is_sweep_dir(sweep):
            return "Use a new run directory (hydra.run.dir=...)"
        search = not (sweep / "multirun.yaml").exists()  # the Optuna sweeper writes none
        if search or all(d.startswith(f"{EXTENDABLE}:") for d in diff):
            return "Use a new hydra.sweep.dir"
        return (
            "A sweep numbers its jobs by the places of their values (Hydra varies the last "
            "swept key fastest): to add to it, append values to the first swept key only, "
            "the earlier values kept in their order; or use a new hydra.sweep.dir"
        )

    def _lock(self) -> None:
        self._lock_fd = hold_lock(
            self.path / self.LOCK, self.path, "wait for it to finish, or use another run directory"
        )

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock; the file may stay
            self._lock_fd = None

    def check_data(self, data: Any, data_cfg: Any) -> None:
        """Refuse to go on with an earlier run here that saw other data (its ``run.json``
        records the fingerprint, ``ae_jax.data.Dataset.fingerprint``, from its start): the same
        config on a changed file would resume that run's checkpoints (a vectorised group's are
        in the sweep's ``.vmap-groups/``) on the new data. Writes nothing."""
        if not self.main:
            return
        changed = data_changed(self.path, data, data_cfg)
        if changed:
            raise RunDirError(
                f"{self.path} holds a run that trained on other data: {changed}. Restore that "
                "data, or use a new run directory (hydra.run.dir=...), or trainer.resume=false "
                "to keep that run and write this one beside it"
            )

    # -------------------------------------------------------------- start
    def start(self, config_yaml: str) -> None:
        """The run begins: write ``config.yaml`` and Hydra's ``.hydra/`` files (when run by
        Hydra). Nothing of an earlier run is changed before this point."""
        if self.started:
            return
        self.completed()  # as the directory was before this run began
        self.started = True
        if not self.main:
            return
        from ae_jax.run_io import write_text_atomic

        self._set_aside_stages()
        write_text_atomic(self.path / "config.yaml", config_yaml)
        if not _sweep_job_record(self.path, self.hydra_files):
            write_hydra_files(self.path, self.hydra_files)
        if self.on_start is not None:
            self.on_start()


def _unread(config: dict, key: str) -> bool:
    """Whether a run of ``config`` never reads ``key``: ``pretrain.*`` without pretraining,
    ``pretrain.supervised_*`` without a supervised stage."""
    flat = _flatten(config)
    if key.startswith("pretrain.") and not flat.get("pretrain.enabled", False):
        return True
    return key.startswith("pretrain.supervised_") and not flat.get("pretrain.supervised", False)


def read_differences(stored: dict, new: dict, diff: list[str]) -> list[str]:
    """``diff`` (``config_differences``) without the keys that neither run reads (``_unread``):
    a default changed under them changes neither run."""
    return [d for d in diff if not all(_unread(c, d.partition(":")[0]) for c in (stored, new))]


def _stages_to_redo(stored: dict, new: dict, diff: list[str]) -> tuple[str, ...] | None:
    """The stage directories a rerun trains again when every differing key (``diff``, from
    ``config_differences``) is one only those stages read (``STAGE_KEYS``; any ``pretrain.*``
    key when neither run pretrains); None when another key differs (the run is refused)."""
    if not diff:
        return None
    keys = [d.partition(":")[0] for d in diff]
    enabled = [_flatten(c).get("pretrain.enabled", False) for c in (stored, new)]
    if not any(enabled) and all(k.startswith("pretrain.") for k in keys):
        return ()
    if not all(enabled) or not all(k in STAGE_KEYS for k in keys):
        return None
    return tuple(dict.fromkeys(stage for k in keys for stage in STAGE_KEYS[k]))


def _in_another_run(directory: Path, root: Path) -> bool:
    """Whether ``directory`` (inside ``root``) or a directory between the two is another
    run's: its ``status.json`` or ``config.yaml`` say so (a pipeline's stage directories hold
    neither)."""
    directory = Path(directory)
    while directory != root and root in directory.parents:
        if (directory / "status.json").exists() or (directory / "config.yaml").exists():
            return True
        directory = directory.parent
    return False


def completed_run(cfg: Any, workdir: Path) -> dict | None:
    """``workdir``'s metrics if it holds a completed run of the validated config ``cfg`` (no
    key differs but those that may, and the same epochs: more would extend it), else None."""
    import yaml

    from ae_jax.config import Config, config_dict

    try:
        status = json.loads((workdir / "status.json").read_text())
        metrics = json.loads((workdir / "metrics.json").read_text())
        stored = yaml.safe_load((workdir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not (isinstance(status, dict) and isinstance(metrics, dict) and isinstance(stored, dict)):
        return None
    if status.get("status") != "completed" or not metrics:
        return None
    if (stored.get("trainer") or {}).get("epochs") != cfg.trainer.epochs:
        return None
    now = config_dict(cfg)
    diff = read_differences(stored, now, config_differences(stored, now, config_dict(Config())))
    return None if diff else metrics


def group_member(workdir: Path) -> str | None:
    """How the vectorised sweep member whose files ``workdir`` holds ended (its status.json's
    ``status``: completed, running when it was killed, preempted, failed), or None when the
    directory holds no member of a vectorised group. A member's state is in its group's
    checkpoint (``<sweep>/.vmap-groups/``), not in its own directory."""
    try:
        status = json.loads((Path(workdir) / "status.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or status.get("engine") != "vmap":
        return None
    return str(status.get("status"))


def data_changed(run_dir: Path, data: Any, data_cfg: Any) -> str | None:
    """How ``data`` differs from what the run in ``run_dir`` trained on ("<data> has changed
    since (fingerprint A then, B now)", from the fingerprint its ``run.json`` records), or None
    when it is the same or the run recorded none (a run from before fingerprints)."""
    try:
        stored = json.loads((Path(run_dir) / RUN_INFO).read_text()).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    fingerprint = data.fingerprint
    if stored is None or stored == fingerprint:
        return None
    path = getattr(data_cfg, "path", None)
    if not path:
        name = data.name
    elif data.name == Path(str(path)).stem:  # named after its file: the file alone
        name = str(path)
    else:
        name = f"{data.name} ({path})"
    return f"{name} has changed since (fingerprint {stored[:12]} then, {fingerprint[:12]} now)"


def is_sweep_dir(path: Path) -> bool:
    """Whether ``path`` is a multirun's sweep directory: Hydra's basic sweeper writes
    ``multirun.yaml`` there, and every multirun (the Optuna sweeper's too) takes its
    ``.sweep.lock`` (``ae_jax.cli.SweepLock``), which stays."""
    return (path / "multirun.yaml").exists() or (path / ".sweep.lock").exists()


def hydra_record(task: Any = None) -> dict[str, str]:
    """Hydra's record of the current job as texts for ``.hydra/`` (``config.yaml`` (the
    composed ``task`` config), ``hydra.yaml``, ``overrides.yaml``); {} outside Hydra. Written
    by ae_jax when the run starts rather than by Hydra at start-up (``hydra.output_subdir`` is
    null in conf/config.yaml), so that a refused rerun leaves an earlier run's copy alone."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf
    except ImportError:
        return {}
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    out = {
        "hydra.yaml": OmegaConf.to_yaml({"hydra": hc}),
        "overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task)),
    }
    if task is not None and OmegaConf.is_config(task):
        out["config.yaml"] = OmegaConf.to_yaml(task)
    return out


def _sweep_job_record(path: Path, record: dict[str, str]) -> bool:
    """Whether ``path/.hydra/`` holds a multirun job's record that a single run (``record``)
    must leave alone: a job of a sweep finished or resumed by hand (``hydra.run.dir=<sweep
    dir>/3``) is still that sweep's job; its overrides and job number are what the sweep's
    report and a relaunch of the sweep read."""
    import yaml

    def mode(text: str | None) -> str | None:
        try:
            return str(yaml.safe_load(text or "")["hydra"]["mode"])
        except (yaml.YAMLError, KeyError, TypeError):
            return None

    try:
        stored = (Path(path) / ".hydra" / "hydra.yaml").read_text()
    except OSError:
        return False
    return mode(stored) == "MULTIRUN" and mode(record.get("hydra.yaml")) == "RUN"


def write_hydra_files(path: Path, record: dict[str, str]) -> None:
    from ae_jax.run_io import write_text_atomic

    for name, text in record.items():
        write_text_atomic(Path(path) / ".hydra" / name, text)


@contextlib.contextmanager
def claimed(
    cfg: Any,
    workdir: str | Path,
    rundir: RunDir | None = None,
    hydra_files: dict | None = None,
    main: bool | None = None,
):
    """``workdir`` claimed for the validated config ``cfg`` (``RunDir.claim``) for the block,
    released after it; yields the ``RunDir``. A caller that already holds one passes it in.
    ``main``: whether this process writes the run's files (None: JAX's process 0, which starts
    JAX's backend; a caller that must set devices up first says so itself)."""
    if rundir is not None:
        yield rundir
        return
    from ae_jax.config import Config, config_dict

    if main is None:
        import jax

        main = jax.process_index() == 0
    rundir = RunDir(workdir, main=main)
    rundir.hydra_files = hydra_files or {}
    defaults = config_dict(Config())
    rundir.claim(config_dict(cfg), resume=cfg.trainer.resume, defaults=defaults)
    try:
        yield rundir
    finally:
        rundir.release()
