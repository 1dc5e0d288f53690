"""The ``tfds`` data source: a tensorflow-datasets builder (mnist, fashion_mnist, kmnist, ...).

With ``data.manual_dir`` the builder is prepared offline from the official files in that
directory (tensorflow-datasets finds them by their registered names and checks their
checksums); without it, tensorflow-datasets downloads them. The ``train`` and ``test`` splits
are then read as numpy arrays in one go.

TensorFlow is an optional extra (``pip install -e ".[tfds]"``). Without it, a ``manual_dir``
holding MNIST-family IDX files is read with the numpy IDX reader instead: the same examples,
but in the files' order, whereas tensorflow-datasets stores them shuffled by a hash of their
index (a fixed permutation of the file order).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ae_jax.data.dataset import DataError
from ae_jax.data.idx import has_idx_files, load_idx_directory
from ae_jax.data.preprocessing import RawData
from ae_jax.network import unreachable

log = logging.getLogger("ae_jax")

MNIST_FAMILY = ("mnist", "fashion_mnist", "kmnist", "emnist")


def import_tfds() -> Any:
    """The ``tensorflow_datasets`` module, with TensorFlow importable; ImportError otherwise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter quiet
    # TF only reads and decodes the dataset's files here (integer pixels, no float math), so
    # its oneDNN kernels change nothing but print a line on every run that imports it
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        # TF must not claim accelerator memory that JAX will need in the same process.
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TF's devices were initialised earlier in this process; nothing left to change
    return tfds


def _builder(tfds: Any, tfds_name: str, data_dir: str | None) -> Any:
    known = tfds.list_builders(with_community_datasets=False)
    base = tfds_name.split("/")[0].split(":")[0]
    if base not in known:
        close = difflib.get_close_matches(base, known, n=5)
        examples = list(dict.fromkeys(close + [n for n in MNIST_FAMILY if n in known]))
        raise DataError(
            f"data.tfds_name={tfds_name!r} is not a tensorflow-datasets builder; valid names "
            f"include {', '.join(examples)} (see tfds.list_builders())"
        )
    try:
        return tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as err:  # tfds raises several unrelated types for a bad name/config/version
        raise DataError(f"data.tfds_name={tfds_name!r} cannot be built by tfds: {err}") from err


def _tfds_error_line(err: BaseException) -> str:
    """One line for a tensorflow-datasets error: a file whose checksum is not the official
    one's is named with both sizes; any other message is flattened to one line."""
    text = str(err)
    wrong = re.search(
        r"downloaded to (.+?), has wrong checksum.*?Expected: UrlInfo\(size=([^,]+),"
        r".*?Got: UrlInfo\(size=([^,]+),",
        text,
        re.S,
    )
    if wrong:
        path, expected, got = wrong.groups()
        return (
            f"{path} is not the official file (its checksum differs; {got}, the official one "
            f"is {expected}): replace it with the official file"
        )
    return " ".join(text.split()) or type(err).__name__


def _download(builder: Any) -> None:
    """Download and prepare ``builder`` (no ``data.manual_dir``), or one ``DataError`` that
    names the dataset, where it would be stored, and the offline way to prepare it."""
    names = sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})
    offline = (
        f"; to prepare it without the network, put its official files "
        f"({', '.join(names) or 'see its tensorflow-datasets page'}) in a directory and set "
        "data.manual_dir to it"
    )
    problem = unreachable(list(builder.url_infos or {}))
    if problem is not None:
        raise DataError(
            f"{builder.name} is not in {builder.data_dir} and cannot be downloaded: "
            f"{problem}{offline}"
        )
    try:
        builder.download_and_prepare()
    except Exception as err:  # network and checksum errors: tfds has no common base class
        raise DataError(
            f"tensorflow-datasets could not download {builder.name} into {builder.data_dir}: "
            f"{_tfds_error_line(err)}{offline}"
        ) from err


def _is_prepared(builder: Any) -> bool:
    """``builder.is_prepared()`` without its absl warning for a missing dataset
    ("Variant folder ... has no dataset_info.json"): not being prepared is not a fault."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return builder.is_prepared()
    finally:
        absl.setLevel(level)


def _prepare(tfds: Any, builder: Any, manual_dir: str | None) -> None:
    if manual_dir is None:
        if not _is_prepared(builder):
            _download(builder)
        return
    directory = Path(manual_dir).expanduser()
    if not directory.is_dir():
        raise DataError(
            f"data.manual_dir={manual_dir!r} is not a directory; it must hold the dataset's "
            "official files (or set data.manual_dir=null to let tensorflow-datasets download them)"
        )
    if not _is_prepared(builder):
        # Offline, a missing file makes tfds retry the network for minutes: refuse it up front.
        needed = sorted({info.filename for info in (builder.url_infos or {}).values()})
        missing = [name for name in needed if name and not (directory / name).is_file()]
        if missing:
            raise DataError(
                f"data.manual_dir={manual_dir!r} lacks {', '.join(missing)}; "
                f"{builder.name} needs {', '.join(needed)} there"
            )
    config = tfds.download.DownloadConfig(manual_dir=str(directory))
    tfds.disable_progress_bar()  # local files, prepared in seconds: no bars on the console
    if not _is_prepared(
        builder
    ):  # tfds prints "Downloading and preparing dataset Unknown size ..."
        log.info(
            "%s: preparing tensorflow-datasets' copy in %s from the files in %s (once; later "
            "runs read that copy)",
            builder.name,
            builder.data_dir,
            directory,
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nothing is downloaded: its own lines
            builder.download_and_prepare(download_config=config)  # would say so
    except Exception as err:  # checksum mismatch, unreadable file: tfds has no common base class
        raise DataError(
            f"tensorflow-datasets could not prepare {builder.name} from data.manual_dir="
            f"{manual_dir!r}: {_tfds_error_line(err)}"
        ) from err


def _read_split(tfds: Any, builder: Any, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    supervised = builder.info.supervised_keys is not None
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=supervised))
    if supervised:
        x, y = data
    else:
        key = "image" if "image" in data else next(iter(data))
        x, y = data[key], None
    if y is not None and (np.asarray(y).ndim != 1 or np.asarray(y).dtype.kind not in "iu"):
        y = None  # a non-class target (e.g. a caption) is not a label
    return np.asarray(x), (None if y is None else np.asarray(y, dtype=np.int32))


def _fallback(tfds_name: str, manual_dir: str | None, err: ImportError) -> RawData:
    if manual_dir is not None and has_idx_files(manual_dir):
        print(
            f"ae_jax.data: tensorflow-datasets is unavailable ({err}); reading the IDX files in "
            f"{manual_dir} with numpy instead (same examples as tfds {tfds_name!r}, in file order)"
        )
        return load_idx_directory(manual_dir)
    raise DataError(
        f"data.source=tfds (data.tfds_name={tfds_name!r}) needs TensorFlow and "
        f'tensorflow-datasets, which cannot be imported ({err}); run pip install -e ".[tfds]", '
        "or read MNIST-family IDX files without TensorFlow: data=idx data.path=DIR"
    )


def load_tfds(
    tfds_name: str | None, data_dir: str | None = None, manual_dir: str | None = None
) -> RawData:
    """The ``train`` and ``test`` splits of a tensorflow-datasets builder, unscaled.

    Images are kept as ``(N, H, W, C)`` (grey ``(N, H, W)`` gain a channel); uint8 pixels get
    ``image_max=255``. A builder without a ``test`` split returns ``x_test=None`` (held out
    later with ``data.test_fraction``).
    """
    if not tfds_name:
        raise DataError(
            "data.source=tfds needs data.tfds_name, a tensorflow-datasets builder such as mnist, "
            "fashion_mnist or kmnist"
        )
    try:
        tfds = import_tfds()
    except ImportError as err:
        return _fallback(tfds_name, manual_dir, err)
    builder = _builder(tfds, tfds_name, data_dir)
    _prepare(tfds, builder, manual_dir)
    splits = builder.info.splits
    if "train" not in splits:
        raise DataError(
            f"tfds builder {tfds_name!r} has splits {sorted(splits)}; a train split is needed"
        )
    x_train, y_train = _read_split(tfds, builder, "train")
    x_test, y_test = _read_split(tfds, builder, "test") if "test" in splits else (None, None)
    if x_test is not None and (y_train is None) != (y_test is None):
        y_train = y_test = None
    if x_train.ndim == 3:  # (N, H, W) grey images
        x_train = x_train[..., None]
        x_test = None if x_test is None else x_test[..., None]
    if x_train.ndim not in (2, 4):
        raise DataError(
            f"tfds builder {tfds_name!r} gives examples of shape {x_train.shape[1:]}; "
            "valid: (D,) feature vectors or (H, W[, C]) images"
        )
    is_image = x_train.ndim == 4
    image_max = 255.0 if is_image and x_train.dtype == np.uint8 else None
    return RawData(x_train, y_train, x_test, y_test, is_image=is_image, image_max=image_max)
