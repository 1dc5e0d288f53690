"""Tests of the data package: real digits and MNIST, user arrays, TFDS, and every error path."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ae_jax.config import DataConfig, register_configs
from ae_jax.data import DataError, Dataset, load_dataset
from ae_jax.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx

REPO = Path(__file__).resolve().parents[1]
# The official MNIST training-label histogram (digits 0..9) and first ten labels.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_FIRST_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tensorflow():
    """``tensorflow_datasets`` with TensorFlow importable; a failure in CI, a skip elsewhere."""
    try:
        import tensorflow  # noqa: F401
        import tensorflow_datasets as tfds
    except ImportError as err:
        msg = f'TensorFlow / tensorflow-datasets not importable ({err}); pip install -e ".[tfds]"'
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return tfds


def load_array(path: Path, **settings) -> Dataset:
    return load_dataset(DataConfig(source="array", path=str(path), **settings))


def load_idx(path: Path, **settings) -> Dataset:
    return load_dataset(DataConfig(source="idx", path=str(path), **settings))


def labelled_digests(x: np.ndarray, y: np.ndarray) -> list[tuple[bytes, int]]:
    """Sorted (digest of the example's bytes, label) pairs: equal iff same examples and labels."""
    rows = x.reshape(len(x), -1)
    return sorted(
        (hashlib.blake2b(r.tobytes(), digest_size=16).digest(), int(c))
        for r, c in zip(rows, y, strict=True)
    )


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    """A small MNIST-layout IDX directory: 20 train and 6 test images of 4x5 pixels."""
    rng = np.random.default_rng(0)
    d = tmp_path / "idx"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 4, 5)))
    write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (6, 4, 5)))  # uncompressed
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(6) % 3)
    return d


@pytest.fixture(scope="module")
def mnist_idx(mnist_path: Path) -> tuple[Dataset, float]:
    """MNIST from the official IDX files, and the seconds that reading and scaling took."""
    start = time.perf_counter()
    ds = load_idx(mnist_path, name="mnist")
    return ds, time.perf_counter() - start


def test_digits_default_shapes_range_and_split():
    from sklearn.datasets import load_digits

    ds = load_dataset(DataConfig())
    assert ds.name == "digits" and ds.is_image and ds.scaling == "unit"
    assert ds.example_shape == (8, 8, 1) and ds.num_features == 64 and ds.num_classes == 10
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)  # 20% of 1797
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.flags.c_contiguous and ds.in_unit_interval
    # The two splits partition the raw set exactly, scaled by 1/16.
    x, y = load_digits(return_X_y=True)
    both = np.concatenate([ds.x_train, ds.x_test]).reshape(1797, 64)
    order, raw_order = np.lexsort(both.T), np.lexsort((x / 16).T)
    np.testing.assert_allclose(both[order], x[raw_order] / 16, atol=1e-7)
    assert np.bincount(np.concatenate([ds.y_train, ds.y_test])).tolist() == np.bincount(y).tolist()
    # Stratified: every class holds out 20% of its examples, to within one example.
    assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - 0.2 * np.bincount(y)) <= 1)


def test_digits_file_read_equals_scikit_learns_loader_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from ae_jax.data.sources import load_digits_source

    raw = load_digits_source(DataConfig())
    x, y = load_digits(return_X_y=True)
    np.testing.assert_array_equal(raw.x_train.reshape(1797, 64), x.astype(np.uint8))
    np.testing.assert_array_equal(raw.y_train, y)
    # Loading and splitting do not pay for importing scikit-learn (a second or more).
    code = (
        "import sys; from ae_jax.data import load_dataset; "
        "from ae_jax.config import DataConfig; load_dataset(DataConfig(validation=0.1)); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("seed", [0, 1, 7, 2**32 - 1])
def test_splits_equal_scikit_learns_train_test_split(seed):
    from sklearn.model_selection import train_test_split

    from ae_jax.data.preprocessing import split_indices

    rng = np.random.default_rng(seed % 1000)
    cases = [
        (1797, 0.2, rng.integers(0, 10, 1797)),  # stratified, ten classes
        (101, 0.3, rng.integers(0, 3, 101)),  # ties in the per-class remainders
        (60, 0.25, None),  # no labels
    ]
    for n, fraction, labels in cases:
        train, test = split_indices(n, fraction, seed, labels)
        n_test = int(np.ceil(fraction * n))
        stratify = (
            labels if labels is not None and np.bincount(labels.astype(int)).min() >= 2 else None
        )
        ref_train, ref_test = train_test_split(
            np.arange(n), test_size=n_test, random_state=seed, shuffle=True, stratify=stratify
        )
        np.testing.assert_array_equal(train, ref_train)
        np.testing.assert_array_equal(test, ref_test)


def test_a_class_of_one_example_stays_in_training_and_the_others_are_stratified(caplog):
    """iris with one virginica: a plain permutation (scikit-learn refuses such labels) put
    that example in the held-out split as often as not, where no classifier had seen its class,
    and left the other classes unbalanced (6 / 14 of 20 held out)."""
    from ae_jax.data.preprocessing import split_indices

    labels = np.r_[np.zeros(50), np.ones(50), 2]
    for seed in range(5):
        with caplog.at_level(logging.WARNING, logger="ae_jax"):
            caplog.clear()
            train, test = split_indices(101, 0.2, seed, labels)
        assert 100 in train and sorted(np.r_[train, test].tolist()) == list(range(101))
        assert len(test) == 21 and sorted(np.bincount(labels[test].astype(int)).tolist()) == [
            10,
            11,
        ]
        assert "1 class of one example (2.0) cannot be in both parts" in caplog.text
    # labels of which most values are single (a measured target given as the label column)
    # keep the plain permutation: there is nothing to stratify
    train, test = split_indices(200, 0.2, 0, np.arange(200) // 1.5)
    assert len(test) == 40 and len(train) == 160


def test_digits_split_is_deterministic_per_seed():
    a = load_dataset(DataConfig(split_seed=3))
    b = load_dataset(DataConfig(split_seed=3))
    c = load_dataset(DataConfig(split_seed=4))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    other = load_dataset(DataConfig(test_fraction=0.5))
    assert (other.x_train.shape[0], other.x_test.shape[0]) == (898, 899)


def test_digits_scalings_and_subsampling():
    none = load_dataset(DataConfig(scaling="none"))
    assert none.scaling == "none" and none.x_train.max() == 16.0 and not none.in_unit_interval
    std = load_dataset(DataConfig(scaling="standardize"))
    assert std.scaling == "standardize"
    assert abs(float(std.x_train.mean())) < 1e-5 and abs(float(std.x_train.std()) - 1) < 1e-4
    full = load_dataset(DataConfig())
    small = load_dataset(DataConfig(max_train=100, max_test=7))
    assert small.x_train.shape == (100, 8, 8, 1) and small.x_test.shape == (7, 8, 8, 1)
    # The first N of the same split, with the same values as the full run.
    np.testing.assert_array_equal(small.x_train, full.x_train[:100])
    np.testing.assert_array_equal(small.y_test, full.y_test[:7])


def test_mnist_idx_matches_the_published_statistics(mnist_idx):
    ds, seconds = mnist_idx
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.example_shape == (28, 28, 1) and ds.num_features == 784 and ds.num_classes == 10
    assert abs(float(ds.x_train.mean()) - 0.1307) < 5e-4
    assert abs(float(ds.x_train.std()) - 0.3081) < 5e-4
    assert ds.in_unit_interval and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert ds.y_train[:10].tolist() == MNIST_FIRST_LABELS  # file order is kept
    assert np.bincount(ds.y_test).sum() == 10000
    assert seconds < 5.0, f"loading MNIST took {seconds:.1f} s; it should take about 1 s"


def test_mnist_idx_standardize_and_max_train(mnist_path, mnist_idx):
    std = load_idx(mnist_path, scaling="standardize", max_train=500)
    ds, _ = mnist_idx
    # Statistics come from all 60000 training images: the MNIST normalisation.
    expected = (ds.x_train[:500] - ds.x_train.mean(dtype=np.float64)) / ds.x_train.std(
        dtype=np.float64
    )
    np.testing.assert_allclose(std.x_train, expected, atol=1e-5)
    assert std.x_train.shape == (500, 28, 28, 1) and std.x_test.shape[0] == 10000


def test_idx_reader_round_trips(idx_dir):
    ds = load_idx(idx_dir, scaling="none")
    assert ds.example_shape == (4, 5, 1)
    raw = read_idx(idx_dir / "train-images-idx3-ubyte.gz", IMAGES_MAGIC)
    np.testing.assert_array_equal(ds.x_train[..., 0], raw.astype(np.float32))
    assert ds.y_train.tolist() == (np.arange(20) % 10).tolist()
    assert ds.y_test.tolist() == [0, 1, 2, 0, 1, 2]
    wide = np.arange(24, dtype=">i4").reshape(2, 3, 4)  # a big-endian int32 IDX file
    path = idx_dir / "wide.idx"
    path.write_bytes(
        bytes([0, 0, 0x0C, 3]) + b"".join(d.to_bytes(4, "big") for d in wide.shape) + wide.tobytes()
    )
    np.testing.assert_array_equal(read_idx(path), wide)


def test_idx_missing_directory_and_file(tmp_path, idx_dir):
    with pytest.raises(DataError, match=r"nowhere.*train-images-idx3-ubyte\[\.gz\]"):
        load_idx(tmp_path / "nowhere")
    (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]"):
        load_idx(idx_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds none of train-images-idx3-ubyte\[\.gz\], "):
        load_idx(tmp_path / "empty")


def test_idx_unset_path_is_named():
    with pytest.raises(DataError, match="data.path is not set"):
        load_dataset(DataConfig(source="idx", path="???"))


def test_idx_truncated_files_are_named(idx_dir):
    images = idx_dir / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-7])  # payload cut short
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is truncated.*\(6, 4, 5\)"):
        load_idx(idx_dir)
    labels = idx_dir / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-10])  # gzip stream cut short
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz cannot be read"):
        load_idx(idx_dir)


def test_idx_wrong_magic_and_mismatched_counts(idx_dir):
    images = idx_dir / "train-images-idx3-ubyte.gz"
    write_idx(images, np.zeros(20), magic=LABELS_MAGIC)  # a labels file under the images name
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz has magic number 2049.*2051"):
        load_idx(idx_dir)
    images.write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\n"))
    with pytest.raises(DataError, match="starts with 89504e47"):
        load_idx(idx_dir)
    write_idx(images, np.zeros((19, 4, 5)))
    with pytest.raises(DataError, match="19 images but .*20 labels"):
        load_idx(idx_dir)


def test_npy_tabular_unit_scaling_is_fitted_on_train(tmp_path):
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(5, 3, 200), np.full(200, 7.0), rng.uniform(-1, 0, 200)])
    np.save(tmp_path / "x.npy", x)
    ds = load_array(tmp_path / "x.npy", scaling="auto")
    assert ds.example_shape == (3,) and not ds.is_image and ds.scaling == "unit"
    assert ds.x_train.shape == (160, 3) and ds.x_test.shape == (40, 3) and ds.y_train is None
    assert ds.num_classes is None and ds.in_unit_interval
    np.testing.assert_allclose(ds.x_train.min(0), [0, 0, 0])
    np.testing.assert_allclose(ds.x_train.max(0), [1, 0, 1])  # the constant column maps to 0
    assert np.all(ds.x_test[:, 1] == 0)
    # Closed form on the raw rows: (x - train min) / (train max - train min), test clipped.
    raw = load_array(tmp_path / "x.npy", scaling="none")
    lo, hi = raw.x_train.min(0), raw.x_train.max(0)
    expected = np.clip((raw.x_test[:, 0] - lo[0]) / (hi[0] - lo[0]), 0, 1)
    np.testing.assert_allclose(ds.x_test[:, 0], expected, atol=1e-6)


def test_npy_standardize_and_image_layouts(tmp_path):
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.normal(5, 3, 100), np.full(100, -2.0)])
    np.save(tmp_path / "x.npy", x)
    ds = load_array(tmp_path / "x.npy", scaling="standardize")
    np.testing.assert_allclose(ds.x_train.mean(0), [0, 0], atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(0), [1, 0], atol=1e-5)  # std 0: only centred
    np.save(tmp_path / "grey.npy", rng.integers(0, 256, (30, 6, 5)).astype(np.uint8))
    grey = load_array(tmp_path / "grey.npy")
    assert grey.is_image and grey.example_shape == (6, 5, 1) and grey.in_unit_interval
    rgb = rng.uniform(0, 10, (30, 4, 4, 3)) * np.array([1, 10, 100])  # channels on own scales
    np.save(tmp_path / "rgb.npy", rgb)
    ds = load_array(tmp_path / "rgb.npy", scaling="unit")
    assert ds.example_shape == (4, 4, 3)
    np.testing.assert_allclose(ds.x_train.max(axis=(0, 1, 2)), [1, 1, 1])  # per channel


def test_eight_bit_image_arrays_are_divided_by_255(tmp_path):
    """uint8 pixels are 0..255, as MNIST's and TFDS's are: they were min-max scaled per
    channel, which stretched a set whose brightest pixel is 200 and lost an RGB tint."""
    rng = np.random.default_rng(4)
    tint = np.array([85, 170, 200], np.uint8)  # each channel's brightest value
    rgb = (rng.uniform(0, 1, (40, 6, 6, 3)) * tint).astype(np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    ds = load_array(tmp_path / "rgb.npy", test_fraction=0.25)
    whole = np.concatenate([ds.x_train, ds.x_test])
    np.testing.assert_allclose(whole.max(axis=(0, 1, 2)), rgb.max(axis=(0, 1, 2)) / 255)
    assert ds.in_unit_interval
    np.save(tmp_path / "float.npy", rgb.astype(np.float32))  # floats: min-max, as before
    fitted = load_array(tmp_path / "float.npy", test_fraction=0.25)
    np.testing.assert_allclose(fitted.x_train.max(axis=(0, 1, 2)), [1, 1, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_images_already_in_the_unit_interval_are_kept_as_they_are(tmp_path, dtype):
    """Float pixels in [0, 1] (a PIL image / 255) and binary masks were min-max scaled per
    channel, which stretched each colour on its own (a tint lost), and a uint8 0/1 mask was
    divided by 255 (black)."""
    rng = np.random.default_rng(5)
    if dtype == np.uint8:
        images = (rng.uniform(0, 1, (40, 6, 6, 3)) < 0.3).astype(dtype)  # a 0/1 mask
    else:
        images = (rng.uniform(0, 1, (40, 6, 6, 3)) * [0.3, 0.6, 0.9]).astype(dtype)  # a tint
    np.save(tmp_path / "x.npy", images)
    ds = load_array(tmp_path / "x.npy", test_fraction=0.25)
    whole = np.concatenate([ds.x_train, ds.x_test])
    np.testing.assert_allclose(
        np.sort(whole.reshape(-1)), np.sort(images.reshape(-1).astype(np.float32)), rtol=1e-6
    )
    assert ds.in_unit_interval


def test_channels_first_images_are_moved_to_channels_last(tmp_path, caplog):
    """PyTorch's (N, C, H, W) was read as (N, H, W, C): a (300, 3, 20, 36) array trained
    3 x 20 images of 36 channels, at 100x PCA's error, without a word."""
    rng = np.random.default_rng(3)
    hwc = rng.uniform(0, 1, (30, 20, 36, 3)).astype(np.float32)
    np.save(tmp_path / "chw.npy", np.moveaxis(hwc, -1, 1))
    np.save(tmp_path / "hwc.npy", hwc)
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        first = load_array(tmp_path / "chw.npy", scaling="none", test_fraction=0.5)
    assert first.example_shape == (20, 36, 3)
    assert "read as channels-first (N, C, H, W) images of 3 channels, 20 x 36" in caplog.text
    last = load_array(tmp_path / "hwc.npy", scaling="none", test_fraction=0.5)
    np.testing.assert_array_equal(first.x_train, last.x_train)  # the same images
    np.save(tmp_path / "grey.npy", rng.uniform(0, 1, (30, 1, 28, 28)))  # (N, 1, H, W)
    assert load_array(tmp_path / "grey.npy").example_shape == (28, 28, 1)


@pytest.mark.parametrize("scaling", ["standardize", "unit", "center"])
def test_a_large_offset_is_removed_before_anything_is_rounded(tmp_path, scaling):
    """Columns of 1e7 + N(0, 1) (and unix timestamps) were cast to float32 before the
    scaling, which rounded every value to a multiple of 1 (or 128): the standardised column
    held 3 distinct values, off by up to 0.7 sd, and PCA's error on it was 20x the true one.
    The offset is now removed in float64: the float32 result is the float64 scaling rounded
    once."""
    from ae_jax.data.preprocessing import split_indices

    rng = np.random.default_rng(7)
    n = 400
    base = rng.normal(size=(n, 1))
    x = np.column_stack([1e7 + base + 0.1 * rng.normal(size=(n, 2)), rng.normal(size=n)])
    stamps = 1_700_000_000 + rng.integers(0, 1000, size=(n, 1))  # int64 seconds
    for name, table in (("offset.npy", x), ("stamps.npy", stamps)):
        np.save(tmp_path / name, table)
        ds = load_array(tmp_path / name, scaling=scaling)
        train_rows, _ = split_indices(n, 0.2, 0, None)  # DataConfig's test_fraction and seed
        train = np.asarray(table, dtype=np.float64)[train_rows]
        if scaling == "standardize":
            want = (train - train.mean(0)) / train.std(0)
        else:
            want = (train - train.min(0)) / (train.max(0) - train.min(0))
            if scaling == "center":
                want -= want.mean(0)
        assert ds.x_train.dtype == np.float32  # what the model trains on
        np.testing.assert_allclose(ds.x_train, want, rtol=0, atol=2e-6 * np.abs(want).max())
        assert len(np.unique(ds.x_train[:, 0])) == len(np.unique(train[:, 0]))


def test_npz_with_splits_and_with_x_y(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(
        tmp_path / "s.npz",
        x_train=rng.normal(size=(50, 4)),
        x_test=rng.normal(size=(12, 4)),
        y_train=np.arange(50) % 3,
        y_test=np.arange(12) % 3,
    )
    ds = load_array(tmp_path / "s.npz")
    assert (ds.x_train.shape, ds.x_test.shape, ds.num_classes) == ((50, 4), (12, 4), 3)
    assert ds.y_test.tolist() == (np.arange(12) % 3).tolist()
    np.savez(tmp_path / "xy.npz", x=rng.normal(size=(100, 5, 5)), y=np.arange(100) % 4)
    ds = load_array(tmp_path / "xy.npz", test_fraction=0.4)
    assert ds.x_train.shape == (60, 5, 5, 1) and ds.x_test.shape == (40, 5, 5, 1)
    assert np.bincount(ds.y_test).tolist() == [10, 10, 10, 10]  # stratified


def test_csv_header_label_column_and_test_file(tmp_path):
    rows = "\n".join(f"{i},{i * 2.5},{i % 2}" for i in range(10))
    (tmp_path / "train.csv").write_text("a,b,label\n" + rows + "\n")
    (tmp_path / "test.csv").write_text("3,1.5,1\n20,0,0\n")
    ds = load_array(tmp_path / "train.csv", test_path=str(tmp_path / "test.csv"), label_column=-1)
    assert ds.x_train.shape == (10, 2) and ds.x_test.shape == (2, 2)
    assert ds.y_train.tolist() == [i % 2 for i in range(10)] and ds.y_test.tolist() == [1, 0]
    np.testing.assert_allclose(ds.x_train[:, 0], np.arange(10) / 9, atol=1e-6)
    np.testing.assert_allclose(ds.x_test, [[3 / 9, 1.5 / 22.5], [1.0, 0.0]], atol=1e-6)  # clipped
    (tmp_path / "plain.csv").write_text("1,2\n3,4\n5,6\n7,8\n9,10\n")
    plain = load_array(tmp_path / "plain.csv")
    assert plain.x_train.shape == (4, 2) and plain.x_test.shape == (1, 2)
    # a file is named after itself in logs and errors, unless data.name says otherwise
    assert (ds.name, plain.name) == ("train", "plain")
    for generic in ("array", "digits"):  # conf/data/array.yaml's, or the default group's
        assert load_array(tmp_path / "plain.csv", name=generic).name == "plain"
    assert load_array(tmp_path / "plain.csv", name="mine").name == "mine"


def test_csv_labels_by_column_name_and_as_class_names(tmp_path, caplog):
    """``data.label_column`` takes a header's column name as well as a number, and a label
    column of class names (iris' species) is numbered 0..K-1 in sorted order, the test file's
    by the training file's names; a file whose names are not said to be labels says which
    column to name."""
    species = ["setosa", "virginica", "versicolor"]
    rows = [f"{i},{i % 5 / 2},{species[i % 3]}" for i in range(30)]
    (tmp_path / "train.csv").write_text("len,width,species\n" + "\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text('len,width,species\n3,1,"virginica"\n4,2,setosa\n')
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        ds = load_array(
            tmp_path / "train.csv", test_path=str(tmp_path / "test.csv"), label_column="species"
        )
    assert ds.x_train.shape[1] == 2 and ds.num_classes == 3
    assert "numbered in sorted order: 0 setosa, 1 versicolor, 2 virginica" in caplog.text
    assert ds.y_test.tolist() == [2, 0]
    assert ds.class_names == ("setosa", "versicolor", "virginica")  # kept in run.json too
    from ae_jax.features import run_info

    assert run_info(ds, "linear")["class_names"] == ["setosa", "versicolor", "virginica"]
    test = str(tmp_path / "test.csv")
    numbers = load_array(tmp_path / "train.csv", test_path=test, label_column=2)  # by number
    np.testing.assert_array_equal(numbers.y_train, ds.y_train)
    (tmp_path / "widths.csv").write_text("len,width\n1,0.5\n2,1\n")
    with pytest.raises(DataError, match="not whole numbers"):  # a numeric column, named
        load_array(tmp_path / "widths.csv", label_column="width")
    said = {
        "spieces": r"'spieces' is not a column of CSV file .*train.csv \(did you mean 'species'",
        None: r"field 3, is not a number\).*column 2 \('species'\) holds class labels, set "
        r"data.label_column=2",
    }
    for label_column, message in said.items():
        with pytest.raises(DataError, match=message):
            load_array(tmp_path / "train.csv", label_column=label_column)
    (tmp_path / "unknown.csv").write_text("len,width,species\n3,1,iris\n")
    with pytest.raises(DataError, match=r"unknown.csv \(data.test_path\) has labels 'iris'"):
        load_array(
            tmp_path / "train.csv", test_path=str(tmp_path / "unknown.csv"), label_column="species"
        )
    (tmp_path / "holes.csv").write_text("a,b,c\n1,2,setosa\n3,4,\n")
    with pytest.raises(DataError, match=r"holes.csv: line 3 has no label"):
        load_array(tmp_path / "holes.csv", label_column="c")
    (tmp_path / "plain.csv").write_text("1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match=r"'c' names a column, but .*plain.csv has no header"):
        load_array(tmp_path / "plain.csv", label_column="c")
    # a class of one example, kept in the training split, is named as the file names it
    (tmp_path / "one.csv").write_text("len,width,species\n" + "\n".join(rows) + "\n9,9,dahurica\n")
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        caplog.clear()
        load_array(tmp_path / "one.csv", label_column="species")
    assert "1 class of one example (dahurica) cannot be in both parts" in caplog.text


def test_csv_quoted_numbers_empty_fields_and_a_header_of_years(tmp_path, caplog):
    """Quoted numbers ("1.5", as some spreadsheets write them) are numbers; an empty field is
    named as such, without the advice for a column of class names; a header of years
    (2019,2020,...) above fractional values was read as a data row, and set the scaling."""
    x = np.random.default_rng(0).random((40, 4))
    rows = "\n".join(",".join(f'"{v:.6f}"' for v in r) for r in x)
    (tmp_path / "quoted.csv").write_text('"a","b","c","d"\n' + rows + "\n")
    got = load_array(tmp_path / "quoted.csv", scaling="none", test_fraction=0.25)
    assert np.concatenate([got.x_train, got.x_test]).shape == (40, 4)
    (tmp_path / "hole.csv").write_text("a,b\n1,2\n3,\n")
    with pytest.raises(DataError, match=r"\('' on line 3, field 2, is not a number\)") as err:
        load_array(tmp_path / "hole.csv")
    assert type(err.value) is DataError and "label_column" not in str(err.value)
    (tmp_path / "years.csv").write_text("2019,2020,2021,2022\n" + rows.replace('"', "") + "\n")
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        got = load_array(tmp_path / "years.csv", scaling="none", test_fraction=0.25)
    assert got.x_train.shape[0] + got.x_test.shape[0] == 40 and got.x_train.max() < 1
    assert "its first row, 2019..2022, is read as a header of column numbers" in caplog.text
    # a quoted comma in a header's name (pandas quotes "length, cm") counted as two columns,
    # and every later column was taken one place off: the labels came from the next column
    rows = "\n".join(f"{i / 10},{i % 3},{(i * 7) % 5}" for i in range(40))
    (tmp_path / "comma.csv").write_text('"length, cm",target,visits\n' + rows + "\n")
    got = load_array(tmp_path / "comma.csv", label_column="target", test_path=None)
    assert got.num_classes == 3 and got.x_train.shape[1] == 2
    assert set(got.y_train.tolist()) == {0, 1, 2}  # not the visits 0..4


def test_csv_nan_and_text_are_named(tmp_path):
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n5,6\n")
    with pytest.raises(DataError, match=r"nan.csv holds 1 NaN/inf value \(the first on line 2, f"):
        load_array(tmp_path / "nan.csv")
    (tmp_path / "text.csv").write_text("1,2\n3,abc\n")
    # the file's own line and field (numpy says "row 1, column 2": rows from 0, fields from 1)
    said = r"text.csv cannot be read as a numeric table \('abc' on line 2, field 2, is not a"
    with pytest.raises(DataError, match=said):
        load_array(tmp_path / "text.csv")
    (tmp_path / "text.csv").write_text("a,b\n1,2\n3,4\n5,abc\n")  # after a header
    with pytest.raises(DataError, match=r"\('abc' on line 4, field 2, is not a number\)"):
        load_array(tmp_path / "text.csv")
    (tmp_path / "float_labels.csv").write_text("1,0.5\n2,1\n3,0\n")
    said = r"the labels of data.label_column=1 in .*float_labels.csv are not whole numbers"
    with pytest.raises(DataError, match=said):
        load_array(tmp_path / "float_labels.csv", label_column=1)
    with pytest.raises(DataError, match=r"label_column=5.*valid: -2\.\.1"):
        load_array(tmp_path / "float_labels.csv", label_column=5)


def test_bad_array_shapes_are_named(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    with pytest.raises(DataError, match=r"flat.npy has shape \(10,\); valid: \(N, D\)"):
        load_array(tmp_path / "flat.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(DataError, match=r"empty.npy has shape \(0, 3\)"):
        load_array(tmp_path / "empty.npy")
    (tmp_path / "header_only.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"header_only.csv holds no data rows below its header"):
        load_array(tmp_path / "header_only.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv holds no data rows; give it at least one"):
        load_array(tmp_path / "empty.csv")
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match=r"text.npy has dtype <U1.*numeric"):
        load_array(tmp_path / "text.npy")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DataError, match=r"suffix '.parquet'; valid: .npy, .npz, .csv"):
        load_array(tmp_path / "x.parquet")
    np.savez(tmp_path / "keys.npz", a=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"holds a: a, which no layout reads"):
        load_array(tmp_path / "keys.npz")
    with pytest.raises(DataError, match="data.path is not set"):
        load_dataset(DataConfig(source="array"))


def test_files_that_are_not_what_their_names_say_are_named_for_what_they_are(tmp_path):
    x = np.random.default_rng(0).random((20, 4))
    with open(tmp_path / "archive.npy", "wb") as f:  # np.savez(f, ...) keeps the name
        np.savez(f, x=x)
    (tmp_path / "text.npy").write_text("1,2\n3,4\n")
    (tmp_path / "semi.csv").write_text("a;b;c\n1;2;3\n4;5;6\n")
    (tmp_path / "tabs.csv").write_text("1\t2\t3\n4\t5\t6\n")
    (tmp_path / "ragged.csv").write_text("a,b\n" + "1,2\n" * 10 + "1,2,3\n")
    (tmp_path / "folder").mkdir()
    cases = {
        "archive.npy": "archive.npy is an .npz archive of named arrays, not one .npy array; give",
        "text.npy": "text.npy is not an .npy file (it does not start with numpy's header)",
        "semi.csv": "semi.csv separates its fields with semicolons; only commas are read",
        "tabs.csv": "tabs.csv separates its fields with tabs; only commas are read",
        "ragged.csv": "(line 12 has 3 fields, the lines above 2)",  # numpy said "row 11"
        "folder": "folder is a directory; data.path must name a .npy/.npz/.csv file",
    }
    for name, said in cases.items():
        with pytest.raises(DataError, match=re.escape(said)):
            load_array(tmp_path / name)
    with pytest.raises(DataError, match=re.escape(f"nope.csv (relative to {Path.cwd()}) does not")):
        load_array(Path("nope.csv"))


def test_a_column_constant_on_the_training_split_is_said_once(tmp_path, caplog):
    # standardize divided such a column by 1: its test values stayed in the file's units
    # (a test MSE of 1964 on data scaled to unit variance), and nothing said why
    rng = np.random.default_rng(0)
    train = np.column_stack([np.full(40, 5.0), rng.normal(size=(40, 2)), np.full(40, 1.0)])
    test = np.column_stack([5 + 100 * rng.normal(size=10), rng.normal(size=(10, 2)), np.ones(10)])
    np.savez(tmp_path / "t.npz", x_train=train, x_test=test)
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        load_array(tmp_path / "t.npz", scaling="standardize")
    said = [r.getMessage() for r in caplog.records if "hold one value" in r.getMessage()]
    assert said == [
        "t: 2 feature column(s) hold one value across the training split (column 0, 3): "
        "nothing to learn from them; 1 of them vary in the held-out data, which "
        "data.scaling=standardize only centres there: the test error on them is not on the "
        "others' scale"
    ], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        load_array(tmp_path / "t.npz", scaling="none")  # nothing fitted: nothing to say
    assert "hold one value" not in caplog.text


def test_mismatched_test_file_and_one_sided_labels(tmp_path):
    np.save(tmp_path / "train.npy", np.zeros((10, 4)))
    np.save(tmp_path / "test.npy", np.zeros((5, 3)))
    with pytest.raises(DataError, match=r"test.npy has examples of shape \(3,\).*shape \(4,\)"):
        load_array(tmp_path / "train.npy", test_path=str(tmp_path / "test.npy"))
    np.savez(
        tmp_path / "half.npz", x_train=np.zeros((10, 2)), x_test=np.zeros((4, 2)), y_train=[0] * 10
    )
    with pytest.raises(DataError, match="labels are given for the training examples only"):
        load_array(tmp_path / "half.npz")


def test_damaged_or_ambiguous_npz_files_are_one_data_error(tmp_path):
    # A damaged archive was a zipfile traceback; x beside x_test trained on x alone (the test
    # examples unused), x beside x_train and x_test trained on every row, test ones included
    x = np.random.default_rng(0).random((20, 4))
    np.savez(tmp_path / "good.npz", x=x)
    good = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "half.npz").write_bytes(good[: len(good) // 2])
    np.save(tmp_path / "one.npy", x)
    (tmp_path / "one.npz").write_bytes((tmp_path / "one.npy").read_bytes())
    np.savez(tmp_path / "both.npz", x=x, x_test=x[:5])
    np.savez(tmp_path / "three.npz", x=x, x_train=x[:15], x_test=x[15:])
    np.savez(tmp_path / "upper.npz", X=x)
    np.savez(tmp_path / "stray.npz", x_train=x[:15], x_test=x[15:], y=np.zeros(20, int))
    cases = {
        "half.npz": "cannot be read as .npz (File is not a zip file)",
        "one.npz": "holds one .npy array, not an .npz archive",
        "both.npz": "holds x, x_test: x beside x_test, two layouts at once",
        "three.npz": "x beside x_test and x_train, two layouts at once",
        "upper.npz": "holds X: X, which no layout reads",
        "stray.npz": "labels y without their examples",
    }
    for name, said in cases.items():
        with pytest.raises(DataError, match=re.escape(said)):
            load_array(tmp_path / name)
    assert load_array(tmp_path / "good.npz").x_train.shape == (16, 4)


def test_csv_headers_pandas_writes_and_a_byte_order_mark_are_read_as_such(tmp_path, caplog):
    x = np.random.default_rng(0).random((50, 4))
    rows = "\n".join(",".join(f"{v:.6f}" for v in r) for r in x)
    cases = {
        "pandas.csv": "0,1,2,3\n" + rows,  # DataFrame(x).to_csv(index=False): read as data
        "some.csv": "id,2019,2020,y\n" + rows,  # names, some of them numbers
        "bom.csv": "\ufeff" + rows,  # Excel's "CSV UTF-8", no header
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        loaded = load_array(tmp_path / name, scaling="none", test_fraction=0.2)
        got = np.concatenate([loaded.x_train, loaded.x_test])
        assert got.shape == (50, 4), name
        np.testing.assert_allclose(np.sort(got, axis=0), np.sort(x, axis=0), atol=1e-6)
    # pandas' default to_csv: a first column of row numbers under an empty header field was
    # trained on as a feature (named columns) or refused (unnamed): it is left out, said once
    two = "0,1\n" + "\n".join(",".join(f"{v:.6f}" for v in r[:2]) for r in x)
    (tmp_path / "two.csv").write_text(two)  # DataFrame(x[:, :2]).to_csv(index=False)
    for name, head in (("index.csv", ",0,1,2,3"), ("named.csv", ",a,b,c,d")):
        (tmp_path / name).write_text(
            head + "\n" + "\n".join(f"{i}," + r for i, r in enumerate(rows.splitlines()))
        )
    for name, width in (("index.csv", 4), ("named.csv", 4), ("two.csv", 2)):
        with caplog.at_level(logging.WARNING, logger="ae_jax"):
            caplog.clear()
            loaded = load_array(tmp_path / name, scaling="none", test_fraction=0.2)
        got = np.concatenate([loaded.x_train, loaded.x_test])
        assert got.shape == (50, width), name
        np.testing.assert_allclose(np.sort(got, axis=0), np.sort(x[:, :width], axis=0), atol=1e-6)
        said = "the first column has an empty header, as pandas' to_csv writes for its row index"
        assert (said in caplog.text) == (name != "two.csv"), caplog.text


def test_values_beyond_float32_or_too_large_to_train_unscaled_are_named(tmp_path):
    x = np.random.default_rng(0).random((50, 4))
    np.save(tmp_path / "beyond.npy", x * 1e39)  # finite here, inf in float32
    with pytest.raises(DataError, match=r"values up to .*e\+3[89], beyond float32's range"):
        load_array(tmp_path / "beyond.npy")
    np.save(tmp_path / "huge.npy", x * 1e30)  # trains to inf at step 1, blamed on the rate
    with pytest.raises(DataError, match=r"after data.scaling=none overflow float32"):
        load_array(tmp_path / "huge.npy", scaling="none")
    assert load_array(tmp_path / "huge.npy", scaling="unit").x_train.max() <= 1.0


def test_one_training_example_is_refused_where_a_fitted_scaling_would_zero_it(tmp_path):
    # min-max scaling fitted on one example mapped every value of every split to 0, and the
    # run "succeeded" with pca_mse 0
    (tmp_path / "two.csv").write_text("0.1,0.5,0.9\n0.3,0.2,0.7\n")
    with pytest.raises(DataError, match=r"two: 1 training example is left.*at least 2"):
        load_array(tmp_path / "two.csv", test_fraction=0.5)
    assert load_array(tmp_path / "two.csv", test_fraction=0.5, scaling="none").x_train.shape == (
        1,
        3,
    )


def test_labels_that_are_ids_not_class_indices_are_refused(tmp_path):
    # {0, 1e6, 2e6} made a 2,000,001-class probe that ran with no end in sight
    x = np.random.default_rng(0).random((30, 4))
    np.savez(tmp_path / "ids.npz", x=x, y=np.repeat([0, 1_000_000, 2_000_000], 10))
    with pytest.raises(DataError, match=r"3 distinct values up to 2000000.*renumber them 0..2"):
        load_array(tmp_path / "ids.npz")
    np.savez(tmp_path / "sparse.npz", x=x, y=np.repeat([0, 5, 9], 10))  # unused classes: fine
    assert load_array(tmp_path / "sparse.npz").num_classes == 10


@pytest.mark.parametrize(
    ("source", "key", "value"),
    [
        ("digits", "path", "mine.csv"),
        ("digits", "label_column", 3),
        ("tfds", "test_path", "test.csv"),
        ("idx", "manual_dir", "/data"),
        ("array", "tfds_name", "mnist"),
    ],
)
def test_a_setting_the_source_does_not_read_is_refused(source, key, value):
    # data.path=my.csv without data=array trained on digits, silently
    cfg = DataConfig(source=source, **{key: value})
    if source == "tfds":
        cfg.tfds_name = "mnist"
    if source in ("idx", "array"):
        cfg.path = "somewhere"
    with pytest.raises(
        DataError, match=rf"data.{key}={value!r} is not read by data.source={source}"
    ):
        load_dataset(cfg)


def test_a_missing_test_file_names_its_own_key(tmp_path):
    np.save(tmp_path / "train.npy", np.zeros((10, 4)))
    with pytest.raises(DataError, match=r"nope.csv does not exist; data.test_path must name"):
        load_array(tmp_path / "train.npy", test_path=str(tmp_path / "nope.csv"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match=r"dir.csv is a directory; data.path must name"):
        load_array(tmp_path / "dir.csv")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, "0.2", True])
def test_bad_test_fraction_is_named(fraction):
    with pytest.raises(DataError, match=rf"test_fraction={fraction!r}.*\(0, 1\)"):
        load_dataset(DataConfig(test_fraction=fraction))


@pytest.mark.parametrize(("key", "value"), [("max_train", 0), ("max_test", -3), ("max_train", 2.5)])
def test_bad_limit_is_named(key, value):
    with pytest.raises(DataError, match=rf"data.{key}={value}.*positive integer"):
        load_dataset(DataConfig(**{key: value}))


def test_limit_beyond_the_data_names_both_counts():
    with pytest.raises(DataError, match=r"max_train=5000 is larger than the 1437 examples"):
        load_dataset(DataConfig(max_train=5000))
    with pytest.raises(DataError, match=r"max_test=361 is larger than the 360 examples"):
        load_dataset(DataConfig(max_test=361))


def test_unknown_source_and_scaling_are_named():
    with pytest.raises(DataError, match=r"source='hdf5'.*digits, tfds, idx, array"):
        load_dataset(DataConfig(source="hdf5"))
    with pytest.raises(DataError, match=r"scaling='minmax'.*auto, unit, standardize, center, none"):
        load_dataset(DataConfig(scaling="minmax"))


def test_dataset_refuses_malformed_arrays():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(DataError, match="x_train has dtype float64"):
        Dataset("t", x.astype(np.float64), None, x, None, (2,), False, "none")
    with pytest.raises(DataError, match="labels for only one split"):
        Dataset("t", x, np.zeros(3, np.int32), x, None, (2,), False, "none")
    with pytest.raises(DataError, match=r"x_test has shape \(3, 2\).*\(4,\)"):
        Dataset("t", np.zeros((3, 4), np.float32), None, x, None, (4,), False, "none")


def compose_data(name: str, overrides: tuple[str, ...] = ()):
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=None, overrides=[f"+data={name}", *overrides]).data


def test_every_data_config_composes(monkeypatch, mnist_path, tmp_path):
    monkeypatch.setenv("AE_JAX_MNIST_DIR", str(mnist_path))
    monkeypatch.delenv("AE_JAX_FASHION_MNIST_DIR", raising=False)
    names = sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml"))
    assert names == ["array", "digits", "fashion_mnist", "idx", "mnist"]
    expected = {"array": "array", "digits": "digits", "fashion_mnist": "tfds", "idx": "idx"}
    for name in names:
        cfg = compose_data(name)
        assert cfg.source == expected.get(name, "tfds")
    assert compose_data("mnist").manual_dir == str(mnist_path)
    assert compose_data("fashion_mnist").manual_dir is None
    assert compose_data("idx").path == str(mnist_path)
    ds = load_dataset(compose_data("idx", ("data.max_train=64",)))
    assert ds.x_train.shape == (64, 28, 28, 1)
    assert load_dataset(compose_data("digits")).x_test.shape == (360, 8, 8, 1)
    assert (
        load_dataset({"source": "idx", "path": str(mnist_path), "max_test": 5}).x_test.shape[0] == 5
    )
    with pytest.raises(DataError, match="data.path is not set; data.source=array"):
        load_dataset(compose_data("array"))
    monkeypatch.delenv("AE_JAX_MNIST_DIR")
    # the line names the variable conf/data/idx.yaml reads, which a fresh shell lacks
    with pytest.raises(DataError, match=r"data.path is not set; data.source=idx.*AE_JAX_MNIST"):
        load_dataset(compose_data("idx"))
    # a relative directory that is not there is shown as the directory it was looked for in
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=re.escape(f"mnist ({tmp_path.resolve() / 'mnist'}) does")):
        load_dataset({"source": "idx", "path": "mnist"})


def test_tfds_mnist_offline_matches_the_idx_reader(tmp_path, mnist_path, mnist_idx, capsys, caplog):
    require_tensorflow()
    cfg = DataConfig(
        source="tfds",
        name="mnist",
        tfds_name="mnist",
        manual_dir=str(mnist_path),
        data_dir=str(tmp_path / "tfds"),
    )
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        ds = load_dataset(cfg)
    # tfds printed "Downloading and preparing dataset Unknown size ..." of local files, past
    # the log (train.log had no line of it); now one line of ours, the first time only
    assert "Download" not in capsys.readouterr().out
    said = f"mnist: preparing tensorflow-datasets' copy in {tmp_path / 'tfds'}"
    assert sum(said in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        load_dataset(dataclasses.replace(cfg, max_train=10, max_test=10))
    assert not any("preparing" in r.getMessage() for r in caplog.records)
    ref, _ = mnist_idx
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.scaling == "unit" and ds.in_unit_interval
    # Same examples, different order: TFDS stores them shuffled by a hash of their index.
    for a, b, ya, yb in (
        (ds.x_train, ref.x_train, ds.y_train, ref.y_train),
        (ds.x_test, ref.x_test, ds.y_test, ref.y_test),
    ):
        assert np.bincount(ya).tolist() == np.bincount(yb).tolist()
        np.testing.assert_array_equal(
            np.sort(a.sum(axis=(1, 2, 3))), np.sort(b.sum(axis=(1, 2, 3)))
        )
        # An exact permutation of the IDX order, each image keeping its label: equal multisets
        # of (image bytes, label) pairs, compared through a 128-bit digest of each image.
        assert labelled_digests(a, ya) == labelled_digests(b, yb)
    assert not np.array_equal(ds.y_train, ref.y_train)  # ... and not the identity


def test_tfds_refuses_unknown_builder_and_missing_files(tmp_path, mnist_path):
    require_tensorflow()
    with pytest.raises(DataError, match=r"tfds_name='mnistt'.*valid names include mnist"):
        load_dataset(DataConfig(source="tfds", tfds_name="mnistt", data_dir=str(tmp_path)))
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (partial / name).symlink_to(mnist_path / name)
    cfg = DataConfig(
        source="tfds", tfds_name="mnist", manual_dir=str(partial), data_dir=str(tmp_path)
    )
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"lacks t10k-images-idx3-ubyte.gz, t10k-labels"):
        load_dataset(cfg)
    assert time.perf_counter() - start < 10  # refused up front, not after network retries


def test_a_manual_file_that_is_not_the_official_one_is_named_in_one_line(tmp_path, mnist_path):
    # A truncated copy (an interrupted download): tensorflow-datasets' checksum error is five
    # lines of UrlInfo reprs; the run's error names the file and both sizes in one line.
    require_tensorflow()
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("t10k-images", "t10k-labels", "train-labels"):
        name += "-idx3-ubyte.gz" if "images" in name else "-idx1-ubyte.gz"
        (manual / name).symlink_to(mnist_path / name)
    truncated = manual / "train-images-idx3-ubyte.gz"
    truncated.write_bytes((mnist_path / truncated.name).read_bytes()[:5_000_000])
    cfg = DataConfig(
        source="tfds", tfds_name="mnist", manual_dir=str(manual), data_dir=str(tmp_path / "tfds")
    )
    with pytest.raises(DataError) as err:
        load_dataset(cfg)
    line = str(err.value)
    assert "\n" not in line
    assert line.endswith(
        f"{truncated} is not the official file (its checksum differs; 4.77 MiB, the official "
        "one is 9.45 MiB): replace it with the official file"
    ), line


def test_tfds_offline_download_is_refused_up_front_naming_the_files(tmp_path, monkeypatch):
    """Without data.manual_dir and without the network, tensorflow-datasets retried the
    download for minutes, and the run then ended as "RunDirError: a file: HTTPConnectionPool"."""
    require_tensorflow()
    import socket

    from ae_jax import network

    attempts = []

    def no_network(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(101, "Network is unreachable")

    for var in network.PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    cfg = DataConfig(source="tfds", tfds_name="fashion_mnist", data_dir=str(tmp_path / "tfds"))
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_dataset(cfg)
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert message.startswith("fashion_mnist is not in ") and str(tmp_path / "tfds") in message
    assert "fashion-mnist.s3-website.eu-central-1.amazonaws.com:80 cannot be reached" in message
    assert "train-images-idx3-ubyte.gz" in message and "set data.manual_dir" in message
    assert attempts and len(message.splitlines()) == 1
    # behind a proxy the hosts cannot be tested directly: the download is left to try
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    attempts.clear()
    assert network.unreachable(["https://example.invalid/x.gz"]) is None and not attempts


def test_a_failed_tfds_download_is_one_data_error():
    from ae_jax.data import tfds_source

    class Builder:  # a builder whose hosts answer but whose download fails
        name, data_dir, url_infos = "somedata", "/tmp/tfds/somedata/1.0.0", {}

        def download_and_prepare(self):
            raise ConnectionError("Connection reset by peer")

    with pytest.raises(DataError, match=r"could not download somedata into /tmp/tfds/somedata"):
        tfds_source._download(Builder())


@pytest.mark.parametrize("module", ["tensorflow", "tensorflow_datasets"])
def test_tfds_without_tensorflow_falls_back_to_idx(
    monkeypatch, capsys, mnist_path, mnist_idx, module
):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` raise ImportError
    cfg = DataConfig(source="tfds", tfds_name="mnist", manual_dir=str(mnist_path), max_test=100)
    ds = load_dataset(cfg)
    notice = capsys.readouterr().out.strip().splitlines()
    assert len(notice) == 1 and "reading the IDX files in" in notice[0]
    ref, _ = mnist_idx
    np.testing.assert_array_equal(ds.x_train, ref.x_train)
    np.testing.assert_array_equal(ds.y_test, ref.y_test[:100])
    with pytest.raises(DataError, match=r'pip install -e "\.\[tfds\]".*data=idx data.path='):
        load_dataset(DataConfig(source="tfds", tfds_name="mnist"))


def test_tfds_needs_a_builder_name():
    with pytest.raises(DataError, match="needs data.tfds_name"):
        load_dataset(DataConfig(source="tfds"))


def test_center_removes_the_training_mean_of_each_feature(tmp_path):
    """``data.scaling=center``: unit scaling, then each feature's training mean subtracted
    (each pixel's for images: the mean image), the same mean applied to the held-out splits."""
    unit = load_dataset(DataConfig(scaling="unit", validation=100))
    centred = load_dataset(DataConfig(scaling="center", validation=100))
    assert centred.scaling == "center" and not centred.in_unit_interval
    mean = unit.x_train.mean(axis=0, dtype=np.float64)  # (8, 8, 1): per pixel, not one scalar
    assert np.ptp(mean) > 0.5
    np.testing.assert_allclose(centred.x_train.mean(axis=0), 0, atol=1e-6)
    for split in ("x_train", "x_val", "x_test"):
        np.testing.assert_allclose(
            getattr(centred, split), getattr(unit, split) - mean, atol=1e-6, err_msg=split
        )
    rng = np.random.default_rng(4)
    x = np.column_stack([rng.normal(5, 3, 80), np.full(80, 7.0)])
    np.save(tmp_path / "x.npy", x)
    table = load_array(tmp_path / "x.npy", scaling="center")  # min-max, then the column means
    unit_table = load_array(tmp_path / "x.npy", scaling="unit")
    np.testing.assert_allclose(
        table.x_test, unit_table.x_test - unit_table.x_train.mean(0), atol=1e-6
    )
    np.testing.assert_allclose(table.x_train.mean(0), [0, 0], atol=1e-6)


def test_the_fingerprint_changes_with_any_value_or_label_not_the_name(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 8)).astype(np.float32), rng.integers(0, 3, 50)
    path = tmp_path / "xy.npz"

    def fingerprint(x, y, **settings):
        np.savez(path, x=x, y=y)
        return load_array(path, test_fraction=0.2, **settings).fingerprint

    base = fingerprint(x, y)
    assert fingerprint(x, y, name="other") == base and len(base) == 40
    x2 = x.copy()
    x2[7, 3] += 1e-3
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 3
    assert len({base, fingerprint(x2, y), fingerprint(x, y2)}) == 3
    assert fingerprint(x, y, validation=0.2) != base  # another split of the same rows


def test_held_out_values_clipped_by_unit_scaling_are_said_to_be(caplog):
    # A test file whose values lie past the training range was clipped to [0, 1] without a
    # word, and its metrics scored changed data. A random split's few extremes are not said.
    import logging

    from ae_jax.data.preprocessing import unit_scale

    rng = np.random.default_rng(0)
    train = rng.uniform(size=(1000, 3)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        unit_scale(train.copy(), rng.uniform(size=(200, 3)).astype(np.float32), is_image=False)
        assert not caplog.text
        shifted = rng.uniform(-1, 2, size=(20, 3)).astype(np.float32)
        (_, clipped) = unit_scale(train.copy(), shifted, is_image=False)
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert "data.scaling=unit: " in caplog.text and "of the held-out values (" in caplog.text
    assert "clipped to [0, 1]" in caplog.text
    caplog.clear()  # every value outside, under data.scaling=center: it said "unit", "1e+02%"
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        unit_scale(train.copy(), train[:5] + 2, is_image=False, setting="center")
    assert "data.scaling=center: 15 of the held-out values (100%) lie outside" in caplog.text
