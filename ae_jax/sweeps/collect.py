"""Reading a sweep back from disk: its runs, their status and metrics, and the swept axes.

A run is any directory holding ``config.yaml`` (the resolved ae_jax config) or ``.hydra/``
(Hydra's record of the job), found recursively under the root you give (one that holds other
runs below it is only their container). Nothing is dropped:

- a run whose ``status.json`` says ``failed`` keeps its error message;
- a run still marked ``running`` (killed, or still going) is ``unfinished``;
- where a ``multirun.yaml`` describes a basic-sweeper grid, every job of the grid that has no
  directory is added as ``not started`` (a sweep stops after a job raises, so later jobs may
  never have run), with the swept values its overrides name.

The swept axes are the config keys whose values differ across runs, seeds excluded; keys that
always change together (e.g. ``model=shallow`` vs ``mlp`` moves depth and code activation at
once) form one axis, since their effects cannot be told apart.

A hyperparameter search (Hydra's Optuna sweeper) is read as a ``Study`` by ``find_study``: its
searched parameters, each trial's values and score, and the best trial.

    runs = collect_runs("multirun/2026-11-26/16-30-00_sweep_latent")
    axes = swept_axes(runs)          # [Axis(keys=('model.latent_dim',))]
    study = find_study(root, runs)   # None for a grid sweep
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SEED_KEYS = ("trainer.seed",)
# Keys that change how a run reports progress, not what it learns: never an axis.
# how a run is shown, checkpointed and resumed, never what it computes: no axis of a sweep
IGNORED_KEYS = (
    "trainer.progress",
    "trainer.figures",
    "trainer.log_every",
    "trainer.resume",
    "trainer.checkpoint_every",
    "trainer.checkpoint_seconds",
    "trainer.keep_checkpoints",
    "trainer.restart_if_corrupt",
)
STATUSES = ("completed", "failed", "unfinished", "not started")


class SweepDirError(ValueError):
    """The directory given holds no run; the message names it and what a run directory holds."""


@dataclass
class Run:
    """One job of a sweep as found on disk.

    ``config`` is flat (``{"model.latent_dim": 8, ...}``, lists as tuples so values hash);
    ``metrics`` holds the finite and non-finite floats of ``metrics.json`` (empty unless
    completed); ``status`` is one of ``STATUSES``.
    """

    path: Path
    status: str
    error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    @property
    def reconstructions(self) -> Path | None:
        p = self.path / "reconstructions.npz"
        return p if self.status == "completed" and p.is_file() else None


@dataclass(frozen=True)
class Axis:
    """A swept axis: one config key, or several that always changed together."""

    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return " / ".join(self.keys)

    def value(self, run: Run) -> Any:
        """The run's value on this axis: a scalar for one key, a tuple for several."""
        values = tuple(run.config.get(k) for k in self.keys)
        return values[0] if len(values) == 1 else values


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys; lists become tuples (hashable, comparable)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list):
        tree = tuple(tuple(v) if isinstance(v, list) else v for v in tree)
    return {prefix[:-1]: tree}


def _read_config(path: Path) -> dict[str, Any]:
    """The run's flat config: ``config.yaml`` if written, else Hydra's ``.hydra/config.yaml``
    (present even when the run failed validation before writing its own)."""
    from omegaconf import OmegaConf

    for candidate in (path / "config.yaml", path / ".hydra" / "config.yaml"):
        if not candidate.is_file():
            continue
        try:
            cfg = OmegaConf.load(candidate)
        except Exception:  # a half-written or foreign file: try the next source
            continue
        try:
            tree = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # e.g. ${oc.env:...} of a variable unset here
            tree = OmegaConf.to_container(cfg, resolve=False)
        tree.pop("hydra", None)
        return flatten(tree)
    return {}


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # run_io writes non-finite floats as "nan" / "inf"
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as err:
        return None, f"unreadable {path.name}: {err}"


def load_run(path: str | os.PathLike) -> Run:
    """Read one run directory; never raises for a missing or broken file (it becomes the error)."""
    path = Path(path)
    config = _read_config(path)
    overrides: tuple[str, ...] = ()
    if (path / ".hydra" / "overrides.yaml").is_file():
        try:
            overrides = tuple(
                yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()) or ()
            )
        except yaml.YAMLError:
            pass
    config.update(_group_choices(path, config))
    metrics: dict[str, float] = {}
    metrics_error = None
    if (path / "metrics.json").is_file():
        raw, metrics_error = _read_json(path / "metrics.json")
        if isinstance(raw, dict):
            metrics = {k: f for k, v in raw.items() if (f := _to_float(v)) is not None}
    status_raw, status_error = None, None
    if (path / "status.json").is_file():
        status_raw, status_error = _read_json(path / "status.json")
    state = status_raw.get("status") if isinstance(status_raw, dict) else None
    error = status_raw.get("error") if isinstance(status_raw, dict) else status_error

    if state == "failed":
        status, error = "failed", error or "failed (no error recorded)"
    elif state == "running":
        status, error = "unfinished", running_or_stopped(path)
    elif state in ("preempted", "interrupted"):  # SIGTERM / Ctrl-C: checkpointed, resumable
        said = str(status_raw.get("message") or "stopped")
        resumes = "" if "resume" in said else "; the same command resumes it"
        status, error = "unfinished", f"{state}: {said}{resumes}"
    elif state not in (None, "completed"):
        status, error = "failed", f"unknown status {state!r} in status.json"
    elif metrics:  # completed, or no readable status.json but the run got to its metrics
        status, error = "completed", None
    elif state == "completed" or metrics_error:
        found = (path / "metrics.json").is_file()
        said = "metrics.json holds no metric" if found else "no metrics.json"
        status, error = "failed", metrics_error or f"status completed but {said}"
    elif status_error:
        status, error = "failed", status_error
    else:
        status, error = "unfinished", "no status.json and no metrics.json: never got far"
    return Run(path, status, error, config, metrics if status == "completed" else {}, overrides)


def _group_choices(path: Path, config: dict[str, Any]) -> dict[str, str]:
    """The run's config-group choices (``model: shallow``), from Hydra's record of the job,
    under the group's own key: a sweep over ``model=mlp,shallow`` is then an axis named
    ``model`` with those values, not the keys the two files happen to set differently. Only
    groups whose config node the flat config holds (``model.*``); Hydra's own are left out."""
    try:
        record = yaml.safe_load((path / ".hydra" / "hydra.yaml").read_text())
        choices = record["hydra"]["runtime"]["choices"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    if not isinstance(choices, dict):
        return {}
    return {
        group: choice
        for group, choice in choices.items()
        if isinstance(group, str)
        and isinstance(choice, str)
        and group not in config
        and any(k.startswith(f"{group}.") for k in config)
    }


def running_or_stopped(path: Path) -> str:
    """What a run whose status.json says running is doing, read from the holder its lock
    records ("pid N on HOST", ``ae_jax.training.rundir.hold_lock``) without taking the lock."""
    import socket

    from ae_jax.training.rundir import RunDir

    try:
        holder = (path / RunDir.LOCK).read_text().split()
        pid, host = int(holder[1]), holder[3]
    except (OSError, ValueError, IndexError):
        return "status.json says running, and no process is recorded: stopped, or still starting"
    if host != socket.gethostname():
        return f"status.json says running, in pid {pid} on {host} (cannot be checked from here)"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return (
            f"stopped without a word (its process, pid {pid}, is gone: killed?); the same "
            "command resumes it from its last checkpoint"
        )
    except PermissionError:
        pass  # alive, another user's
    return f"still running (pid {pid})"


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """Directories under root (root included) holding ``config.yaml`` or ``.hydra/``.

    Hidden directories (``.hydra``, ``.submitit``) are not searched. A directory that holds
    further run directories below it is their container, not a run: one job that trains
    several members (and writes a directory per member) reports its members.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "config.yaml" in filenames or ".hydra" in dirnames:
            found.append(Path(dirpath))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    containers = {parent for p in found for parent in p.parents}
    return sorted((p for p in found if p not in containers), key=_natural_key)


def _natural_key(path: Path) -> tuple:
    """Sort job 10 after job 9."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def expected_jobs(multirun_yaml: str | os.PathLike) -> list[tuple[str, ...]]:
    """The override lists of every job of a basic-sweeper grid, as Hydra itself expands them.

    Returns [] when the file describes another sweeper (whose jobs cannot be known in advance).
    """
    from omegaconf import OmegaConf

    return grid_jobs(OmegaConf.load(multirun_yaml))


def grid_jobs(cfg: Any) -> list[tuple[str, ...]]:
    """``expected_jobs`` of a sweep's config (its ``multirun.yaml``, or the config Hydra hands
    a multirun's callbacks before the sweeper starts)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    sweeper = OmegaConf.select(cfg, "hydra.sweeper", default=None)
    if sweeper is None or not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return []
    params = sweeper.get("params")  # None, or {} when the grid is all on the command line
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    task = list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or [])
    # Same order as BasicSweeper.sweep: the config's params, then the command line's overrides.
    args = [f"{k}={v}" for k, v in params.items()] + task
    overrides = OverridesParser.create().parse_overrides(args)
    batches = BasicSweeper.split_arguments(overrides, None)
    return [tuple(job) for batch in batches for job in batch]


def _value_from_override(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def override_values(job) -> dict[str, Any]:
    """A job's overrides (``key=value`` texts) as {key: value}, the values read as YAML (so
    0.10 is 0.1), the ``+`` / ``~`` prefixes dropped."""
    values = {}
    for item in job:
        key, _, value = str(item).partition("=")
        values[key.lstrip("+~")] = _value_from_override(value)
    return values


def _not_started(sweep_dir: Path, job: tuple[str, ...]) -> Run:
    """A placeholder for a grid job that has no directory: its config holds what it overrides."""
    return Run(
        sweep_dir,
        "not started",
        "job of the sweep's grid has no run directory",
        override_values(job),
        {},
        tuple(job),
    )


def collect_runs(root: str | os.PathLike) -> list[Run]:
    """Every run under root, plus a ``not started`` run for each missing job of each grid.

    Raises:
      SweepDirError: if root is not a directory or holds neither runs nor a ``multirun.yaml``.
    """
    root = Path(root)
    if not root.is_dir():
        raise SweepDirError(f"sweep directory {str(root)!r} does not exist or is not a directory")
    if root.name == ".hydra":  # Hydra's record of a job, read as a run of its own
        raise SweepDirError(
            f"{str(root)!r} is Hydra's record of the run in {str(root.parent)!r}: give that "
            "directory (or the sweep's)"
        )
    runs = [load_run(p) for p in find_run_dirs(root)]
    for multirun_yaml in sorted(root.rglob("multirun.yaml")):
        sweep_dir = multirun_yaml.parent
        try:
            jobs = expected_jobs(multirun_yaml)
        except Exception:  # an unparsable grid: report what is on disk, as always
            continue
        present = {frozenset(r.overrides) for r in runs if sweep_dir in r.path.parents}
        runs += [_not_started(sweep_dir, j) for j in jobs if frozenset(j) not in present]
    if not runs:
        raise SweepDirError(
            f"no run found under {str(root)!r}: a run directory holds config.yaml or .hydra/ "
            "(give a Hydra multirun directory, e.g. multirun/<date>/<time>_<name>)"
        )
    return runs


def _partition(runs: list[Run], key: str) -> tuple:
    """Which runs share a value of key, as a canonical tuple of group ids."""
    ids: dict[Any, int] = {}
    return tuple(ids.setdefault(_hashable(r.config.get(key)), len(ids)) for r in runs)


def _follows(runs: list[Run], choice: str, key: str) -> bool:
    """Whether every run of one value of ``choice`` has one value of ``key``."""
    seen: dict[Any, Any] = {}
    for r in runs:
        value = _hashable(r.config.get(key))
        if seen.setdefault(_hashable(r.config.get(choice)), value) != value:
            return False
    return True


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, float) and math.isnan(value) else value


def swept_axes(runs: list[Run], seed_keys: tuple[str, ...] = SEED_KEYS) -> list[Axis]:
    """The axes of a sweep: keys that differ across runs (seeds and IGNORED_KEYS excluded).

    Only runs with a full config decide (a ``not started`` placeholder knows its overrides
    alone). Keys whose values split the runs identically are merged into one axis, numeric
    keys first so that plots can use them as the x value.
    """
    known = [r for r in runs if r.status != "not started" and r.config] or runs
    # The keys every placeholder overrides are its grid's: they are compared over all the
    # runs (a sweep stopped in its first job has one run that started and a grid of them).
    waiting = [r for r in runs if r.status == "not started" and r.config]
    gridded = set.intersection(*(set(r.config) for r in waiting)) if waiting else set()
    gridded &= set.intersection(*(set(r.config) for r in known))

    def over(k: str) -> list:
        return runs if k in gridded else known

    keys = sorted({k for r in known for k in r.config})
    skip = set(seed_keys) | set(IGNORED_KEYS)
    varying = [
        k for k in keys if k not in skip and len({_hashable(r.config.get(k)) for r in over(k)}) > 1
    ]
    # A config group's choice (model=linear,mlp,shallow) decides what its files set: a key
    # whose value follows from the choice (model.depth: 0, 2, 0; optim.lr, which model=linear
    # selects its own of) is part of the choice's axis, however it splits the runs, not an
    # axis of its own. Choices with more values decide first (model decides optim=adam_pca).
    # (a group's choice has its config node beside it, model.*: a top-level value such as
    # `name`, which differs between two sweeps reported together, decides nothing)
    nodes = {k.split(".", 1)[0] for r in known for k in r.config if "." in k}
    choices = sorted(
        (k for k in varying if "." not in k and k in nodes),
        key=lambda g: (-len({_hashable(r.config.get(g)) for r in known}), g),
    )
    decided: set[str] = set()
    for g in choices:
        if g not in decided:
            decided |= {k for k in varying if k != g and _follows(known, g, k)}
    varying = [k for k in varying if k not in decided]
    groups: dict[tuple, list[str]] = {}
    for k in varying:
        groups.setdefault((k in gridded, _partition(over(k), k)), []).append(k)

    def numeric_first(k: str) -> tuple:
        numeric = all(_is_number(r.config.get(k)) for r in over(k))
        return (not numeric, k)

    def named(ks: list[str]) -> tuple[str, ...]:
        """A config-group choice and the keys its files set differently are one axis, named
        by the group (``model``: mlp, shallow)."""
        for group in ks:
            if all(k == group or k.startswith(f"{group}.") for k in ks):
                return (group,)
        return tuple(sorted(ks, key=numeric_first))

    axes = [Axis(named(ks)) for ks in groups.values()]
    return sorted(axes, key=lambda a: a.keys)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- hyperparameter searches (Hydra's Optuna sweeper) ---------------------------------------
#
# An Optuna sweep directory holds ordinary job directories (one per trial, numbered by Hydra's
# job number, each with .hydra/overrides.yaml and metrics.json) and, once the search finished,
# the sweeper's ``optimization_results.yaml`` (best_params, best_value). The searched
# parameters take a new value in every trial, so they are no grid axes: ``find_study`` reads
# them as a study instead.

STUDY_RESULTS = "optimization_results.yaml"
# The search's record, written by the multirun (ae_jax.cli.record_search): ``params``, what it
# sampled (the sweep file's params as the command line changed them; key -> the sweeper's text
# for it), and ``sampler_seed``.
SEARCH_RECORD = "search.yaml"


@dataclass(frozen=True)
class SearchParam:
    """One searched parameter: its key, the sweeper's text for it, and its search space."""

    key: str
    spec: str  # as given to the sweeper, e.g. "tag(log, interval(1e-4, 1e-1))"
    log: bool = False  # sampled on a log scale
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None  # a categorical parameter

    def describe(self) -> str:
        """``log-uniform in [0.0001, 0.1]``, ``one of shallow, mlp``, or the sweeper's text."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            kind = "log-uniform" if self.log else "uniform"
            return f"{kind} in [{self.low:g}, {self.high:g}]"
        return self.spec


@dataclass
class Trial:
    """One trial of a study: Hydra's job number, its run, its parameter values and its score
    (nan when the run did not complete or has no such metric)."""

    number: int
    run: Run
    params: dict[str, Any]
    value: float


@dataclass
class Study:
    """A hyperparameter search found under a sweep directory (see ``find_study``)."""

    score: str  # the metrics.json key the trials returned to the sweeper
    direction: str  # minimize | maximize
    params: list[SearchParam]
    trials: list[Trial]  # by trial number
    sampler: str | None = None  # e.g. TPESampler
    n_trials: int | None = None
    n_jobs: int | None = None  # trials proposed (and launched) at once
    results: dict | None = None  # the sweeper's optimization_results.yaml, when written
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> list[Trial]:
        return [t for t in self.trials if math.isfinite(t.value)]

    @property
    def best(self) -> Trial | None:
        """The trial with the best score; where the sweeper wrote its best_value, the trial
        that has it (they agree unless runs were changed after the search)."""
        done = self.completed
        if not done:
            return None
        pick = max if self.direction == "maximize" else min
        best = pick(done, key=lambda t: t.value)
        reported = _to_float((self.results or {}).get("best_value"))
        if reported is not None and not math.isclose(best.value, reported, rel_tol=1e-9):
            same = [t for t in done if math.isclose(t.value, reported, rel_tol=1e-9)]
            return same[0] if same else best
        return best


def _sweeper_config(runs: list[Run]) -> dict | None:
    """``hydra.sweeper`` of the first run that recorded Hydra's config (.hydra/hydra.yaml)."""
    for run in runs:
        path = run.path / ".hydra" / "hydra.yaml"
        if run.status == "not started" or not path.is_file():
            continue
        try:
            record = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        sweeper = (record.get("hydra") or {}).get("sweeper")
        return sweeper if isinstance(sweeper, dict) else None
    return None


def search_param(key: str, spec: Any) -> SearchParam | None:
    """The search space the sweeper reads from ``key=spec`` (Hydra's override grammar:
    ``tag(log, interval(a, b))``, ``interval``, ``range``, ``choice``); None for a fixed value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    try:
        override = OverridesParser.create().parse_override(f"{key}={spec}")
    except Exception:  # not Hydra's grammar: keep the text
        return SearchParam(key, str(spec))
    if not override.is_sweep_override():
        return None
    value = override.value()
    log = "log" in getattr(value, "tags", set())
    if isinstance(value, IntervalSweep):
        return SearchParam(key, str(spec), log, float(value.start), float(value.end))
    if isinstance(value, RangeSweep):
        return SearchParam(key, str(spec), log, float(value.start), float(value.stop))
    if isinstance(value, ChoiceSweep):
        return SearchParam(key, str(spec), log, choices=tuple(value.list))
    return SearchParam(key, str(spec), log)


def read_search_record(root: str | os.PathLike) -> dict | None:
    """``<root>/search.yaml`` (``SEARCH_RECORD``), or None where it is missing or broken."""
    try:
        loaded = yaml.safe_load((Path(root) / SEARCH_RECORD).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _within(param: SearchParam, values: list[Any]) -> bool:
    """Whether every numeric value lies in ``param``'s range (a choice: is one of them)."""
    if param.choices is not None:
        allowed = {repr(c) for c in param.choices} | {str(c) for c in param.choices}
        return all(v is None or repr(v) in allowed or str(v) in allowed for v in values)
    if param.low is None or param.high is None:
        return True
    slack = 1e-9 * max(abs(param.low), abs(param.high))
    return all(not _is_number(v) or param.low - slack <= v <= param.high + slack for v in values)


def _override_values(run: Run) -> dict[str, Any]:
    out = {}
    for item in run.overrides:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = _number_or_value(value)
    return out


def _number_or_value(text: str) -> Any:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return _value_from_override(text)


def sweeps_of(root: str | os.PathLike, runs: list[Run]) -> list[Path]:
    """The sweep directories (``rundir.is_sweep_dir``) that ``runs`` under ``root`` belong to:
    the nearest one above each run, up to ``root``; a run in none adds ``root`` itself."""
    from ae_jax.training.rundir import is_sweep_dir

    root = Path(root)
    found: dict[Path, None] = {}
    for run in runs:
        home = root
        for parent in run.path.parents:
            if parent == root or root not in parent.parents:
                break
            if is_sweep_dir(parent):
                home = parent
                break
        found[home] = None
    return list(found)


def find_study(root: str | os.PathLike, runs: list[Run]) -> Study | None:
    """The hyperparameter search under ``root``, or None for a grid sweep.

    A study is recognised by the Optuna sweeper's ``optimization_results.yaml`` or by the
    sweeper recorded in a run's ``.hydra/hydra.yaml`` (``hydra.sweeper._target_`` names
    optuna; a search still running or interrupted has no results file yet). The searched
    parameters are the sweeper's ``params`` that are searches, plus any key that the trials'
    overrides set to a different value in each (a search given on the command line). Each
    trial's score is its metrics.json value of the run's ``score`` (auto: val/mse with a
    validation split, else test/mse; see ae_jax.config.score_key).
    """
    from ae_jax.config import resolve_score

    root = Path(root)
    if len(sweeps_of(root, runs)) > 1:  # several sweeps' runs: no one study (report.py says so)
        return None
    results, results_path = None, None
    for path in sorted(root.rglob(STUDY_RESULTS)):
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict) and loaded.get("name") == "optuna":
            results, results_path = loaded, path
            break
    sweeper = _sweeper_config(runs)
    is_optuna = sweeper is not None and "optuna" in str(sweeper.get("_target_", "")).lower()
    if not is_optuna and results is None:
        return None
    sweeper = sweeper if is_optuna else {}
    trial_runs = [r for r in runs if r.status != "not started"]

    given = [_override_values(r) for r in trial_runs]
    recorded = (read_search_record(root) or {}).get("params")
    recorded = recorded if isinstance(recorded, dict) else None
    params: list[SearchParam] = []
    for key, spec in (recorded if recorded is not None else sweeper.get("params") or {}).items():
        if (p := search_param(str(key).lstrip("+"), spec)) is None:
            continue
        if recorded is None and not _within(p, [g.get(p.key) for g in given]):
            # a sweep run before search.yaml was written, its range replaced on the
            # command line: the sweep file's range is not what was searched
            p = SearchParam(p.key, "(command line)", p.log)
        params.append(p)
    known = {p.key for p in params}
    for key in sorted({k for g in given for k in g} - known):
        values = [g.get(key) for g in given]
        if len(trial_runs) > 1 and len({repr(v) for v in values}) == len(values):
            numbers = [v for v in values if _is_number(v)]
            log = len(numbers) == len(values) and min(numbers) > 0
            log = log and max(numbers) / min(numbers) >= 10
            params.append(SearchParam(key, "(command line)", log))
    for key in (results or {}).get("best_params") or {}:
        if key not in {p.key for p in params}:
            params.append(SearchParam(str(key), "(optimization_results.yaml)"))

    scores = Counter(
        resolve_score(r.config.get("score"), r.config.get("data.validation")) for r in trial_runs
    )
    score = scores.most_common(1)[0][0] if scores else "test/mse"
    trials = []
    for i, run in enumerate(trial_runs):
        # "3-fresh-<time>": trial 3 trained again beside the earlier one (trainer.resume=false)
        head = run.path.name.partition("-fresh-")[0]
        number = int(head) if head.isdigit() else i
        values = given[i]
        chosen = {
            p.key: run.config[p.key] if p.key in run.config else values.get(p.key) for p in params
        }
        value = run.metrics.get(score, math.nan) if run.status == "completed" else math.nan
        trials.append(Trial(number, run, chosen, value))
    trials.sort(key=lambda t: t.number)

    direction = sweeper.get("direction", "minimize")
    if isinstance(direction, list):
        direction = direction[0] if direction else "minimize"
    sampler = (sweeper.get("sampler") or {}).get("_target_")
    study = Study(
        score=score,
        direction=str(direction).lower(),
        params=params,
        trials=trials,
        sampler=str(sampler).rsplit(".", 1)[-1] if sampler else None,
        n_trials=sweeper.get("n_trials"),
        n_jobs=sweeper.get("n_jobs"),
        results=results,
    )
    if len(scores) > 1:
        study.notes.append(
            "the trials were scored on different keys ("
            + ", ".join(sorted(scores))
            + f"); shown: {score}"
        )
    if results is None:
        study.notes.append(
            f"no {STUDY_RESULTS}: the search did not finish (or ran elsewhere); "
            "best trial taken from the runs"
        )
    elif results_path is not None and results_path.parent != root:
        study.notes.append(f"the sweeper's results: {results_path}")
    return study
