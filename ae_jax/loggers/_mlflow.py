"""MLflow: one MLflow run per ae-jax run, in a SQLite store ``<run dir>/mlflow.db`` (artifacts
in ``<run dir>/mlartifacts``) unless ``logger.mlflow.tracking_uri`` or ``$MLFLOW_TRACKING_URI``
names another store (a server, a database shared by a sweep).
``mlflow ui --backend-store-uri sqlite:///<run dir>/mlflow.db``.

Why not a ``file:`` store (``mlruns/``): recent MLflow (3.17 here) refuses file stores unless
``MLFLOW_ALLOW_FILE_STORE=true`` ("maintenance mode"), and a file store keeps each metric in a
file named by its key, so ``train/loss`` (a file) and ``train/loss/rec`` (a file in a directory
``train/loss``) cannot both exist. A ``file:`` URI given explicitly still works: the opt-out is
set for it and ``/`` in metric names becomes ``.`` there (``train.loss.rec``).

Params are the flattened resolved config (values cut to MLflow's 6000 characters), metrics the
history rows with ``step`` = epoch plus the final metrics, images artifacts under
``images/epoch_<step>/<tag>.png``. The run directory records its MLflow run
(``mlflow_run.json``), which a resumed session goes on in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ae_jax.loggers.registry import MlflowSettings
from ae_jax.network import unreachable

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
PARAMS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH
# MLflow's own defaults for a tracking server (7 retries with doubling waits, 120 s a request)
# hold a run's training loop for 4 minutes or more when the server stops answering mid-run;
# these bound it to seconds (a refused connection) or about a minute (a silent one). Set in
# the environment, MLflow's variables win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def mlflow_key(key: str) -> str:
    """``key`` with the characters MLflow refuses in a metric or param name replaced by ``_``
    (allowed: letters, digits, ``_ - . : /`` and space; ``train/loss/rec`` is kept as it is)."""
    return re.sub(r"[^A-Za-z0-9_\-.:/ ]", "_", key)[:MAX_KEY]


def tracking_uri(settings: MlflowSettings, workdir: Path) -> str:
    """The store: the setting, else ``$MLFLOW_TRACKING_URI``, else ``<workdir>/mlflow.db``."""
    return (
        settings.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"
    )


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


@contextlib.contextmanager
def _quiet():
    names = ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class MlflowLogger:
    def __init__(self, client: Any, run_id: str, file_store: bool = False):
        self.client = client
        self.run_id = run_id
        self._file_store = file_store
        self._params: set[str] = set()
        self._metrics: set[str] = set()
        self._last_step = 0
        self._logged: dict[str, int] = {}  # an earlier session's last step of each metric
        self._closed = False
        self._broken = False  # a request failed: the store is not asked again, not even to close

    @contextlib.contextmanager
    def _request(self):
        try:
            yield
        except Exception:
            self._broken = True
            raise

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        new = [
            Param(mlflow_key(k), str(v)[:MAX_PARAM_VALUE])
            for k, v in params.items()
            if mlflow_key(k) not in self._params
        ]
        with self._request():
            for i in range(0, len(new), PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=new[i : i + PARAMS_PER_BATCH])
        self._params.update(p.key for p in new)

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(self._metric_key(k), v, ts, step) for k, v in values.items()]
        with self._request():
            for i in range(0, len(metrics), METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_BATCH])

    def _metric_key(self, key: str) -> str:
        key = mlflow_key(key)
        return key.replace("/", ".") if self._file_store else key

    def resume(self, keys) -> None:
        """Go on in a run an earlier session began: what it logged stays, and the steps it
        logged after its last checkpoint (which this session trains again, to the same values)
        are not logged twice (MLflow keeps every value it is given)."""
        with self._request():
            for key in keys:
                steps = [m.step for m in self.client.get_metric_history(self.run_id, key)]
                self._logged[key] = max(steps, default=0)
                self._last_step = max(self._last_step, self._logged[key])

    def log_metrics(self, row: dict[str, float], step: int) -> None:
        if self._logged:
            keys = {k: self._metric_key(k) for k in row}
            row = {k: v for k, v in row.items() if step > self._logged.get(keys[k], 0)}
        self._log(row, step)
        self._metrics.update(row)
        self._last_step = max(self._last_step, step)

    def log_image(self, tag: str, png_path: Path, step: int) -> None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", tag) + ".png"
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / name
            shutil.copyfile(png_path, local)
            with self._request():
                self.client.log_artifact(self.run_id, str(local), f"images/epoch_{step}")

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        self.log_params(hparams)  # only those the run did not log when it opened
        final = {k: v for k, v in metrics.items() if k not in self._metrics}
        self._log(final, self._last_step)
        self._metrics.update(final)

    def close(self, status: str = "completed") -> None:
        if not self._closed:
            self._closed = True
            if not self._broken:
                ended = {"completed": "FINISHED", "preempted": "KILLED"}.get(status, "FAILED")
                self.client.set_terminated(self.run_id, ended)


def open_mlflow(
    settings: MlflowSettings,
    *,
    workdir: Path,
    run_name: str,
    config: dict,
    group: str | None = None,
    fresh: bool = False,
) -> MlflowLogger:
    workdir = Path(workdir)
    uri = tracking_uri(settings, workdir)
    own_store = not settings.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI")
    if urlsplit(uri).scheme in ("http", "https"):
        for var, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(var, value)
    problem = unreachable([uri])  # MLflow would retry an unreachable server for minutes
    if problem is not None:
        from ae_jax.loggers import LoggerError

        given = "logger.mlflow.tracking_uri" if settings.tracking_uri else "$MLFLOW_TRACKING_URI"
        raise LoggerError(
            f"logger=mlflow: the tracking server {uri} ({given}): {problem}; "
            f"start it or correct {given}, or leave both unset to log into the run "
            "directory's own store (mlflow.db)"
        )
    if _is_file_store(uri):
        # An explicit MLFLOW_ALLOW_FILE_STORE=false is respected (MLflow then refuses).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    database = _sqlite_file(uri)
    if database is not None and not own_store:
        _check_sqlite_writable(database, uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ae_jax.loggers import flatten_config

    workdir.mkdir(parents=True, exist_ok=True)
    with _quiet():  # a new SQLite store announces its table creation on the console
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        # beside the store: MLflow's default for a database is ./mlruns in the current directory
        near = workdir if own_store else database.parent if database is not None else None
        artifacts = (near / "mlartifacts").resolve().as_uri() if near is not None else None
        try:
            experiment_id = client.create_experiment(
                settings.experiment, artifact_location=artifacts
            )
        except MlflowException:  # another job of the sweep created it meanwhile
            experiment_id = client.get_experiment_by_name(settings.experiment).experiment_id
    tags = {RUN_DIR_TAG: _here(workdir), **({"group": group} if group else {})}
    earlier = _earlier_run(client, experiment_id, workdir, uri, own_store)
    if earlier and fresh:  # an earlier run of another config: kept, and this one is new
        tags["ae_jax.follows"] = earlier[0].info.run_id
        earlier = []
    if earlier:  # a resumed run goes on in the MLflow run it began
        run = earlier[0]
        client.update_run(run.info.run_id, status="RUNNING")
    else:
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    from ae_jax.run_io import write_json_atomic

    record = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run.info.run_id}
    write_json_atomic(workdir / RUN_RECORD, record)
    logger = MlflowLogger(client, run.info.run_id, file_store=_is_file_store(uri))
    if earlier:
        logger._params.update(run.data.params)  # the earlier session's: kept as they are
        logger.resume(run.data.metrics)
    if config:
        logger.log_params(flatten_config(config))
    return logger


RUN_DIR_TAG = "ae_jax.run_dir"  # the run directory an MLflow run belongs to
RUN_RECORD = "mlflow_run.json"  # in the run directory: the MLflow run its sessions log to


def _earlier_run(client: Any, experiment_id: str, workdir: Path, uri: str, own_store: bool):
    """The MLflow run an earlier session of this run directory began (a list of one), or [].

    Found by the id the directory records (``RUN_RECORD``), so that a new run in a directory
    of the same path (the earlier one deleted, its runs kept in a shared store) is a new
    MLflow run: matched by the path alone, it went on in the deleted run's, its epochs skipped
    as logged already and its params kept. A directory's own store (``mlflow.db`` inside
    it), which goes with the directory, is also searched by the path (runs from before the
    record)."""
    import json

    from mlflow.exceptions import MlflowException

    try:
        record = json.loads((workdir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("tracking_uri") == uri and record.get("run_id"):
        try:
            run = client.get_run(str(record["run_id"]))
        except MlflowException:  # the store no longer holds it: a new run
            return []
        return [run] if run.info.lifecycle_stage == "active" else []
    if not own_store:
        return []
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_DIR_TAG}` = '{_quoted(_here(workdir))}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )


def _here(workdir: Path) -> str:
    return str(Path(workdir).resolve())


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores or in memory)."""
    if not uri.startswith("sqlite:///") or uri in ("sqlite:///:memory:", "sqlite://"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?")[0] or ".")


def _check_sqlite_writable(database: Path, uri: str) -> None:
    """MLflow retries a database it cannot open for about two minutes, in 36 lines of
    warnings: a file or folder it cannot write is refused first, in one line."""
    from ae_jax.loggers import LoggerError

    try:
        if database.exists():
            with open(database, "ab"):  # what MLflow will do to it: write
                pass
        else:
            database.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would
            with tempfile.TemporaryFile(dir=database.parent):
                pass
    except OSError as err:
        where = database if database.exists() else database.parent
        raise LoggerError(
            f"logger=mlflow: the store {uri} cannot be written ({err.strerror or err}: "
            f"{where}); give a writable logger.mlflow.tracking_uri, "
            "or leave it unset to log into the run directory's own store (mlflow.db)"
        ) from None


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
