"""`load_dataset`: the data config (``data.*``) to a scaled, split `Dataset`, for every source.

Sources (``data.source``):

- ``digits``: scikit-learn's embedded 8x8 handwritten digits (1797 images, values 0..16,
  UCI "Optical Recognition of Handwritten Digits"); no download, used by the default config.
- ``idx``: a directory of MNIST-family IDX files (`ae_jax.data.idx`), no TensorFlow needed.
- ``tfds``: a tensorflow-datasets builder (`ae_jax.data.tfds_source`).
- ``array``: user ``.npy`` / ``.npz`` / ``.csv`` files (`ae_jax.data.arrays`).

The config may be a Hydra ``DictConfig``, the `ae_jax.config.DataConfig` dataclass, a plain
dict, or any object with those attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf.errors import MissingMandatoryValue

from ae_jax.config import DATA_SOURCES, SCALINGS
from ae_jax.data.arrays import load_arrays
from ae_jax.data.dataset import DataError, Dataset
from ae_jax.data.idx import load_idx_directory
from ae_jax.data.preprocessing import (
    RawData,
    build_dataset,
    check_limit,
    check_seed,
    check_test_fraction,
    check_validation,
)
from ae_jax.data.tfds_source import load_tfds

DIGITS_MAX = 16.0  # the digits set counts ink in 4x4 blocks of a 32x32 bitmap: 0..16


def _setting(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.<key>``, with Hydra's mandatory ``???`` (unset or via an env default) as None."""
    try:
        # A DictConfig is a Mapping too; a plain dict has no attributes to fall back on.
        value = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    except MissingMandatoryValue:
        return None
    return None if value == "???" else value


def _required_path(cfg: Any, source: str, what: str) -> str:
    path = _setting(cfg, "path")
    if path is None:
        hint = (  # conf/data/idx.yaml's path is ${oc.env:AE_JAX_MNIST_DIR,null}
            "; data=idx reads it from $AE_JAX_MNIST_DIR when that is set (export "
            "AE_JAX_MNIST_DIR=DIR)"
            if source == "idx"
            else ""
        )
        raise DataError(f"data.path is not set; data.source={source} needs data.path={what}{hint}")
    return str(path)


def load_digits_source(cfg: Any) -> RawData:
    """scikit-learn's digits as uint8 ``(1797, 8, 8, 1)`` images, values 0..16, no test split.

    Read from the file scikit-learn ships (what ``sklearn.datasets.load_digits`` reads) without
    importing scikit-learn, which costs a second or more of every run's start."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec else None
    path = Path(roots[0]) / "datasets" / "data" / "digits.csv.gz" if roots else None
    if path is not None and path.is_file():
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)  # (1797, 65): pixels, label
        x, y = table[:, :-1], table[:, -1]
    else:  # a packaging of scikit-learn without the file where we look: its own loader
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)  # (1797, 64) float64, (1797,)
    x = x.astype(np.uint8).reshape(-1, 8, 8, 1)  # (N, 8, 8, 1)
    return RawData(x, y.astype(np.int32), None, None, is_image=True, image_max=DIGITS_MAX)


def load_idx_source(cfg: Any) -> RawData:
    """The IDX directory ``data.path`` (train-/t10k- images and labels)."""
    return load_idx_directory(_required_path(cfg, "idx", "DIR, a directory of IDX files"))


def load_tfds_source(cfg: Any) -> RawData:
    """The tensorflow-datasets builder ``data.tfds_name`` (offline from ``data.manual_dir``)."""
    return load_tfds(
        _setting(cfg, "tfds_name"),
        data_dir=_setting(cfg, "data_dir"),
        manual_dir=_setting(cfg, "manual_dir"),
    )


def load_array_source(cfg: Any) -> RawData:
    """The ``.npy`` / ``.npz`` / ``.csv`` file ``data.path`` (+ ``data.test_path``)."""
    return load_arrays(
        _required_path(cfg, "array", "FILE, a .npy, .npz or .csv file"),
        test_path=_setting(cfg, "test_path"),
        label_column=_setting(cfg, "label_column"),
    )


LOADERS: dict[str, Callable[[Any], RawData]] = {
    "digits": load_digits_source,
    "idx": load_idx_source,
    "tfds": load_tfds_source,
    "array": load_array_source,
}


# The settings each source reads; one given to a source that does not read it is refused, not
# ignored (data.path=my.csv under the default digits used to train on digits).
READS: dict[str, tuple[str, ...]] = {
    "array": ("path", "test_path", "label_column"),
    "idx": ("path",),
    "tfds": ("tfds_name", "manual_dir", "data_dir"),
    "digits": (),
}
HOW = {  # how a user picks each source on the command line
    "array": "data=array (a .npy, .npz or .csv file)",
    "idx": "data=idx (a directory of IDX files)",
    "tfds": "data=mnist, data=fashion_mnist or data.source=tfds (tensorflow-datasets)",
}


def check_source_settings(cfg: Any, source: str) -> None:
    """Refuse a ``data.*`` setting that ``source`` does not read, naming the sources that do."""
    for key in ("path", "test_path", "label_column", "tfds_name", "manual_dir", "data_dir"):
        value = _setting(cfg, key)
        if value is None or key in READS[source]:
            continue
        readers = " and by ".join(HOW[s] for s in READS if key in READS[s])
        raise DataError(
            f"data.{key}={value!r} is not read by data.source={source} (the run would train on "
            f"{_setting(cfg, 'name') or source}, not on it); data.{key} is read by {readers}: "
            f"choose that source, or leave data.{key} unset"
        )


def load_dataset(cfg: Any) -> Dataset:
    """Load, split, scale and subsample the dataset that ``cfg`` (the ``data`` node) describes.

    Every setting is checked before anything is read; every problem is a `DataError` whose
    message names the offending value and what would be valid.
    """
    source = _setting(cfg, "source", "digits")
    if source not in LOADERS:
        raise DataError(
            f"data.source={source!r} is not valid; choose one of: {', '.join(DATA_SOURCES)}"
        )
    check_source_settings(cfg, source)
    scaling = _setting(cfg, "scaling", "auto")
    if scaling not in SCALINGS:
        raise DataError(
            f"data.scaling={scaling!r} is not valid; choose one of: {', '.join(SCALINGS)}"
        )
    name = _setting(cfg, "name") or source
    path = _setting(cfg, "path")
    if source == "array" and name in LOADERS and path:
        # a source's generic label (conf/data/array.yaml's "array", or "digits" left over from
        # the default data group under data.source=array): the file's own name says more in
        # logs, errors and figure titles
        name = Path(str(path)).stem
    settings = dict(
        name=name,
        scaling=scaling,
        test_fraction=check_test_fraction(_setting(cfg, "test_fraction", 0.2)),
        split_seed=check_seed(_setting(cfg, "split_seed", 0)),
        max_train=check_limit("max_train", _setting(cfg, "max_train")),
        max_test=check_limit("max_test", _setting(cfg, "max_test")),
        validation=check_validation(_setting(cfg, "validation", 0.0)),
    )
    return build_dataset(LOADERS[source](cfg), **settings)
