"""Feature extraction from a trained run: load it, embed data, reconstruct, probe the codes.

    run = load_run("outputs/2026-11-26/16-11-17_autoencoder")
    codes = embed(run, x)                  # (N, k), deterministic: the clean encoder, no noise
    x_hat = reconstruct(run, x)            # (N, *example_shape), in data space
    z_train, y_train, z_test, y_test = embed_dataset(run)   # the run's own dataset, both splits
    probe_report(z_train, z_test, data)    # probe/error_pct, probe/raw/..., probe/pca/...

A run directory is what ``ae_jax.train.train_and_evaluate`` (or the pretraining pipeline)
writes: ``config.yaml`` and ``params.msgpack``, plus ``run.json`` (example shape and output
activation) when the writer recorded it; without ``run.json`` those are recovered by loading the
run's dataset. The codes are what a downstream model should see: the encoder's output on clean
inputs (after k-sparsification for k-sparse runs), never corrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ae_jax.chunks import map_in_chunks
from ae_jax.config import Config, ConfigError, load_config
from ae_jax.data import Dataset, load_dataset
from ae_jax.models import build_model, resolve_output_activation
from ae_jax.training.objective import Objective, build_objective
from ae_jax.training.rundir import RUN_INFO
from ae_jax.training.state import jit_initializer

log = logging.getLogger("ae_jax")

CONFIG_FILE = "config.yaml"
PARAMS_FILE = "params.msgpack"
CHUNK = 4096  # examples per compiled call (one compilation, bounded memory)


class RunError(ValueError):
    """A run directory or the data given to it is unusable; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run, ready to embed and reconstruct."""

    path: Path
    cfg: Config
    params: Any
    objective: Objective
    example_shape: tuple[int, ...]

    @property
    def latent_dim(self) -> int:
        return int(self.cfg.model.latent_dim)


def run_info(data: Dataset, output_activation: str, devices: dict | None = None) -> dict:
    """What ``load_run`` needs beyond config.yaml and the params, as written to ``run.json``,
    and the devices the run's latest session trained on (``devices``: their count, platform
    and parallel mode; a vectorised group's members and mesh)."""
    return {
        "example_shape": list(data.example_shape),
        "output_activation": output_activation,
        "low": float(data.x_train.min()),
        "high": float(data.x_train.max()),
        "dataset": data.name,
        "data_fingerprint": data.fingerprint,  # ae_jax.training.rundir.RunDir.check_data
        **({"class_names": list(data.class_names)} if data.class_names else {}),
        **({"devices": devices} if devices else {}),
    }


def trainer_devices(trainer: Any) -> dict:
    """``run.json``'s record of where a trainer's program runs."""
    devices = trainer.parallel.devices
    return {
        "count": len(devices),
        "platform": devices[0].platform,
        "parallel": trainer.parallel.mode if len(devices) > 1 else "none",
    }


def write_run_info(
    workdir: str | Path, data: Dataset, output_activation: str, devices: dict | None = None
) -> None:
    from ae_jax.run_io import write_json_atomic

    write_json_atomic(Path(workdir) / RUN_INFO, run_info(data, output_activation, devices))


def _info_from_data(cfg: Config) -> dict:
    data = load_dataset(cfg.data)
    out = resolve_output_activation(cfg.model, cfg.loss.kind, data.in_unit_interval)
    return run_info(data, out)


def unfinished(path: Path) -> str | None:
    """How the run in ``path`` stands, from its status.json, when it has not completed."""
    try:
        status = json.loads((path / "status.json").read_text())
    except (OSError, ValueError):
        return None
    state = status.get("status")
    if state == "running":
        from ae_jax.sweeps.collect import running_or_stopped

        return running_or_stopped(path)
    if state in ("failed", "preempted", "interrupted"):
        return f"{state}: {status.get('error') or status.get('message') or 'no reason recorded'}"
    return None


def load_run(run_dir: str | Path) -> Run:
    """Load the config and parameters of a run directory.

    Raises:
      RunError: when the directory, its ``config.yaml`` or its ``params.msgpack`` is missing, or
        the params do not fit the configured model.
    """
    from flax import serialization

    path = Path(run_dir)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise RunError(f"run directory {str(path)!r} {what}; give a run's directory")
    for name in (CONFIG_FILE, PARAMS_FILE):
        if not (path / name).is_file():
            ended = unfinished(path) if name == PARAMS_FILE else None
            if ended and ended.startswith("failed"):  # it never will finish
                raise RunError(
                    f"{str(path)!r} has no {name}: its run {ended}; train it again (its "
                    "command, with the cause fixed) and give it here once it has completed"
                )
            if ended:
                raise RunError(
                    f"{str(path)!r} has no {name}: its run has not finished ({ended}); "
                    "give it here once it has finished"
                )
            raise RunError(
                f"{str(path)!r} has no {name}; give the directory of a finished run (written by "
                "experiments/train.py: it holds config.yaml and params.msgpack)"
            )
    cfg = _stored_config(path / CONFIG_FILE)
    info_path = path / RUN_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else _info_from_data(cfg)
    shape = tuple(int(s) for s in info["example_shape"])
    model = build_model(cfg.model, shape)
    x0 = np.zeros((1, *shape), np.float32)
    template = jit_initializer(lambda k: model.init(k, x0)["params"])(jax.random.key(0))
    try:
        params = serialization.from_bytes(template, (path / PARAMS_FILE).read_bytes())
    except (ValueError, KeyError, TypeError) as err:
        raise RunError(
            f"{str(path / PARAMS_FILE)!r} does not fit the model in config.yaml ({err})"
        ) from err
    for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(params), strict=True):
        if np.shape(a) != np.shape(b):
            raise RunError(
                f"{str(path / PARAMS_FILE)!r} holds a parameter of shape {np.shape(b)} where the "
                f"model in config.yaml has {np.shape(a)}"
            )
    objective = build_objective(
        cfg, model, info["output_activation"], info["low"], info["high"], steps_per_epoch=1
    )
    return Run(path, cfg, params, objective, shape)


def _stored_config(f: Path) -> Config:
    """A run's ``config.yaml`` read back; RunError when it is damaged (not YAML, empty, or a
    value no config takes), naming the file and Hydra's copy to restore it from."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        stored = yaml.safe_load(f.read_text())
        if not isinstance(stored, dict) or not stored:
            raise ValueError("it holds no config")
        return load_config(str(f))
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException, ConfigError) as err:
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise RunError(
            f"{str(f)!r} cannot be read ({problem}); this run's config is damaged: restore it "
            "(Hydra's copy is .hydra/config.yaml)"
        ) from err


def _as_examples(run: Run, x) -> np.ndarray:
    """x as float32 (N, *example_shape); (N, D) rows are reshaped when D matches, and grey
    (N, H, W) images given their channel axis, as training reads them. NaN/inf is refused,
    and values far outside the range the run trained on (unscaled data: 0..255 pixels for a
    run on [0, 1]) are said in a warning."""
    x = np.asarray(x, dtype=np.float32)
    shape = run.example_shape
    d = int(np.prod(shape))
    if x.ndim >= 2 and x.shape[1:] == shape:
        pass
    elif x.ndim == 2 and x.shape[1] == d:
        x = x.reshape(x.shape[0], *shape)
    elif len(shape) == 3 and shape[-1] == 1 and x.shape[1:] == shape[:-1]:
        x = x[..., None]
    else:
        raise RunError(
            f"x has shape {x.shape}; this run's model takes (N, "
            f"{', '.join(map(str, shape))}) or (N, {d})"
        )
    finite = np.isfinite(x)
    if not finite.all():
        raise RunError(
            f"x holds {int((~finite).sum())} NaN/inf values (the first at index "
            f"{np.argwhere(~finite)[0].tolist()}); every value must be finite"
        )
    low, high = run.objective.low, run.objective.high
    margin = 0.5 * (high - low)
    if x.size and (x.min() < low - margin or x.max() > high + margin):
        log.warning(
            "x spans [%.4g, %.4g], far outside the [%.4g, %.4g] that %s trained on: embed and "
            "reconstruct take x after the run's data.scaling=%s, as "
            "load_dataset(run.cfg.data) prepares it",
            float(x.min()),
            float(x.max()),
            low,
            high,
            run.path,
            run.cfg.data.scaling,
        )
    return x


def _chunked(fn, params, x: np.ndarray) -> np.ndarray:
    if x.shape[0] == 0:
        raise RunError("x holds no examples; give at least one")
    return map_in_chunks(lambda xb, _: fn(params, xb), x, CHUNK)


def embed(run: Run, x) -> np.ndarray:
    """The codes (N, k) of x: the clean encoder; deterministic. A k-sparse run keeps
    ``model.sparse_k_features`` units (default ``model.sparse_k``)."""
    return _chunked(run.objective.jitted.features, run.params, _as_examples(run, x)).astype(
        np.float32
    )


def reconstruct(run: Run, x) -> np.ndarray:
    """Reconstructions (N, *example_shape) of x, after the output activation (data space)."""
    forward = run.objective.jitted.forward
    return _chunked(lambda p, xb: forward(p, xb)[1], run.params, _as_examples(run, x))


def run_data_config(run: Run):
    """The run's ``data`` config, its relative file paths read from where the run was trained
    (Hydra's record of the job, ``.hydra/hydra.yaml``: ``hydra.runtime.cwd``), not from here:
    from here only when the file is no longer there (a project moved; the data's fingerprint,
    checked by the caller, tells a look-alike file apart)."""
    import yaml

    data = run.cfg.data
    try:
        record = yaml.safe_load((run.path / ".hydra" / "hydra.yaml").read_text())
        cwd = Path(record["hydra"]["runtime"]["cwd"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return data
    moved = {}
    for key in ("path", "test_path"):
        value = getattr(data, key, None)
        if value and not Path(str(value)).expanduser().is_absolute():
            there = cwd / str(value)
            if there.exists() or not Path(str(value)).exists():
                moved[key] = str(there)
    return dataclasses.replace(data, **moved) if moved else data


def embed_dataset(run: Run, data: Dataset | None = None):
    """``(z_train, y_train, z_test, y_test)`` of ``data`` (default: the run's own dataset)."""
    data = load_dataset(run_data_config(run)) if data is None else data
    return embed(run, data.x_train), data.y_train, embed(run, data.x_test), data.y_test


def probe_report(
    z_train: np.ndarray,
    z_test: np.ndarray,
    data: Dataset,
    *,
    steps: int = 500,
    seed: int = 0,
    baselines: bool = True,
    l2: float | Sequence[float] = 1e-4,
    z_val: np.ndarray | None = None,
) -> dict[str, float]:
    """Linear-probe test error of codes, with raw inputs and PCA codes of the same size beside.

    Multinomial logistic regression on frozen features (``ae_jax.evaluation.probe``; Vincent et
    al. 2010, sec. 7), trained on the training split, error on the test split:
    ``probe/error_pct`` (the codes), ``probe/raw/error_pct`` (the inputs) and
    ``probe/pca/error_pct`` (PCA-k of the inputs, k = the code size). With several ``l2``
    candidates each probe chooses its own on the validation split (``z_val``, the codes of
    ``data.x_val``), then fits on training + validation (``probe/l2``, ``probe/val/error_pct``,
    and the same under ``probe/raw/`` and ``probe/pca/``).

    Raises:
      RunError: when the dataset has no labels, or several l2 are given without a validation
        split.
    """
    from ae_jax.evaluation.pca import fit_pca
    from ae_jax.evaluation.probe import linear_probe

    if data.y_train is None:
        raise RunError(f"{data.name} has no labels; a linear probe needs class labels")
    choose = np.ndim(l2) > 0 and len(l2) > 1
    if choose and (z_val is None or data.x_val is None):
        raise RunError(
            f"choosing the probe's l2 among {list(l2)} needs a validation split "
            "(data.validation > 0); the test split is never used to choose"
        )
    y_val = data.y_val if choose else None

    def probe(prefix: str, train, test, val) -> dict[str, float]:
        r = linear_probe(
            train, data.y_train, test, data.y_test, steps=steps, seed=seed, l2=l2,
            z_val=val if choose else None, y_val=y_val,
        )  # fmt: skip
        out = {f"{prefix}error_pct": r["error_pct"]}
        if prefix == "probe/":  # the codes' training error too (how much the probe overfits)
            out[f"{prefix}train_error_pct"] = r["train_error_pct"]
        if "l2" in r:
            out |= {f"{prefix}l2": r["l2"], f"{prefix}val/error_pct": r["val_error_pct"]}
        return out

    out = probe("probe/", z_train, z_test, z_val)
    if not baselines:
        return out
    flat = (-1, data.num_features)
    flat_train, flat_test = data.x_train.reshape(flat), data.x_test.reshape(flat)
    flat_val = None if data.x_val is None else data.x_val.reshape(flat)
    out |= probe("probe/raw/", flat_train, flat_test, flat_val)
    k = min(np.shape(z_train)[1], *flat_train.shape)
    pca = fit_pca(flat_train, k)

    def pcs(x):
        return None if x is None else pca.encode(x).astype(np.float32)

    out |= probe("probe/pca/", pcs(flat_train), pcs(flat_test), pcs(flat_val))
    return out
