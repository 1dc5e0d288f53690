"""The logger registry: the one list of experiment-tracker names and their settings.

``cfg.logger`` is a mapping name -> settings, one entry per option file of ``conf/logger/``
selected on the command line (``logger=tensorboard``, ``'logger=[tensorboard,wandb]'``,
``logger=none``: the empty mapping). Each name is registered in ``LOGGERS`` with its settings
dataclass and a ``"module:function"`` factory that is imported only when the logger is opened,
so this module (and the config schema that reads it) imports neither JAX nor tensorboardX,
wandb or mlflow.

A factory is called as ``factory(settings, workdir=..., run_name=..., config=..., group=...)``
and returns an object with ``log_metrics(row, step)``, ``log_image(tag, png_path, step)``,
``log_hparams(hparams, metrics)`` and ``close()`` (see ``ae_jax.loggers.Logger``). A factory
that takes ``fresh`` gets ``fresh=True`` when the run directory holds an earlier run of another
config that this one goes on from (a layer-wise run whose last stages train again): it should
begin a new tracker run rather than go on in the earlier one, and keep that one as it is.

Adding a tracker is one settings dataclass, one factory and one file
``conf/logger/<name>.yaml`` holding ``<name>: {...settings...}``::

    @dataclasses.dataclass
    class NeptuneSettings:
        project: str = "ae-jax"

    LOGGERS.register("neptune", "my_pkg.neptune_logger:open_neptune",
                     config=NeptuneSettings, extra="trackers", requires=("neptune",))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ae_jax.registry import ConfigError, Registry, entry_settings

__all__ = [
    "LOGGERS",
    "CsvSettings",
    "MlflowSettings",
    "TensorBoardSettings",
    "WandbSettings",
    "logger_settings",
    "loggers_settings",
]

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _check_every(prefix: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(
            f"{prefix}.image_every={value!r} is not valid; it must be an integer >= 0 "
            "(0: the run's figures at the end only)"
        )


@dataclasses.dataclass
class TensorBoardSettings:
    """Event files in ``<run dir>/tensorboard/`` (tensorboardX, no TensorFlow)."""

    flush_secs: int = 10  # how often the writer flushes pending events to disk
    image_every: int = 0  # > 0: the run also logs reconstructions every N epochs
    hparams: bool = True  # write the HParams-tab summary (config + final metrics) at the end

    def check(self, prefix: str) -> None:
        if not isinstance(self.hparams, bool):
            raise ConfigError(f"{prefix}.hparams={self.hparams!r} is not valid; give true or false")
        bad = isinstance(self.flush_secs, bool) or not isinstance(self.flush_secs, int)
        if bad or self.flush_secs < 1:
            raise ConfigError(
                f"{prefix}.flush_secs={self.flush_secs!r} is not valid; it must be an "
                "integer >= 1 (seconds)"
            )
        _check_every(prefix, self.image_every)


@dataclasses.dataclass
class WandbSettings:
    """Weights & Biases; offline (``<run dir>/wandb/offline-run-*``) unless logged in."""

    project: str = "ae-jax"
    entity: str | None = None  # team or user; None: the account's default
    # auto: online when WANDB_API_KEY is set or ~/.netrc holds a login for W&B's server,
    # offline otherwise (WANDB_MODE, when set, wins); online, offline, disabled
    mode: str = "auto"
    tags: list[str] = dataclasses.field(default_factory=list)
    notes: str | None = None
    image_every: int = 0

    def check(self, prefix: str) -> None:
        if self.mode not in WANDB_MODES:
            raise ConfigError(
                f"{prefix}.mode={self.mode!r} is not valid; choose one of: {', '.join(WANDB_MODES)}"
            )
        if isinstance(self.tags, str) or not all(isinstance(t, str) for t in self.tags):
            raise ConfigError(  # a string is a list of its letters to W&B: tags f, o, o
                f"{prefix}.tags={self.tags!r} is not valid; give a list of names, e.g. "
                f"'{prefix}.tags=[baseline,digits]'"
            )
        _check_every(prefix, self.image_every)


@dataclasses.dataclass
class MlflowSettings:
    """MLflow; a SQLite store ``<run dir>/mlflow.db`` unless a tracking URI is given."""

    # None: $MLFLOW_TRACKING_URI when set, else sqlite:///<run dir>/mlflow.db (artifacts in
    # <run dir>/mlartifacts)
    tracking_uri: str | None = None
    experiment: str = "ae-jax"  # MLflow experiment name (created when missing)
    image_every: int = 0

    def check(self, prefix: str) -> None:
        if not self.experiment:
            raise ConfigError(f"{prefix}.experiment must be a non-empty name")
        _check_every(prefix, self.image_every)


@dataclasses.dataclass
class CsvSettings:
    """``<run dir>/<filename>``: one row per epoch, rewritten as the run goes (a live table)."""

    filename: str = "metrics.csv"

    def check(self, prefix: str) -> None:
        name = self.filename
        plain = isinstance(name, str) and "/" not in name and name.endswith(".csv")
        if not plain or name in ("history.csv", ".csv"):  # the run writes history.csv itself
            raise ConfigError(
                f"{prefix}.filename={name!r} is not valid; give a plain file name ending in "
                ".csv, other than history.csv (which the run writes at the end)"
            )


LOGGERS = Registry("logger")
LOGGERS.register(
    "tensorboard",
    "ae_jax.loggers._tensorboard:open_tensorboard",
    config=TensorBoardSettings,
    extra="tensorboard",
    requires=("tensorboardX",),
)
LOGGERS.register(
    "wandb",
    "ae_jax.loggers._wandb:open_wandb",
    config=WandbSettings,
    extra="trackers",
    requires=("wandb",),
)
LOGGERS.register(
    "mlflow",
    "ae_jax.loggers._mlflow:open_mlflow",
    config=MlflowSettings,
    extra="trackers",
    requires=("mlflow",),
)
LOGGERS.register("csv", "ae_jax.loggers._csv:open_csv", config=CsvSettings, requires=())


def logger_settings(name: str, value: Any, prefix: str = "logger") -> Any:
    """``value`` (a mapping, the dataclass or None) as logger ``name``'s settings dataclass,
    checked; ConfigError naming the registered loggers or the valid settings otherwise."""
    if name not in LOGGERS:
        raise ConfigError(
            f"{prefix}.{name} is not a registered logger; registered: "
            f"{', '.join(LOGGERS.names())} (or logger=none)"
        )
    value = entry_settings(LOGGERS, name, value, prefix, "logger")
    value.check(f"{prefix}.{name}")
    return value


def loggers_settings(value: Any, prefix: str = "logger") -> dict[str, Any]:
    """``cfg.logger`` (a mapping name -> settings, or None) as name -> settings dataclass."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{prefix}={value!r} is not valid; give a mapping logger name -> settings, e.g. "
            "'logger=[tensorboard,wandb]' on the command line"
        )
    return {str(name): logger_settings(str(name), v, prefix) for name, v in value.items()}
