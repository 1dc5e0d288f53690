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

    runs = collect_runs("multirun/2026-11-26/16-30-00_sweep_latent")
    axes = swept_axes(runs)          # [Axis(keys=('model.latent_dim',))]
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SEED_KEYS = ("trainer.seed",)
# Keys that change how a run reports progress, not what it learns: never an axis.
IGNORED_KEYS = ("trainer.progress", "trainer.figures", "trainer.log_every")
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
        status, error = "unfinished", "status.json says running: killed, or still running"
    elif state not in (None, "completed"):
        status, error = "failed", f"unknown status {state!r} in status.json"
    elif metrics:  # completed, or no readable status.json but the run got to its metrics
        status, error = "completed", None
    elif state == "completed" or metrics_error:
        status, error = "failed", metrics_error or "status completed but no metrics.json"
    elif status_error:
        status, error = "failed", status_error
    else:
        status, error = "unfinished", "no status.json and no metrics.json: never got far"
    return Run(path, status, error, config, metrics if status == "completed" else {}, overrides)


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
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(multirun_yaml)
    sweeper = OmegaConf.select(cfg, "hydra.sweeper", default=None)
    if sweeper is None or not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return []
    params = OmegaConf.to_container(sweeper.get("params") or {}, resolve=False)
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


def _not_started(sweep_dir: Path, job: tuple[str, ...]) -> Run:
    """A placeholder for a grid job that has no directory: its config holds what it overrides."""
    config = {}
    for item in job:
        key, _, value = item.partition("=")
        config[key.lstrip("+~")] = _value_from_override(value)
    return Run(
        sweep_dir,
        "not started",
        "job of the sweep's grid has no run directory",
        config,
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


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, float) and math.isnan(value) else value


def swept_axes(runs: list[Run], seed_keys: tuple[str, ...] = SEED_KEYS) -> list[Axis]:
    """The axes of a sweep: keys that differ across runs (seeds and IGNORED_KEYS excluded).

    Only runs with a full config decide (a ``not started`` placeholder knows its overrides
    alone). Keys whose values split the runs identically are merged into one axis, numeric
    keys first so that plots can use them as the x value.
    """
    known = [r for r in runs if r.status != "not started" and r.config] or runs
    keys = sorted({k for r in known for k in r.config})
    skip = set(seed_keys) | set(IGNORED_KEYS)
    varying = [
        k for k in keys if k not in skip and len({_hashable(r.config.get(k)) for r in known}) > 1
    ]
    groups: dict[tuple, list[str]] = {}
    for k in varying:
        groups.setdefault(_partition(known, k), []).append(k)

    def numeric_first(k: str) -> tuple:
        numeric = all(_is_number(r.config.get(k)) for r in known)
        return (not numeric, k)

    axes = [Axis(tuple(sorted(ks, key=numeric_first))) for ks in groups.values()]
    return sorted(axes, key=lambda a: a.keys)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
