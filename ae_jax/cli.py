"""What the command-line entry points share: clean errors and a status file per run."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from ae_jax.config import SHOW_FLAGS, ConfigError, overrides_of, score_key, trial_count_refusal
from ae_jax.data import DataError
from ae_jax.loggers import LoggerError
from ae_jax.run_io import free_bytes, reader_left, size_text, write_json_atomic
from ae_jax.training.checkpoint import CheckpointError
from ae_jax.training.loop import Preempted, TrainingDiverged
from ae_jax.training.rundir import RunDirError, RunDirInUse, RunDirNested

log = logging.getLogger("ae_jax")
# Problems that are the user's to fix: reported in one line, exit status 2, no traceback.
USER_ERRORS = (ConfigError, DataError, RunDirError, CheckpointError, TrainingDiverged, LoggerError)

# How jobs of this process's multirun ended where their own status.json does not say it:
# refused without a word in their directory (it holds another run, whose files stay as they
# were), or failed where status.json could not be written (a full disk). Job directory ->
# (status, the error line); MultirunSummary reads these before the jobs' status.json.
UNRECORDED: dict[str, tuple[str, str]] = {}


def refused(workdir: Path | str, err: BaseException) -> None:
    """Record that this multirun's job in ``workdir`` was refused (``UNRECORDED``)."""
    UNRECORDED[str(Path(workdir).absolute())] = ("refused", f"{type(err).__name__}: {err}")


def failed_unrecorded(workdir: Path | str, error: str) -> None:
    """Record that this multirun's job in ``workdir`` failed with ``error`` (its line), where
    its status.json could not be written (``UNRECORDED``)."""
    UNRECORDED[str(Path(workdir).absolute())] = ("failed", error)


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
    _one_cache_write_warning(path)
    return path


_CACHE_WRITE_WARNING = "Error writing persistent compilation cache entry"


def _one_cache_write_warning(path: str) -> None:
    """A cache that stops taking entries (a full disk) says so once, naming the directory,
    instead of JAX's two-line warning for every program compiled after."""
    import warnings

    previous = warnings.showwarning
    said: list[bool] = []

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if not text.startswith(_CACHE_WRITE_WARNING):
            previous(message, category, filename, lineno, file, line)
        elif not said:
            said.append(True)
            reason = text.split("': ", 1)[-1]  # "OSError: [Errno 28] No space left on device"
            print(
                f"warning: the compilation cache {path} cannot take more programs ({reason}); "
                f"they compile again in later runs until it can (or set {CACHE_ENV}=off)",
                file=sys.stderr,
            )

    warnings.showwarning = show


def exit_fast(code: int = 0) -> None:
    """End a process whose work is done without the interpreter's teardown.

    Freeing every module and compiled XLA program at exit takes ~0.6 s of a default run's
    ~8 s on 2 cores, for nothing. The exit handlers still run first (logging's flush and
    close, JAX's ``distributed.shutdown``, any a library registered), then the standard
    streams are flushed and the process ends with ``code``. With a non-daemon thread still
    alive (a write in flight), it returns and the normal exit waits for that thread.
    """
    import atexit
    import threading

    main = threading.main_thread()
    if any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing left to flush
            pass
    os._exit(code)


def drop_import_log_handler() -> None:
    """absl's logging (Orbax logs through it while it is imported) calls
    ``logging.basicConfig()``, which leaves the root logger a stderr handler before Hydra sets
    up logging; Hydra's ``--info`` adds its own beside it and printed every line twice. Hydra
    installs the handlers a run uses; a warning before then reaches stderr all the same."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
            root.removeHandler(handler)


def quiet_console() -> None:
    """Keep library chatter (JAX's "Unable to initialize backend 'tpu'" on every CPU run, and
    the like) off the console: console handlers pass ae_jax's and Hydra's own lines and any
    library warning without a traceback (a tracker's store failing mid-run: MLflow logged two
    SQLAlchemy tracebacks, 60 lines, before our one-line warning); everything still reaches
    ``train.log``."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            guard_log_file(handler)
        elif isinstance(handler, logging.StreamHandler):
            handler.addFilter(on_console)
            handler.handleError = _console_error_handler(handler)


def on_console(record: logging.LogRecord) -> bool:
    """Whether a log record reaches the console (``quiet_console``)."""
    if record.name.startswith(("ae_jax", "hydra", "__main__")):
        return True
    return record.levelno >= logging.WARNING and not record.exc_info


def _console_error_handler(handler: logging.StreamHandler) -> Callable[[logging.LogRecord], None]:
    """A console line that cannot be written because its reader left (``train.py | head``)
    ends the console, not the run: the run goes on, its lines still reach ``train.log``, and
    no "Logging error" traceback is printed for each later line."""
    plain = handler.handleError

    def handle_error(record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            reader_left(handler.stream)
        else:
            plain(record)

    return handle_error


# Hydra's train.log handlers held back by ``hold_run_log``: (memory handler, file handler)
_HELD: list[tuple[logging.Handler, logging.FileHandler]] = []


def hold_run_log() -> None:
    """Hold the lines meant for the job's ``train.log`` in memory until the job's run
    directory is known to be its own: a second process refused on a directory in use, or a
    rerun refused on an earlier run, wrote its lines (JAX's, then its own refusal) into that
    run's log. ``run_or_exit`` then writes them out (``release_run_log``) or drops them."""
    from logging.handlers import MemoryHandler

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            held = MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)
            held.setLevel(handler.level)
            root.removeHandler(handler)
            root.addHandler(held)
            _HELD.append((held, handler))


def release_run_log(keep: bool = True) -> None:
    """The held lines (``hold_run_log``) to their files and the files back in place, or with
    ``keep=False`` dropped, the files left as they were."""
    root = logging.getLogger()
    while _HELD:
        held, handler = _HELD.pop()
        root.removeHandler(held)
        if keep:
            held.setTarget(handler)
            held.flush()
            root.addHandler(handler)
        else:
            held.buffer.clear()
            handler.close()
        held.close()


def move_run_log(old: Path, new: Path) -> None:
    """The held ``train.log`` lines (``hold_run_log``) go to ``new`` instead of ``old``: a
    run that ``trainer.resume=false`` gives a directory of its own beside an earlier run wrote
    its log into that run's ``train.log``."""
    for i, (held, handler) in enumerate(_HELD):
        path = Path(handler.baseFilename)
        if path.parent.absolute() != old.absolute():
            continue
        new.mkdir(parents=True, exist_ok=True)
        moved = logging.FileHandler(new / path.name, mode=handler.mode, encoding=handler.encoding)
        moved.setLevel(handler.level)
        moved.setFormatter(handler.formatter)
        for f in handler.filters:
            moved.addFilter(f)
        handler.close()  # opened by Hydra in the earlier run's directory, never written here
        _HELD[i] = (held, moved)


def _remove_if_unused(workdir: Path) -> None:
    """What Hydra made for a job refused before it wrote anything: its empty log, and
    ``workdir`` itself when that leaves it empty (left there, they would look like a run's)."""
    with contextlib.suppress(OSError):
        for f in workdir.glob("*.log"):
            if f.is_file() and not f.stat().st_size:
                f.unlink()
        workdir.rmdir()  # only when empty


def guard_log_file(handler: logging.FileHandler) -> None:
    """A log file that can no longer be written (a full disk) is closed with one warning on
    the console, instead of a traceback for every line logged after."""

    def handle_error(record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        opened = handler.stream is not None
        root = logging.getLogger()
        root.removeHandler(handler)
        with contextlib.suppress(Exception):
            handler.close()
        reason = getattr(err, "strerror", None) or err
        log.warning(
            "%s %s (%s): the console has the rest",
            handler.baseFilename,
            "can no longer be written" if opened else "cannot be opened",
            reason,
        )

    handler.handleError = handle_error


def check_output_dirs(argv: list[str]) -> None:
    """Refuse, in one line and before Hydra starts, an output directory that cannot be
    created or written (Hydra would stop with a traceback opening its train.log): the
    ``hydra.run.dir`` (or, with ``--multirun``, ``hydra.sweep.dir``) given on the command line,
    made and written here then removed (Hydra makes it), or the default's nearest existing
    parent (``outputs/``, ``multirun/``)."""
    if any(a.partition("=")[0] in SHOW_FLAGS for a in argv):
        return  # Hydra shows the config, its help or its plugins, and writes nothing
    argv = overrides_of(argv)
    multirun = any(a in ("-m", "--multirun") or a.lower() == "hydra.mode=multirun" for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a.partition("=")[2] for a in argv if a.partition("=")[0].lstrip("+") == key]
    value = given[-1] if given else ("multirun" if multirun else "outputs") + "/${now:...}"
    static = value.split("${")[0]
    if not static:  # all of it interpolated (an environment variable): Hydra's to resolve
        return
    path = Path(static).expanduser()
    if not multirun and "${" not in value:
        _refuse_run_in_search(path.absolute())
    made: list[Path] = []  # the directories made to try the path, deepest first
    try:
        if "${" in value:  # created by Hydra: its nearest existing parent must take it
            path = next(p for p in (path, *path.parents) if p.exists())
        else:
            made = [p for p in (path, *path.parents) if not p.exists()]
            path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path))
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:

        def probe(test, p: Path) -> bool:  # a name too long to look at is not a file
            try:
                return test(p)
            except OSError:
                return False

        blocker = next((p for p in (path, *path.parents) if probe(Path.is_file, p)), None)
        why = f"{blocker} is a file" if blocker else err.strerror
        shown = f"{key}={value}" if given else f"the default {key} ({value})"
        done = "written" if probe(Path.is_dir, path) else "created"
        print(
            f"error: {shown} cannot be {done} ({why}); "
            f"choose a writable directory{'' if given else f' ({key}=...)'}",
            file=sys.stderr,
        )
        sys.exit(2)
    finally:  # Hydra makes them when the run starts: a run refused before then (one nested
        for p in made:  # in another run's directory) leaves nothing behind
            with contextlib.suppress(OSError):
                p.rmdir()


def _refuse_run_in_search(path: Path) -> None:
    """A single run given a directory inside a hyperparameter search's
    (``hydra.run.dir=<search dir>/99``): the search's report would take it for one of its
    trials, and its best trial might be that run. One line, exit status 2, before Hydra makes
    the directory. (Beside a grid's jobs a run is a row of the grid's report, as
    ``scripts/reproduce.py rifai2011`` puts its two other rows.)"""
    from ae_jax.sweeps.collect import SEARCH_RECORD
    from ae_jax.training.rundir import is_sweep_dir

    # a search's directory: a multirun's (its lock) that recorded a search (a search.yaml
    # elsewhere, a file of the user's, is none)
    search = next(
        (p for p in path.parents if (p / SEARCH_RECORD).is_file() and is_sweep_dir(p)), None
    )
    if search is not None:
        print(
            f"RunDirError: hydra.run.dir={path} is inside {search}, the directory of a "
            "hyperparameter search; its report would take this run for one of the search's "
            "trials: use a run directory outside it (hydra.run.dir=...)",
            file=sys.stderr,
        )
        sys.exit(2)


def os_error_line(err: OSError, workdir: str | Path) -> str:
    """One line for an OS error of a run (a full disk, a path that vanished): the file and
    the reason, and for a full disk the room left and how to go on."""
    line = f"{err.filename}: " if err.filename else ""
    line += err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        free = free_bytes(err.filename or workdir)
        if free is not None:
            line += f" ({size_text(free)} free there)"
        line += "; free space and run the same command again: it resumes from the newest checkpoint"
    return line


def run_or_exit(
    fn: Callable[..., dict],
    cfg: Any,
    workdir: str | Path,
    exit_on_error: bool = True,
    hydra_files: dict | None = None,
) -> dict:
    """Run ``fn(cfg, workdir, rundir)``, recording ``status.json`` (running / completed /
    failed / preempted / interrupted).

    The run directory is claimed first (``ae_jax.training.rundir``: a lock naming the holder,
    the stored config compared, writability). A problem that is the user's to fix (a value, the
    data, the directory, a diverged run) is reported as one line and the process exits with
    status 2 instead of a traceback; in a Hydra multirun (``exit_on_error=False``) the job is
    recorded as failed in its ``status.json`` and the multirun goes on (``MultirunSummary``
    lists the failures at the end and sets the exit status). Anything else is re-raised.

    A run that is refused before it starts (``RunDir.start``) writes nothing into a directory
    that holds an earlier run; in a fresh directory it records ``status.json`` = failed.
    In a multi-process run only process 0 writes.
    """
    from ae_jax.config import to_config, validate
    from ae_jax.training import distributed
    from ae_jax.training.rundir import (
        RunDir,
        claimed,
        fresh_or_resumed_workdir,
        hydra_record,
        write_hydra_files,
    )

    resume = bool(getattr(getattr(cfg, "trainer", None), "resume", True))
    given, workdir = Path(workdir), fresh_or_resumed_workdir(Path(workdir), resume)
    if workdir != given:
        move_run_log(given, workdir)
    earlier = RunDir(workdir).holds_run()
    started = time.time()
    state = {"main": True, "rundir": None}

    if hydra_files is None:  # a launcher that set the job up passes its record
        hydra_files = hydra_record(cfg)  # Hydra's record of this job, for .hydra/

    def ours() -> bool:
        """Whether the directory's files are this job's to write: its run began, or the
        directory held no earlier run."""
        rundir = state["rundir"]
        return (rundir is not None and rundir.started) or not earlier

    def record(**fields) -> bool:
        """Write the job's status.json; False where a refused rerun leaves it as it was."""
        rundir = state["rundir"]
        began = rundir is not None and rundir.started
        release_run_log(keep=ours())  # train.log: this job's lines, or none of them
        if not state["main"] or not ours():
            return False  # a refused rerun leaves the earlier run's files as they were
        try:
            if not began:  # a fresh directory: say what this job was (sweep reports read it)
                write_hydra_files(workdir, hydra_files)
            write_json_atomic(workdir / "status.json", {"started": started, **fields})
        except OSError:  # an unwritable directory or a full disk: reported in the error itself
            if fields.get("status") == "failed":
                failed_unrecorded(workdir, fields.get("error", "failed"))
        return True

    try:
        cfg = validate(to_config(cfg))
        distributed.initialize(cfg.trainer)  # before anything else touches the backend
        state["main"] = distributed.is_main_process()
        with claimed(cfg, workdir, hydra_files=hydra_files) as rundir:
            state["rundir"] = rundir
            rundir.on_start = lambda: record(status="running")
            result = fn(cfg, workdir, rundir)
    except Preempted as err:
        status, code = stop_status()
        record(status=status, message=str(err), ended=time.time())
        log.warning("%s", err)
        sys.exit(code)
    except (*USER_ERRORS, OSError) as err:
        if isinstance(err, OSError) and not isinstance(err, USER_ERRORS):
            # a file the run could not write or read (a full disk, a path that vanished):
            # one line naming it; the training state is in the last checkpoint
            err = RunDirError(os_error_line(err, workdir))
        if isinstance(err, (RunDirInUse, RunDirNested)):
            release_run_log(keep=False)  # the lines of the process running there, only
            refused(workdir, err)  # another run's files (a process running there) stay as they are
            if isinstance(err, RunDirNested):
                _remove_if_unused(workdir)  # made for this job (Hydra, its log), left empty
        elif not record(status="failed", error=f"{type(err).__name__}: {err}", ended=time.time()):
            refused(workdir, err)
        log.error("%s: %s", type(err).__name__, err)
        if not exit_on_error:
            return {}
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        record(status="interrupted", message="Ctrl-C", ended=time.time())
        saved = RunDir(workdir).checkpointed()
        log.warning(
            "Ctrl-C: stopped in %s; %s",
            workdir,
            "its checkpoints are kept: run the same command again to resume"
            if saved
            else "no epoch was checkpointed yet: the same command starts it again",
        )
        # At once, as a second Ctrl-C asks: a checkpoint write still in flight is abandoned
        # as a kill would leave it (the newest complete checkpoint is what resumes).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except BaseException as err:
        record(
            status="failed",
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc(),
            ended=time.time(),
        )
        raise
    record(status="completed", ended=time.time())
    if not exit_on_error:
        stop_multirun_if_asked(f"{workdir} is complete")
    return result


def stop_multirun_if_asked(done: str) -> None:
    """In a multirun, between two jobs: a Ctrl-C or SIGTERM that came while the last one
    wrote its outputs (too late to stop it) stops the multirun here, with the exit status
    ``stop_status`` gives; the next job would otherwise start and forget it."""
    from ae_jax.training.loop import preempt_requested, stop_signal

    if preempt_requested():
        log.warning("%s: %s; the multirun stops before its next job", stop_signal(), done)
        sys.exit(stop_status()[1])


def stop_status() -> tuple[str, int]:
    """``status.json``'s state and the exit status of a run that a signal stopped after its
    checkpoint: SIGTERM, ``preempted`` and 0 (a clean stop: a scheduler requeues the same
    command to resume); Ctrl-C, ``interrupted`` and 130, the shell's convention, so that
    ``train.py ... && next-step`` stops there too."""
    from ae_jax.training.loop import stop_signal

    return ("interrupted", 130) if stop_signal() == "Ctrl-C" else ("preempted", 0)


def score_of(cfg: Any, metrics: dict) -> float:
    """The value a job returns to Hydra's sweeper: ``metrics[score_key(cfg)]`` (``score``:
    auto = val/mse with a validation split, else test/mse); NaN for a failed job (no metrics).

    Raises:
      ConfigError: the run's metrics lack the key; names it and lists the keys they have.
    """
    if not metrics:  # a failed job, or a process other than 0 of a multi-process run
        return float("nan")
    key = score_key(cfg)
    if key not in metrics:
        raise ConfigError(
            f"score={key} is not a metric of this run; choose one of its metrics.json keys: "
            f"{', '.join(sorted(metrics))}"
        )
    return float(metrics[key])


def job_score(
    cfg: Any, metrics: dict, search: bool | None = None, workdir: str | Path | None = None
) -> float:
    """``score_of`` for the entry points and launchers. A score key missing from the metrics
    (the run's own files are already written) is one error line: a single run exits with
    status 2; a multirun's job (``workdir``) fails alone, with the score of a failed job, and
    the other jobs or trials go on (the multirun's summary lists it; a code as wide as the
    data has no ``*/mse_over_pca``, so one trial of a search over code sizes may lack it).
    ``search``: whether the job is a trial of a hyperparameter search (None: ask Hydra's
    config of the running job; a launcher that trains outside its jobs' Hydra context, and
    in a multirun, says so itself)."""
    multirun = search is not None or _in_multirun()
    if search is None:
        search = _in_search()
    try:
        value = score_of(cfg, metrics)
    except ConfigError as err:
        if not multirun:
            log.error("ConfigError: %s", err)
            sys.exit(2)
        log.error("%sConfigError: %s", f"{workdir}: " if workdir else "", err)
        if workdir is not None:
            failed_unrecorded(workdir, f"ConfigError: {err}")
        value = float("nan")
    if math.isnan(value) and search:
        # Optuna 2.x cannot record a NaN (and the released sweeper then ends the whole search
        # with a traceback): a failed trial scores +inf, the worst value, and the search goes
        # on; its status.json keeps the reason and the multirun summary lists it.
        return float("inf")
    return value


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _in_search() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and is_search(HydraConfig.get())


def is_search(hydra_cfg: Any) -> bool:
    """Whether Hydra runs this job as part of a hyperparameter search: a multirun whose sweeper
    is Optuna's (``hydra.sweeper._target_``); a single run of the same config is none."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(hydra_cfg):  # None outside Hydra
        return False
    mode = OmegaConf.select(hydra_cfg, "mode", default=None)
    if mode is not None and mode not in (RunMode.MULTIRUN, "MULTIRUN"):
        return False
    target = OmegaConf.select(hydra_cfg, "sweeper._target_", default=None)
    return "optuna" in str(target or "").lower()


def check_search_score(cfg: Any, hydra_cfg: Any) -> None:
    """Refuse a hyperparameter search that would choose on the test split: under the Optuna
    sweeper the score must be a validation metric (data.validation and score=val/...).

    Raises:
      ConfigError: naming the score and the way to a validation score.
    """
    if not is_search(hydra_cfg):
        return
    key = score_key(cfg)
    if key.startswith("test/"):
        given = getattr(cfg, "score", "auto")
        resolved = f" (score={given} resolves to {key})" if given != key else ""
        raise ConfigError(
            f"score={key}{resolved}: a hyperparameter search must be scored on validation "
            "data, never on the test split; set data.validation (e.g. 0.15) and score=val/mse"
        )


def check_search_settings(hydra_cfg: Any) -> None:
    """Refuse a hyperparameter search whose trial counts cannot run: ``hydra.sweeper.n_trials``
    and ``n_jobs`` must be positive integers (0 trials ended the released sweeper with a
    traceback after the search, a count of jobs below 1 never proposes a trial).

    Raises:
      ConfigError: naming the key, its value and what is valid.
    """
    from omegaconf import OmegaConf

    if not is_search(hydra_cfg):
        return
    for key in ("n_trials", "n_jobs"):
        value = OmegaConf.select(hydra_cfg, f"sweeper.{key}", default=None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(trial_count_refusal(key, value))
    storage = OmegaConf.select(hydra_cfg, "sweeper.storage", default=None)
    if storage is not None:  # Optuna 2.10's RDB storage asserts on SQLAlchemy 2's schema
        raise ConfigError(
            f"hydra.sweeper.storage={storage} cannot be used: Optuna 2.10's database storage "
            "does not work with the SQLAlchemy 2 installed here; leave it unset (the study "
            "lives in memory, and the same command continues it from its trials' directories "
            "and search.yaml)"
        )
    direction = OmegaConf.select(hydra_cfg, "sweeper.direction", default="minimize")
    if OmegaConf.is_list(direction) or isinstance(direction, (list, tuple)):
        directions = list(direction)
        if len(directions) == 1:
            direction = directions[0]
        else:  # Optuna would fail every trial, as "Return value must be a list ...", and exit 0
            raise ConfigError(
                f"hydra.sweeper.direction={directions} asks for {len(directions)} objectives; a "
                "trial is scored on one metric (score=...): use minimize or maximize"
            )
    if str(direction).lower() not in ("minimize", "maximize"):
        raise ConfigError(
            f"hydra.sweeper.direction={direction} is not valid; use minimize or maximize "
            "(what the search does to the score)"
        )


def _check_searched_key(base: Any, key: str, searched: str) -> None:
    """A searched key the run's config lacks: ``+optim.lrr=interval(...)`` searched a key
    nothing reads (the trials all trained at optim.lr, and the study named optim.lrr as a
    parameter), ``optim.lrr=...`` was Hydra's several lines once the study had begun."""
    from omegaconf import OmegaConf

    from ae_jax.config import check_overrides

    missing = object()
    if OmegaConf.select(base, key, default=missing) is not missing:
        return
    try:  # the schema's own one line: did you mean optim.lr? select the term with reg=...
        check_overrides([f"{key}=0"])
    except ConfigError as err:
        said = str(err).replace(f"{key}=0 ", f"{key} ")  # the probe's value is not the user's
        raise ConfigError(f"the search over {searched} cannot run: {said}") from None
    raise ConfigError(f"the search over {searched} cannot run: the config has no key {key}")


def check_search_space(config: Any) -> None:
    """Refuse a hyperparameter search whose range for a key reaches values the key cannot take
    (``noise.level=interval(0.5, 2.0)``): every end of an interval, every value of a choice or
    range, is put in the run's config and validated, so a range that would only feed the
    sampler refused trials is one line before the search starts. Keys that name config groups
    (``noise=choice(masking, gaussian)``) are left to Hydra.

    Raises:
      ConfigError: naming the searched key, its range and why the value is refused.
    """
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from ae_jax.config import to_config, validate, validate_score

    space = search_space(config.hydra)
    if not space:
        return
    base = copy.deepcopy(config)
    with open_dict(base):
        del base["hydra"]
    validate_score(to_config(base))  # what every trial is scored on, whatever it searches
    texts = [f"{key}={spec}" for key, spec in space.items()]
    for override in OverridesParser.create().parse_overrides(texts):
        key = override.key_or_group
        _check_searched_key(base, key, override.input_line or key)
        node = OmegaConf.select(base, key, default=None)
        if not override.is_sweep_override() or node is None or OmegaConf.is_config(node):
            continue
        sweep = override.value()
        searched = override.input_line or f"{key}={override.get_value_element_as_str()}"
        _check_tags(searched, sweep, isinstance(sweep, IntervalSweep))
        ends = [sweep.start, sweep.end] if isinstance(sweep, IntervalSweep) else None
        if ends and ends[0] > ends[1]:
            raise ConfigError(
                f"the search over {searched} runs from {ends[0]:g} down to {ends[1]:g}; an "
                f"interval goes from low to high: interval({ends[1]:g}, {ends[0]:g})"
            )
        for value in ends or list(override.sweep_iterator()):
            trial = copy.deepcopy(base)
            try:
                OmegaConf.update(trial, key, value, merge=False)
            except OmegaConfBaseException as err:  # a float for an integer key, a word for a number
                whole = isinstance(value, float) and ends
                inner = f"interval({ends[0]:g}, {ends[1]:g})" if whole else ""
                if whole and "log" in (sweep.tags or ()):
                    inner = f"tag(log, {inner})"
                raise ConfigError(
                    f"the search over {searched} gives {key} the value {value!r}, which it "
                    f"cannot take ({str(err).splitlines()[0]})"
                    + (
                        f"; an interval samples real numbers: for whole numbers write int({inner})"
                        if whole
                        else ""
                    )
                ) from None
            try:
                validate(to_config(trial))
            except ConfigError as err:
                raise ConfigError(
                    f"the search over {searched} reaches values that are refused: {err}"
                ) from None


def _check_tags(searched: str, sweep: Any, interval: bool) -> None:
    """Optuna's sweeper reads one tag, ``log`` on an interval, and drops every other without
    a word: ``tag(logg, interval(1e-4, 1e-1))`` searched uniformly."""
    for tag in sorted(getattr(sweep, "tags", None) or ()):
        if tag != "log" or not interval:
            raise ConfigError(
                f"the search over {searched}: Optuna's sweeper ignores the tag {tag!r} here; "
                "the one tag it reads is log, on an interval: tag(log, interval(LOW, HIGH))"
            )


def _search_overrides(hydra_cfg: Any) -> tuple[dict[str, str], set[str]]:
    """The sweeper's ``params`` and the command line's overrides, as Hydra's Optuna sweeper
    splits them: key -> the text of its range (the last one given wins), and the keys given a
    fixed value somewhere."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None) or {}
    texts = [f"{key}={value}" for key, value in params.items()]
    texts += [str(t) for t in OmegaConf.select(hydra_cfg, "overrides.task", default=None) or []]
    ranges: dict[str, str] = {}
    fixed: set[str] = set()
    for text, override in zip(texts, OverridesParser.create().parse_overrides(texts)):
        key = override.get_key_element()  # the sweeper's name for it (a "+" prefix kept)
        if override.is_sweep_override():
            ranges[key] = text.partition("=")[2]
        else:
            fixed.add(key)
    return ranges, fixed


def search_space(hydra_cfg: Any) -> dict[str, str]:
    """The parameters a hyperparameter search samples, as Hydra's Optuna sweeper reads them:
    its ``params`` and the command line's overrides, a sweep override such as
    ``optim.lr='tag(log, interval(1e-3, 1))'`` giving a key's range (the last one given wins)
    and a fixed value such as ``optim.lr=0.01`` anywhere taking the key out of the search, as
    the sweeper does whatever their order. Key -> the range's text; {} for a multirun that is
    no search."""
    if not is_search(hydra_cfg):
        return {}
    ranges, fixed = _search_overrides(hydra_cfg)
    return {key: text for key, text in ranges.items() if key not in fixed}


def record_search(config: Any, root: Path) -> None:
    """Write ``<sweep dir>/search.yaml`` for a hyperparameter search: what it samples
    (``params``: ``search_space``; the sweeper records this nowhere, and a trial's
    ``.hydra/hydra.yaml`` keeps the sweep file's ranges even where the command line replaced
    them) and its sampler's seed (``sampler_seed``). A sampler given no seed gets one here,
    or the one recorded by an earlier run of the search in this directory: the same command
    then continues an interrupted search (the sampler proposes the same trials, whose
    directories hold their runs) instead of proposing new trials that those directories
    refuse. Called holding the sweep directory's lock, before the sweeper is made."""
    import yaml
    from omegaconf import OmegaConf, read_write

    from ae_jax.run_io import write_text_atomic
    from ae_jax.sweeps.collect import SEARCH_RECORD, read_search_record

    if not is_search(config.hydra):
        return
    record: dict[str, Any] = {"params": search_space(config.hydra)}
    sampler = OmegaConf.select(config.hydra, "sweeper.sampler", default=None)
    if OmegaConf.is_dict(sampler) and "seed" in sampler:
        seed = sampler.seed
        if seed is None:
            earlier = (read_search_record(root) or {}).get("sampler_seed")
            seed = (
                earlier if isinstance(earlier, int) else int.from_bytes(os.urandom(4), "big") >> 1
            )
            with read_write(sampler):
                sampler.seed = seed
            how = "recorded by this search's earlier run" if seed == earlier else "chosen"
            log.info(
                "the sampler was given no seed: seed %d, %s in %s (the same command continues "
                "this search)",
                seed,
                how,
                root / SEARCH_RECORD,
            )
        record["sampler_seed"] = int(seed)
    header = (
        "# The hyperparameter search in this sweep directory: the parameters it samples, as\n"
        "# Hydra's Optuna sweeper read them (its params, then the command line's overrides),\n"
        "# and its sampler's seed.\n"
    )
    text = yaml.safe_dump(record, sort_keys=False, default_flow_style=False, width=1000)
    write_text_atomic(root / SEARCH_RECORD, header + text)


def warn_grid_without_multirun(hydra_cfg: Any, multirun: bool) -> None:
    """A config that sets a grid (``hydra.sweeper.params``: a ``+sweep=`` file, an experiment
    of several runs) run without ``--multirun`` trains one run of its defaults: say so, with
    the grid it leaves out, rather than let it pass for the sweep."""
    params = hydra_cfg.sweeper.get("params") if "sweeper" in hydra_cfg else None
    if multirun or not params:
        return
    grid = ", ".join(f"{k}={v}" for k, v in params.items())
    log.warning(
        "this config sets a sweep (%s), which only --multirun runs: this is one run, of the "
        "values it composes to; add --multirun to run the sweep",
        grid,
    )


def check_search_or_exit(cfg: Any, hydra_cfg: Any) -> None:
    """``check_search_score``, a refusal being one line on stderr and exit status 2."""
    try:
        check_search_score(cfg, hydra_cfg)
    except ConfigError as err:
        print(f"ConfigError: {err}", file=sys.stderr)
        sys.exit(2)


class SearchScoreCheck(Callback):
    """Before the first job of a multirun (whichever launcher runs it): a hyperparameter search
    (Hydra's Optuna sweeper) scored on a test/ metric, or whose searched range reaches values a
    key cannot take (``check_search_space``), is refused in one line, exit status 2, before the
    sweeper starts, so before any job trains or any job directory is made."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        check_search_or_exit(config, config.hydra)
        try:
            check_search_settings(config.hydra)
            check_search_space(config)
        except ConfigError as err:
            print(f"ConfigError: {err}", file=sys.stderr)
            sys.exit(2)
        if is_search(config.hydra):  # optuna imports alembic, which logs each of its plugins
            logging.getLogger("alembic").setLevel(logging.WARNING)  # at INFO on the console
            ranges, fixed = _search_overrides(config.hydra)
            for key in sorted(set(ranges) & fixed):
                log.warning(
                    "%s is given both a range (%s) and a fixed value: Optuna's sweeper keeps "
                    "the fixed value and does not search %s",
                    key,
                    ranges[key],
                    key,
                )


def _refuse_nested_sweep(root: Path) -> None:
    """A sweep directory inside another sweep's directory or a run's (or a run's own): its
    jobs would land among that sweep's jobs or that run's files, and a report of either would
    count them as its own."""
    from ae_jax.training.rundir import is_sweep_dir

    root = root.absolute()
    if (root / "status.json").exists() and not is_sweep_dir(root):
        raise RunDirError(
            f"hydra.sweep.dir={root} is a run's directory; a sweep there would mix its jobs "
            "with that run's files: choose a hydra.sweep.dir outside it"
        )
    for parent in root.parents:
        for found, what in (
            (is_sweep_dir(parent), "a sweep"),
            ((parent / "status.json").exists(), "a run"),
        ):
            if found:
                raise RunDirError(
                    f"hydra.sweep.dir={root} is inside {parent}, the directory of {what}; its "
                    "report would count this sweep's jobs as its own: choose a hydra.sweep.dir "
                    "outside it"
                )


def _job_values(job: Any) -> dict[str, Any]:
    """A job's overrides as {key: value}, values read as YAML (so 0.10 is 0.1), without
    ``trainer.epochs``, which a rerun may raise to extend its jobs."""
    from ae_jax.sweeps.collect import override_values
    from ae_jax.training.rundir import EXTENDABLE

    values = override_values(job)
    values.pop(EXTENDABLE, None)
    return values


def _refuse_renumbered_jobs(config: Any, root: Path) -> None:
    """A grid rerun in a sweep directory whose jobs are numbered (``hydra.sweep.subdir`` is
    ``${hydra.job.num}``, the default) with values added to a key other than the first: Hydra
    numbers jobs by the places of their values, so an earlier job's values would come back
    under another number and train again beside the first copy, which a report would count
    twice. Refused before any job starts; a job whose number changed is refused by its own
    directory anyway (``RunDir.claim``), but only when its turn comes."""
    import yaml
    from omegaconf import OmegaConf

    from ae_jax.sweeps.collect import grid_jobs

    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if str(subdir).replace(" ", "") != "${hydra.job.num}":
        return  # jobs named by their values land in their own directories
    try:
        jobs = grid_jobs(config)
    except Exception:  # an unparsable grid: Hydra's sweeper says so itself
        return
    new = [_job_values(job) for job in jobs]
    stored: dict[int, tuple[list, dict]] = {}  # the numbered job directories already here
    for d in root.iterdir() if root.is_dir() else ():
        try:
            items = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or []
            stored[int(d.name)] = (items, _job_values(items))
        except (OSError, ValueError, yaml.YAMLError, TypeError):
            continue
    every = new + [values for _, values in stored.values()]
    swept = {k for values in every for k in values if any(v.get(k) != values[k] for v in every)}

    def shown(items: Any) -> str:
        keys = [str(i) for i in items if str(i).partition("=")[0].lstrip("+~") in swept]
        return " ".join(keys) or "the same values"

    missing = object()

    def same(old: dict, values: dict) -> bool:
        """Whether an earlier job's overrides name this job: a key it set that this sweep
        leaves alone must hold the value it has in this sweep's config."""
        if any(k not in old or old[k] != v for k, v in values.items()):
            return False
        rest = {k: v for k, v in old.items() if k not in values}
        return all(OmegaConf.select(config, k, default=missing) == v for k, v in rest.items())

    for num, values in enumerate(new):
        if num in stored and same(stored[num][1], values):
            continue
        earlier = next((k for k in sorted(stored) if k != num and same(stored[k][1], values)), None)
        if earlier is None:
            continue
        instead = f" in place of {shown(stored[num][0])}" if num in stored else ""
        raise RunDirError(
            f"hydra.sweep.dir={root}: this sweep would train {shown(jobs[num])} again as job "
            f"{num}{instead}, while {root / str(earlier)} holds it from the sweep run there "
            "before. Hydra numbers a sweep's jobs by the places of their values (the last "
            "swept key varies fastest), so a grid that adds values to a key other than the "
            "first, or leaves some out, renumbers them: to add to this sweep, append values "
            "to the first swept key only, the earlier values kept in their order; or use a "
            "new hydra.sweep.dir"
        )
    _refuse_replaced_values(config, root, new, stored)


def _refuse_replaced_values(config: Any, root: Path, new: list, stored: dict) -> None:
    """A grid rerun that gives a numbered job another value of a key its directory's run was
    trained with (noise.level=0.1,0.3 run, then 0.1,0.4): that job's directory keeps its run
    and refuses it when its turn comes, while the rerun had already rewritten the sweep's
    ``multirun.yaml``, from which the report read a grid the runs do not hold. Refused before
    any job starts, naming the jobs; keys a rerun may change are left to each directory."""
    from omegaconf import OmegaConf

    from ae_jax.training.rundir import MAY_DIFFER, STAGE_KEYS, RunDir

    if OmegaConf.select(config, "trainer.resume", default=True) is False:
        return  # each such job trains in a directory of its own beside the earlier run

    def may_change(key: str) -> bool:
        return key in MAY_DIFFER or key.split(".")[0] in MAY_DIFFER or key in STAGE_KEYS

    clashes = []
    for num, values in enumerate(new):
        old = stored.get(num, (None, {}))[1]
        changed = [k for k in values if k in old and old[k] != values[k] and not may_change(k)]
        if changed and RunDir(root / str(num)).holds_run():
            clashes.append(
                f"job {num} ({', '.join(f'{k}: {old[k]} -> {values[k]}' for k in changed)})"
            )
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise RunDirError(
            f"hydra.sweep.dir={root}: this sweep gives {'; '.join(clashes[:3])}{more} other "
            "values than the runs their directories hold from the sweep run there before; a "
            "job's directory keeps its run, so those jobs would be refused and the sweep's "
            "record would no longer describe its runs. Use a new hydra.sweep.dir for the new "
            "values, or add them to the first swept key (appended after its earlier values)"
        )


def _distributions(params: dict) -> dict[str, Any]:
    """A search's ``params`` (key -> range text) as the Optuna distributions the sweeper makes
    of them, so that ``interval(1e-4,0.1)`` and ``interval(0.0001, 0.1)`` compare equal."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    texts = [f"{key}={text}" for key, text in params.items()]
    parsed = OverridesParser.create().parse_overrides(texts)
    return {o.get_key_element(): create_optuna_distribution_from_override(o) for o in parsed}


def _refuse_changed_search(config: Any, root: Path) -> None:
    """A hyperparameter search rerun in a sweep directory whose trials come from another search
    (other ranges, or another sampler seed): the sweeper numbers its trials from 0 again, so
    every trial would be refused by the earlier trial's directory after composing, and the
    rerun would still have rewritten ``search.yaml``, which the report reads the search's
    ranges from. Refused before any trial, naming what changed."""
    from omegaconf import OmegaConf

    from ae_jax.sweeps.collect import read_search_record

    if not is_search(config.hydra):
        return
    earlier = read_search_record(root)
    if not earlier or not any(root.glob("*/status.json")):
        return  # no search here yet, or none of its trials began: nothing to keep apart
    old, new = earlier.get("params") or {}, search_space(config.hydra)
    try:
        same = _distributions(old) == _distributions(new)
    except Exception:  # a record the parser no longer reads: compare the texts
        same = {k: str(v).replace(" ", "") for k, v in old.items()} == {
            k: v.replace(" ", "") for k, v in new.items()
        }
    changes = []
    if not same:
        for key in sorted(set(old) | set(new)):
            was, now = old.get(key, "not searched"), new.get(key, "not searched")
            if str(was).replace(" ", "") != str(now).replace(" ", ""):
                changes.append(f"{key}: {was} -> {now}")
        changes = changes or [f"{', '.join(f'{k}={v}' for k, v in new.items())}"]
    seed = OmegaConf.select(config.hydra, "sweeper.sampler.seed", default=None)
    recorded = earlier.get("sampler_seed")
    if seed is not None and isinstance(recorded, int) and seed != recorded:
        changes.append(f"the sampler's seed: {recorded} -> {seed}")
    if changes:
        raise RunDirError(
            f"hydra.sweep.dir={root} holds the trials of another search ({'; '.join(changes)}); "
            "this one's trials would be refused in their directories. Rerun the earlier "
            f"search's command to continue it (its ranges are in {root / 'search.yaml'}), or "
            "choose a new hydra.sweep.dir"
        )


class SweepLock(Callback):
    """A sweep directory belongs to one multirun process at a time: before the first job,
    ``<hydra.sweep.dir>/.sweep.lock`` is taken (``fcntl.flock``, naming the holder; the kernel
    releases it when the process ends, however it ends). A second multirun on the same
    directory is refused in one line, exit status 2, before any job composes or trains,
    instead of training the jobs the first has not reached yet beside it. Each job's own
    directory keeps its own lock (``RunDir``). Holding the lock, a hyperparameter search
    records what it samples and its sampler's seed there (``record_search``)."""

    LOCK = ".sweep.lock"

    RESULTS = "optimization_results.yaml"  # the Optuna sweeper's best trial, at the end

    def __init__(self) -> None:
        self._fd: int | None = None
        self._results: bytes | None = None  # an earlier search's, as this multirun found it

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from ae_jax.training.rundir import hold_lock

        root = Path(str(config.hydra.sweep.dir))
        with contextlib.suppress(OSError):
            self._results = (root / self.RESULTS).read_bytes()
        try:
            _refuse_nested_sweep(root)
            root.mkdir(parents=True, exist_ok=True)
            self._fd = hold_lock(
                root / self.LOCK,
                f"sweep directory {root}",
                "wait for that multirun to finish (or stop it: it saves its checkpoints), or "
                "choose another hydra.sweep.dir",
            )
            _refuse_renumbered_jobs(config, root)
            _refuse_changed_search(config, root)
            record_search(config, root)  # the sweep directory is this process's now
        except RunDirError as err:
            print(f"RunDirError: {err}", file=sys.stderr)
            sys.exit(2)
        except OSError as err:
            print(
                f"error: sweep directory {root} cannot be used ({err.strerror or err}); choose "
                "a writable hydra.sweep.dir",
                file=sys.stderr,
            )
            sys.exit(2)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._keep_earlier_results(Path(str(config.hydra.sweep.dir)))
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _keep_earlier_results(self, root: Path) -> None:
        """A search rerun in which no trial completed (every one refused, or failed) makes the
        Optuna sweeper write a best value of inf over the earlier search's results: those are
        put back, said in one line."""
        import yaml

        from ae_jax.run_io import write_atomic

        if self._results is None:
            return
        try:
            best = yaml.safe_load((root / self.RESULTS).read_text()).get("best_value")
        except (OSError, yaml.YAMLError, AttributeError):
            return
        if isinstance(best, (int, float)) and math.isfinite(best):
            return
        earlier = self._results
        write_atomic(root / self.RESULTS, lambda f: f.write(earlier))
        log.warning(
            "no trial of this search completed: %s keeps the earlier search's results",
            root / self.RESULTS,
        )


_MULTIRUN: list[Any] = []  # the config of the multirun this process runs (MultirunSummary)


_MULTIRUN_STARTED: list[float] = []  # when this process's multirun began (MultirunSummary)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _job_states(root: Path) -> tuple[dict[str, int], list[str]]:
    """How many of the jobs under the sweep directory ``root`` ended in each state (each
    job's ``status.json``, vectorised members included, or this process's refusal or
    unrecorded failure: ``UNRECORDED``), and a line for each failed or refused job."""
    import json

    from ae_jax.training.rundir import CHOSEN

    counts: dict[str, int] = {}
    failed = []
    jobs = {f.parent.absolute(): f for f in root.glob("**/status.json")}
    top = root.absolute()
    ours = {Path(d) for d in CHOSEN if top in Path(d).parents}
    if ours:  # the jobs ran in this process: earlier runs kept beside them are not counted,
        # and any job this multirun recorded is (a vmap member refused before its directory
        # was chosen)
        since = _MULTIRUN_STARTED[0] if _MULTIRUN_STARTED else 0.0
        jobs = {
            job: f
            for job, f in jobs.items()
            if job in ours or (f is not None and _mtime(f) >= since)
        }
    jobs.update({Path(d): None for d in UNRECORDED if top in Path(d).parents})
    for job in sorted(jobs):
        if str(job) in UNRECORDED:  # its status.json, if any, is not this run's end
            ended, reason = UNRECORDED[str(job)]
            status = {"status": ended, "error": reason}
        else:
            try:
                status = json.loads(jobs[job].read_text())
            except (OSError, ValueError):
                continue
        s = status.get("status", "unknown")
        counts[s] = counts.get(s, 0) + 1
        if s in ("failed", "refused"):
            failed.append(f"  {job}: {status.get('error', 'failed')}")
    return counts, failed


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


class MultirunSummary(Callback):
    """At the end of a Hydra multirun: one line per failed job (``_job_states``: whichever
    launcher ran it, vectorised members included, and each job this process refused in a
    directory that holds another run, or failed where its status.json could not be written)
    and exit status 2 when any job failed or was refused, instead of Hydra's traceback of the
    first failure. A multirun stopped part-way by Ctrl-C or SIGTERM gets its line from
    ``summarize_stopped_multirun``."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from ae_jax.training.rundir import CHOSEN

        UNRECORDED.clear()  # this multirun's jobs only
        CHOSEN.clear()
        _MULTIRUN[:] = [config]
        _MULTIRUN_STARTED[:] = [time.time() - 1.0]  # (file times may be coarse)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        _MULTIRUN.clear()
        root = Path(str(config.hydra.sweep.dir))
        counts, failed = _job_states(root)
        if not counts:
            return
        log.info("multirun %s: %s", root, _counted(counts))
        if failed:
            what = "failed or were refused" if counts.get("refused") else "failed"
            log.error("%d job(s) %s:\n%s", len(failed), what, "\n".join(failed))
            if is_search(config.hydra) and not (counts.get("completed") or counts.get("refused")):
                log.error(
                    "no trial of this search completed: the sweeper's best value (inf) and "
                    "best parameters above name a failed trial, not a result"
                )
            sys.exit(2)


def summarize_stopped_multirun(signal_name: str) -> None:
    """One line for a multirun that ``signal_name`` (Ctrl-C, SIGTERM) stopped part-way, where
    Hydra calls no end-of-multirun callback: how its jobs stand, how many of a grid's jobs had
    not started, and how to go on. Nothing outside a multirun."""
    from ae_jax.sweeps.collect import grid_jobs

    if not _MULTIRUN:
        return
    config = _MULTIRUN.pop()
    root = Path(str(config.hydra.sweep.dir))
    counts, _ = _job_states(root)
    try:
        left = len(grid_jobs(config)) - sum(counts.values())
    except Exception:  # noqa: BLE001 - a grid only Hydra's sweeper can expand: not counted
        left = 0
    if left > 0:
        counts["not started"] = left
    log.warning(
        "multirun %s stopped by %s: %s; the same command goes on from there (completed jobs "
        "are not trained again)",
        root,
        signal_name,
        _counted(counts) or "no job started",
    )
