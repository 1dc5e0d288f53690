"""Experiment trackers: TensorBoard, Weights & Biases, MLflow and a live CSV table.

The ``logger`` config group selects any number of them (``logger=tensorboard``, the default;
``'logger=[tensorboard,wandb]'``; ``logger=none``); ``cfg.logger`` is a mapping name ->
settings (``ae_jax.loggers.registry``). The training loop opens them once and feeds them the
run's own records, so every tracker shows exactly the names of ``history.jsonl``::

    loggers = open_loggers(cfg.logger, workdir=workdir, run_name=name, config=resolved,
                           group=sweep_name, main=jax.process_index() == 0)
    try:
        for row in ...:                                   # one history row per epoch
            loggers.log_metrics(row, step=row["epoch"])
        loggers.log_image("reconstructions", workdir / "reconstructions.png", step=epochs)
        loggers.log_hparams(flatten_config(resolved), final_metrics)
    finally:
        loggers.close()

With ``main=False`` (process > 0 of a multi-process run) nothing is opened or written. A tracker
whose library is missing fails at ``open_loggers`` with a ``LoggerError`` that names the pip
extra to install; one that fails later (a full disk, a lost connection) is reported once with a
warning and dropped, so it cannot stop the training run.

This module imports neither JAX nor any tracker library; each tracker's library is imported when
it is opened.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

from ae_jax.loggers.registry import LOGGERS, loggers_settings

__all__ = [
    "LOGGERS",
    "Logger",
    "LoggerError",
    "Loggers",
    "clean_row",
    "flatten_config",
    "image_every",
    "open_loggers",
]

log = logging.getLogger(__name__)


class LoggerError(RuntimeError):
    """A selected logger cannot be opened (its library is missing, its store unreachable, ...);
    the message names the logger and, for a missing library, the pip extra to install."""


class Logger(Protocol):
    """What a factory of ``LOGGERS`` returns."""

    def log_metrics(self, row: dict[str, float], step: int) -> None: ...

    def log_image(self, tag: str, png_path: Path, step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def close(self, status: str = "completed") -> None: ...  # or "failed", "preempted"


def clean_row(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of ``row`` as floats (numpy scalars and 0-d arrays included);
    strings, None, arrays with more than one value, NaN and infinities are left out."""
    out = {}
    for key, value in row.items():
        if isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, numbers.Real):
            size = getattr(value, "size", None)
            if size != 1 or not hasattr(value, "item"):
                continue
            value = value.item()
            if not isinstance(value, numbers.Real):
                continue
        value = float(value)
        if math.isfinite(value):
            out[str(key)] = value
    return out


def flatten_config(config: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """A nested config as one level of dotted keys (``model.latent_dim``), each value a bool,
    int, float or str: None becomes ``"None"``, a list or tuple its ``str`` (``"[64, 32]"``);
    an empty mapping is kept as ``"{}"`` (``reg: {}``: no regulariser)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if not value and prefix:
                out[prefix] = "{}"
            for k, v in value.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        elif isinstance(value, (list, tuple)):
            out[prefix] = str(list(value))
        elif isinstance(value, numbers.Real):  # numpy scalars
            out[prefix] = value.item() if hasattr(value, "item") else float(value)
        else:
            out[prefix] = str(value)

    walk("", config)
    return out


def _to_plain(value: Any) -> Any:
    """OmegaConf containers and dataclasses as plain dicts/lists (anything else unchanged)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


class Loggers:
    """The selected loggers behind one interface; every call goes to each of them.

    Falsy when none is open (``logger=none``, or a non-main process). ``close`` is idempotent.
    """

    def __init__(self, loggers: Mapping[str, Logger] | None = None):
        self._loggers: dict[str, Logger] = dict(loggers or {})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._loggers)

    def __bool__(self) -> bool:
        return bool(self._loggers)

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _each(self, what: str, call, only: Collection[str] | None = None) -> None:
        """``call(logger)`` for each open logger (or each named in ``only``); one that raises is
        dropped with a warning."""
        for name in list(self._loggers):
            if only is not None and name not in only:
                continue
            try:
                call(self._loggers[name])
            except Exception as e:  # a tracker must never stop the training run
                log.warning(
                    "logger %s failed in %s and is dropped: %s: %s", name, what, type(e).__name__, e
                )
                bad = self._loggers.pop(name)
                try:
                    bad.close()
                except Exception:
                    pass

    def flush(self) -> None:
        """What each logger holds in memory to its store (before a checkpoint is saved)."""
        self._each("flush", lambda lg: getattr(lg, "flush", lambda: None)())

    def resumed(self, epoch: int) -> None:
        """The run goes on from its checkpoint of ``epoch``: what a killed session logged
        after it is stale (TensorBoard marks a restart there; the CSV and MLflow replace or
        skip those epochs as they come again)."""
        self._each("resumed", lambda lg: getattr(lg, "resumed", lambda epoch: None)(epoch))

    def stage_resumed(self, stage: str, epoch: int, nested: tuple[str, ...] = ()) -> None:
        """Stage ``stage`` of a multi-stage run goes on from its checkpoint of ``epoch``: what
        a killed session logged for it after that epoch is stale (TensorBoard takes those
        events out of its files; the CSV and MLflow replace or skip them as they come again).
        ``nested``: the stages whose names extend ``stage``, whose rows are not its own."""
        self._each(
            "stage_resumed",
            lambda lg: getattr(lg, "stage_resumed", lambda *a: None)(stage, epoch, nested),
        )

    def log_metrics(self, row: Mapping[str, Any], step: int, stage: str = "") -> None:
        """One history row (``train/loss``, ``eval/mse``, ``epoch``, ``time/elapsed``, ...) at
        ``step`` (the epoch); non-numeric and non-finite values are left out. ``stage``: the
        prefix of a multi-stage run's keys, whose steps start again at 1 in every stage; a
        logger whose steps may only increase (W&B) takes those rows by ``log_stage_metrics``."""
        clean = clean_row(row)
        if not clean:
            return

        def log(lg: Logger) -> None:
            if stage and hasattr(lg, "log_stage_metrics"):
                lg.log_stage_metrics(clean, int(step), stage)
            else:
                lg.log_metrics(clean, int(step))

        self._each("log_metrics", log)

    def log_image(
        self,
        tag: str,
        png_path: str | os.PathLike,
        step: int,
        only: Collection[str] | None = None,
    ) -> None:
        """A PNG the run has written (``reconstructions``, ``training_curves``, ...), to every
        open logger or to those named in ``only``."""
        path = Path(png_path)
        if not self._loggers:
            return
        if not path.is_file():
            log.warning("not logging image %s: %s does not exist", tag, path)
            return
        self._each("log_image", lambda lg: lg.log_image(tag, path, int(step)), only)

    def log_hparams(self, hparams: Any, metrics: Mapping[str, Any]) -> None:
        """The resolved config (nested or flat mapping, a DictConfig or the ``Config``
        dataclass) and the final metrics, once at the end."""
        flat = flatten_config(_to_plain(hparams))
        final = clean_row(metrics)
        self._each("log_hparams", lambda lg: lg.log_hparams(flat, final))

    def close(self, status: str = "completed") -> None:
        """Flush and close every logger (idempotent); ``status`` is how the run ended
        (``completed``, ``failed`` or ``preempted``), which MLflow and W&B record."""
        loggers, self._loggers = self._loggers, {}
        for name, lg in loggers.items():
            try:
                lg.close(status)
            except Exception as e:
                log.warning("logger %s failed to close: %s: %s", name, type(e).__name__, e)


def image_every(settings: Mapping[str, Any] | None) -> dict[str, int]:
    """Every how many epochs each selected logger wants the run's reconstructions: name ->
    ``image_every`` of those of ``settings`` (``cfg.logger``) that ask (> 0). Read from the
    config, so that every process of a multi-process run agrees on it."""
    parsed = loggers_settings(_to_plain(settings) if settings is not None else None)
    return {name: s.image_every for name, s in parsed.items() if getattr(s, "image_every", 0) > 0}


def _takes(function, keyword: str) -> bool:
    """Whether ``function`` accepts the keyword argument ``keyword``."""
    import inspect

    parameters = inspect.signature(function).parameters.values()
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in parameters)


def _missing(name: str, error: ImportError) -> LoggerError:
    entry = LOGGERS.entry(name)
    extra = entry.info.get("extra")
    pkgs = " ".join(entry.info.get("requires", ()))
    how = f"pip install 'ae-jax[{extra}]'" if extra else f"pip install {pkgs}"
    return LoggerError(
        f"logger={name} needs {pkgs or 'a library'} ({error}); install it with {how}, "
        f"or choose another logger (logger=none for none)"
    )


def open_loggers(
    settings: Mapping[str, Any] | None,
    *,
    workdir: str | os.PathLike,
    run_name: str,
    config: Mapping[str, Any] | None = None,
    group: str | None = None,
    main: bool = True,
    fresh: bool = False,
) -> Loggers:
    """Open every logger of ``settings`` (``cfg.logger``: name -> settings) for one run.

    Args:
      settings: name -> settings mapping or dataclass; None or {}: no logger.
      workdir: the run directory; each logger writes under it (``tensorboard/``, ``wandb/``,
        ``mlflow.db``, ``metrics.csv``) unless its settings point elsewhere.
      run_name: the run's display name in the trackers.
      config: the resolved config (nested), sent to W&B's config and MLflow's params.
      group: groups a sweep's runs (W&B group, MLflow tag ``group``, TensorBoard: none needed,
        each run is its own directory).
      main: False on processes > 0 of a multi-process run: nothing is opened or written.
      fresh: the run directory holds an earlier run of another config, which this one reuses
        in part (a layer-wise run whose last stages train again): each tracker begins a new
        run of its own (a new MLflow run, a new W&B run id, TensorBoard's earlier events moved
        to ``tensorboard/before-<time>/``) and keeps the earlier one as it was.

    Raises:
      ae_jax.registry.ConfigError: an unknown logger or setting.
      LoggerError: a logger's library is missing or it cannot be opened.
    """
    parsed = loggers_settings(_to_plain(settings) if settings is not None else None)
    if not main or not parsed:
        return Loggers()
    workdir = Path(workdir)
    config = dict(_to_plain(config) or {})
    opened: dict[str, Logger] = {}
    try:
        for name, s in parsed.items():
            try:
                factory = LOGGERS.get(name)
                extra = {"fresh": True} if fresh and _takes(factory, "fresh") else {}
                opened[name] = factory(
                    s, workdir=workdir, run_name=run_name, config=config, group=group, **extra
                )
            except ImportError as e:
                raise _missing(name, e) from e
            except LoggerError:
                raise
            except Exception as e:
                said = " ".join(str(e).split())  # one line: W&B's errors span several
                raise LoggerError(
                    f"logger={name} could not be opened in {workdir}: {type(e).__name__}: {said}"
                ) from e
    except BaseException:
        Loggers(opened).close()
        raise
    return Loggers(opened)
