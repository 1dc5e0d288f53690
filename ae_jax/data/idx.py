"""A numpy-only reader for IDX files, the format of MNIST, Fashion-MNIST and KMNIST.

IDX (LeCun et al., "THE MNIST DATABASE", http://yann.lecun.com/exdb/mnist/, section "FILE
FORMATS"): a big-endian header ``0x00 0x00 <type code> <ndim>``, then ``ndim`` uint32
dimension sizes, then the values in C order. MNIST images have the magic number 2051
(``0x00000803``: uint8, 3 dims ``(N, 28, 28)``), labels 2049 (``0x00000801``: uint8, 1 dim).
Files may be gzip-compressed (``.gz``, as distributed). Reading all of MNIST takes about a
second: one ``gzip`` read and a zero-copy ``np.frombuffer``.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from ae_jax.data.dataset import DataError
from ae_jax.data.preprocessing import RawData

# IDX type codes -> big-endian numpy dtypes.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
LABELS_MAGIC = 0x00000801  # uint8, 1 dim

# role -> official file name (without .gz); MNIST-family datasets all use these names.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _candidates(stem: str) -> list[str]:
    # Official names, optionally gzipped; some mirrors write "train-images.idx3-ubyte".
    dotted = stem.replace("-idx", ".idx")
    return [stem, f"{stem}.gz", dotted, f"{dotted}.gz"]


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"IDX file {path} cannot be read ({err}); it must be an IDX file, "
            "gzip-compressed when its name ends in .gz (re-download it if it is truncated)"
        ) from err


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """The array stored in one IDX file (optionally ``.gz``), in native byte order.

    Checks the header against the payload size (a truncated file is a DataError naming it)
    and, when ``expected_magic`` is given, the magic number (e.g. `IMAGES_MAGIC`).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(
            f"IDX file {path} starts with {data[:4].hex() or 'nothing'}; an IDX file starts with "
            f"00 00 <type code in {sorted(IDX_DTYPES)}> <ndim>"
        )
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"IDX file {path} has magic number {magic} (0x{magic:08x}); expected {expected_magic} "
            f"(0x{expected_magic:08x}) for this file"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"IDX file {path} has a truncated header ({len(data)} bytes, {ndim} dims)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path} is {state}: its header gives shape {dims} ({expected} bytes with the "
            f"header) but the file holds {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def find_idx_files(directory: str | Path) -> dict[str, Path]:
    """Role (``train_images``, ...) -> path of each MNIST-family file in ``directory``."""
    directory = Path(directory).expanduser()
    expected = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    if not directory.is_dir():
        where = "" if directory.is_absolute() else f" ({directory.resolve()})"
        raise DataError(
            f"IDX directory {directory}{where} does not exist or is not a directory; it must "
            f"hold {expected}"
        )
    found, missing = {}, []
    for role, stem in IDX_FILES.items():
        hit = next((directory / c for c in _candidates(stem) if (directory / c).is_file()), None)
        if hit is None:
            missing.append(stem)
        else:
            found[role] = hit
    if missing:
        lacks = ", ".join(f"{m}[.gz]" for m in missing)
        if found:
            raise DataError(f"IDX directory {directory} lacks {lacks}; it must hold {expected}")
        raise DataError(f"IDX directory {directory} holds none of {lacks}")
    return found


def has_idx_files(directory: str | Path) -> bool:
    """True when ``directory`` holds all four MNIST-family IDX files."""
    try:
        find_idx_files(directory)
    except DataError:
        return False
    return True


def _images_and_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IMAGES_MAGIC)  # (N, H, W) uint8
    labels = read_idx(labels_path, LABELS_MAGIC)  # (N,) uint8
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"IDX files disagree: {images_path} holds {images.shape[0]} images but {labels_path} "
            f"holds {labels.shape[0]} labels; they must hold one label per image"
        )
    return images[..., None], labels.astype(np.int32)  # (N, H, W, 1), (N,)


def load_idx_directory(directory: str | Path) -> RawData:
    """The train and test splits of an MNIST-family IDX directory, as uint8 ``(N, H, W, 1)``."""
    files = find_idx_files(directory)
    x_train, y_train = _images_and_labels(files["train_images"], files["train_labels"])
    x_test, y_test = _images_and_labels(files["test_images"], files["test_labels"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"IDX files disagree: {files['train_images']} holds images of {x_train.shape[1:3]} but "
            f"{files['test_images']} holds {x_test.shape[1:3]}; train and test must match"
        )
    return RawData(x_train, y_train, x_test, y_test, is_image=True, image_max=255.0)
