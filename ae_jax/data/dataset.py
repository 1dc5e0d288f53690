"""The in-memory `Dataset` that every data source returns, and `DataError`, which they raise.

A `Dataset` holds a fixed train/test split (and optionally a validation split carved out of
the training data) as float32 numpy arrays, already scaled, with the
per-example shape kept (``(H, W, C)`` for images, ``(D,)`` for tabular rows). Its constructor
checks the invariants that models and trainers rely on, so a source cannot hand back a
malformed dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

APPLIED_SCALINGS = ("unit", "standardize", "center", "none")


class DataError(ValueError):
    """A data source, file or setting is unusable; the message names the value and what is valid."""


def _check_x(key: str, x: np.ndarray, example_shape: tuple[int, ...]) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        found = getattr(x, "dtype", type(x).__name__)
        raise DataError(f"Dataset.{key} has dtype {found}; it must be a float32 numpy array")
    if x.shape[1:] != example_shape or x.shape[0] < 1:
        raise DataError(
            f"Dataset.{key} has shape {x.shape}; it must be (N >= 1, *example_shape) with "
            f"example_shape={example_shape}"
        )
    if not x.flags.c_contiguous:
        raise DataError(f"Dataset.{key} is not C-contiguous; pass np.ascontiguousarray(x)")


def _check_y(key: str, y: np.ndarray, n: int) -> None:
    if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.shape != (n,):
        found = f"{getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}"
        raise DataError(f"Dataset.{key} is {found}; it must be an int32 array of shape ({n},)")
    if n and y.min() < 0:
        raise DataError(f"Dataset.{key} holds the label {int(y.min())}; labels must be >= 0")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A scaled train/test split held in memory.

    Attributes:
        name: label for reports and figures.
        x_train: float32 ``(N_train, *example_shape)``, C-contiguous.
        y_train: int32 ``(N_train,)`` class labels, or None when the source has none.
        x_test: float32 ``(N_test, *example_shape)``, C-contiguous.
        y_test: int32 ``(N_test,)`` or None (None exactly when ``y_train`` is None).
        example_shape: ``(H, W, C)`` for images, ``(D,)`` for tabular data.
        is_image: True for ``(H, W, C)`` examples.
        scaling: what was applied to the raw values: ``unit``, ``standardize``, ``center`` or
            ``none``.
        x_val: float32 ``(N_val, *example_shape)`` carved out of the training split
            (``data.validation``) for model selection and early stopping, or None.
        y_val: int32 ``(N_val,)`` or None (labelled exactly when the other splits are).
        class_names: label i's name, when the source gave the labels as names (a CSV's
            ``data.label_column`` of names), else None; written to ``run.json``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    example_shape: tuple[int, ...]
    is_image: bool
    scaling: str
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None  # label i's name, when the source gave names

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.example_shape)
        object.__setattr__(self, "example_shape", shape)
        if self.is_image != (len(shape) == 3):
            raise DataError(
                f"Dataset.example_shape={shape} with is_image={self.is_image}; images are "
                "(H, W, C), tabular examples are (D,)"
            )
        if len(shape) not in (1, 3) or min(shape) < 1:
            raise DataError(f"Dataset.example_shape={shape} is not valid; use (D,) or (H, W, C)")
        if self.scaling not in APPLIED_SCALINGS:
            raise DataError(
                f"Dataset.scaling={self.scaling!r} is not valid; choose one of: "
                f"{', '.join(APPLIED_SCALINGS)}"
            )
        _check_x("x_train", self.x_train, shape)
        _check_x("x_test", self.x_test, shape)
        if (self.y_train is None) != (self.y_test is None):
            raise DataError(
                "Dataset has labels for only one split; give both y_train and y_test, or neither"
            )
        if self.y_train is not None:
            _check_y("y_train", self.y_train, self.x_train.shape[0])
            _check_y("y_test", self.y_test, self.x_test.shape[0])
        if self.x_val is None:
            if self.y_val is not None:
                raise DataError("Dataset.y_val is set without x_val; give both or neither")
            return
        _check_x("x_val", self.x_val, shape)
        if (self.y_val is None) != (self.y_train is None):
            raise DataError(
                "Dataset.y_val must be given exactly when the other splits are labelled"
            )
        if self.y_val is not None:
            _check_y("y_val", self.y_val, self.x_val.shape[0])

    @property
    def splits(self) -> tuple[np.ndarray, ...]:
        """Every split's inputs: train, test, and validation when there is one."""
        return tuple(x for x in (self.x_train, self.x_test, self.x_val) if x is not None)

    @property
    def num_features(self) -> int:
        """Values per example: ``prod(example_shape)`` (784 for MNIST, 64 for digits)."""
        return math.prod(self.example_shape)

    @cached_property
    def in_unit_interval(self) -> bool:
        """True when every value of every split lies in [0, 1] (what sigmoid outputs / BCE need)."""
        return all(float(x.min()) >= 0.0 and float(x.max()) <= 1.0 for x in self.splits)

    @cached_property
    def num_classes(self) -> int | None:
        """Largest label + 1 over all splits (labels index classes 0..K-1); None if unlabelled."""
        if self.y_train is None:
            return None
        labels = (y for y in (self.y_train, self.y_test, self.y_val) if y is not None)
        return int(max(y.max() for y in labels)) + 1

    @cached_property
    def fingerprint(self) -> str:
        """A digest of every split's examples and labels (values, shapes, dtypes; not the
        name): equal exactly when a run would see the same data. A run records it in its
        ``run.json`` so that a rerun on changed data is refused instead of resumed
        (~0.1 s for MNIST's 190 MB; a fingerprint, not a signature)."""
        import hashlib

        digest = hashlib.sha1()
        for array in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            if array is None:
                digest.update(b"none;")
                continue
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape};".encode())
            digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()

    def __repr__(self) -> str:
        labels = "unlabelled" if self.y_train is None else f"{self.num_classes} classes"
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape[0]}, "
            f"test={self.x_test.shape[0]}, "
            + ("" if self.x_val is None else f"val={self.x_val.shape[0]}, ")
            + f"example_shape={self.example_shape}, {labels}, "
            f"scaling={self.scaling!r})"
        )
