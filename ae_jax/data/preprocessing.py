"""Turning a source's raw arrays into a `Dataset`: the seeded split, the scaling, the subsampling.

Every source (digits, IDX, TFDS, arrays) returns a `RawData` with its values untouched (uint8
pixels stay uint8); `build_dataset` then applies, in this order:

1. the held-out split, when the source has no test split (seeded, stratified when labelled);
2. the validation split (``data.validation``): a seeded, stratified part of the training split,
   for model selection and early stopping; the test split is never touched by it;
3. the scaling, with statistics fitted on what remains for training only, so that no validation
   or test statistic leaks into training;
4. ``max_train`` / ``max_test``: the first N examples of each split. Scaling comes before this
   step so that a smoke run sees exactly the values of the full run for the examples it keeps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from ae_jax.data.dataset import DataError, Dataset

log = logging.getLogger("ae_jax")


@dataclass
class RawData:
    """A source's unscaled arrays; ``x_test`` is None when the source has no test split.

    ``image_max`` is the largest value the format can hold (255 for 8-bit pixels, 16 for the
    digits set, 1 for images already in [0, 1]); it is None when the range is unknown and must
    be fitted on the data.
    """

    x_train: np.ndarray  # (N, *example_shape), any real dtype
    y_train: np.ndarray | None  # (N,) integer labels or None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    is_image: bool
    image_max: float | None = None
    class_names: tuple[str, ...] | None = None  # label i's name (a CSV's column of names)


def check_test_fraction(test_fraction: object) -> float:
    """``test_fraction`` as a float in (0, 1), or a DataError naming it."""
    ok = isinstance(test_fraction, Real) and not isinstance(test_fraction, bool)
    if not ok or not 0.0 < float(test_fraction) < 1.0:
        raise DataError(
            f"data.test_fraction={test_fraction!r} is not valid; it must be a number in (0, 1), "
            "e.g. 0.2 to hold out a fifth of the examples"
        )
    return float(test_fraction)


def check_validation(validation: object) -> float:
    """``data.validation``: 0 (none), a fraction in (0, 1), or a whole count >= 1."""
    ok = isinstance(validation, Real) and not isinstance(validation, bool)
    v = float(validation) if ok else math.nan
    if not ok or not math.isfinite(v) or v < 0 or (v >= 1 and v != int(v)):
        raise DataError(
            f"data.validation={validation!r} is not valid; give 0 (no validation split), a "
            "fraction of the training split in (0, 1) such as 0.1, or a whole count such as 5000"
        )
    return v


def validation_count(validation: float, n: int) -> int:
    """How many of ``n`` training examples ``data.validation`` holds out (0: none)."""
    if validation == 0:
        return 0
    count = math.ceil(validation * n) if validation < 1 else int(validation)
    if count >= n:
        most = math.floor((n - 1) / n * 1000) / 1000  # the largest 3-digit fraction leaving one
        if n < 2:
            raise DataError(
                f"data.validation={validation:g}: the training split has {n} example, none to "
                "spare for validation; set data.validation=0"
            )
        fraction = f"a fraction of at most {most:g}"
        raise DataError(
            f"data.validation={validation:g} holds out {count} of the {n} training examples, "
            f"leaving none to train on; valid here: {fraction} or a count in 1..{n - 1}"
        )
    if validation == 1:  # 1 and 1.0 are one value in the schema: say which reading was taken
        log.warning(
            "data.validation=1 is read as a count: one validation example. For a fraction of "
            "the training split give a value below 1, such as 0.1"
        )
    return count


def check_limit(key: str, value: object) -> int | None:
    """``max_train`` / ``max_test``: None or a positive integer, else a DataError naming it."""
    if value is None:
        return None
    if not isinstance(value, Integral) or isinstance(value, bool) or value <= 0:
        raise DataError(f"data.{key}={value!r} is not valid; it must be a positive integer or null")
    return int(value)


def check_seed(seed: object) -> int:
    """``split_seed`` as an int in [0, 2**32), the range numpy's seeding accepts."""
    if not isinstance(seed, Integral) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise DataError(
            f"data.split_seed={seed!r} is not valid; it must be an integer in [0, 2**32)"
        )
    return int(seed)


def split_indices(
    n: int,
    test_fraction: float,
    seed: int,
    labels: np.ndarray | None = None,
    count: int | None = None,
    class_names: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) index arrays, ``ceil(test_fraction * n)`` (or ``count``) of them held
    out.

    With labels whose every class has at least two examples, the split is stratified (class
    proportions kept in both parts, as ``sklearn.model_selection.train_test_split`` does).
    A class of one example, which no split can hold in both parts, stays in the training
    split (said in a warning), and the others are stratified; scikit-learn refuses such
    labels, and a plain permutation put the one example in the held-out part as often as not,
    a class no classifier had seen. Without labels, or with too few examples for a class in
    each part, it is a plain seeded permutation. Both are deterministic given ``seed``.
    ``class_names`` (label i's name) names the classes in the warning.
    """
    n_test = math.ceil(test_fraction * n) if count is None else count
    if n < 2 or n_test >= n:
        raise DataError(
            f"cannot hold out data.test_fraction={test_fraction} of {n} examples: that leaves "
            f"{n - n_test} for training; give more examples or a separate test split"
        )
    rng = np.random.RandomState(seed)
    if labels is not None:
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        alone = np.flatnonzero(np.isin(inverse, np.flatnonzero(counts == 1)))
        rest = np.setdiff1d(np.arange(n), alone)
        k = int(np.sum(counts >= 2))
        # a few such classes (not labels of which most values are single: a measured target)
        few = alone.size <= max(2, n // 100)
        if k and few and n_test >= k and rest.size - n_test >= k:
            if alone.size:
                single = classes[counts == 1][:5].tolist()
                shown = ", ".join(str(c if class_names is None else class_names[c]) for c in single)
                log.warning(
                    "%d class%s of one example (%s%s) cannot be in both parts of a split: "
                    "kept in the training split, the other classes stratified",
                    alone.size,
                    "es" if alone.size > 1 else "",
                    shown,
                    ", ..." if alone.size > 5 else "",
                )
            _, inv, cnt = np.unique(inverse[rest], return_inverse=True, return_counts=True)
            train, test = _stratified_split(inv.reshape(-1), cnt, rest.size - n_test, n_test, rng)
            return np.concatenate([rest[train], alone]), rest[test]
    permutation = rng.permutation(n)
    return permutation[n_test:], permutation[:n_test]


# scikit-learn's train_test_split (StratifiedShuffleSplit, ShuffleSplit), draw for draw: the
# same seeded splits, without importing scikit-learn at every run's start (a second or more).
# tests/test_data.py checks them against scikit-learn's own.
def _stratified_split(y_indices, class_counts, n_train: int, n_test: int, rng):
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(class_counts)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts, n_draws: int, rng) -> np.ndarray:
    """The most likely per-class counts of ``n_draws`` draws without replacement (ties broken
    by ``rng``), as scikit-learn computes them."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _stat_axes(x: np.ndarray, is_image: bool) -> tuple[int, ...]:
    # Images share one scale per channel: per-pixel statistics would blow up pixels that are
    # almost always 0 (MNIST's border). Tabular columns have their own units: per feature.
    return tuple(range(x.ndim - 1)) if is_image else (0,)


CLIPPED_WARN = 0.01  # the share of held-out values clipped by unit scaling that is said


def percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a percentage for a line of text: 2.4%, 100%, 0.013%."""
    share = 100.0 * part / whole
    return f"{share:.3g}%" if share < 10 else f"{share:.0f}%"


def unit_scale(
    x_train: np.ndarray, *others: np.ndarray, is_image: bool, setting: str = "unit"
) -> tuple[np.ndarray, ...]:
    """Min-max scaling fitted on train: ``x' = (x - min) / (max - min)``, in place (in the
    arrays' own float type), applied to ``x_train`` and every other split given; ``setting``:
    the data.scaling that asked for it (``center`` scales to [0, 1] first), as its warning says.

    Statistics per feature (tabular) or per channel (images). A constant feature
    (``max == min``) maps to 0 in every split; held-out values outside the train range are
    clipped to [0, 1] (train values are clipped only against rounding).
    """
    axes = _stat_axes(x_train, is_image)
    lo = x_train.min(axis=axes, keepdims=True).astype(np.float64)  # (1, ..., F)
    span = x_train.max(axis=axes, keepdims=True).astype(np.float64) - lo
    inv = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0)
    outside, total = 0, 0
    for i, x in enumerate((x_train, *others)):
        x -= lo.astype(x.dtype)
        x *= inv.astype(x.dtype)
        if i:  # a held-out split beyond the training range (more than rounding)
            outside += int(np.count_nonzero((x < -1e-6) | (x > 1 + 1e-6)))
            total += x.size
        np.clip(x, 0.0, 1.0, out=x)
    if outside > CLIPPED_WARN * total:  # a few, past a random split's extremes: as expected
        log.warning(
            "data.scaling=%s: %d of the held-out values (%s) lie outside the training "
            "split's range and are clipped to [0, 1], so the held-out metrics score changed "
            "data; data.scaling=standardize keeps them as they are",
            setting,
            outside,
            percent(outside, total),
        )
    return (x_train, *others)


def standardize(x_train: np.ndarray, *others: np.ndarray, is_image: bool) -> tuple[np.ndarray, ...]:
    """Standardization fitted on train: ``x' = (x - mean) / std``, in place (in the arrays' own
    float type), applied to ``x_train`` and every other split given.

    Statistics per feature (tabular) or per channel (images, e.g. MNIST's 0.1307 / 0.3081);
    accumulated in float64. A feature with ``std == 0`` uses 1, so it is only centred.
    """
    axes = _stat_axes(x_train, is_image)
    mean = x_train.mean(axis=axes, dtype=np.float64, keepdims=True)  # (1, ..., F)
    std = x_train.std(axis=axes, dtype=np.float64, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    for x in (x_train, *others):
        x -= mean.astype(x.dtype)
        x /= std.astype(x.dtype)
    return (x_train, *others)


def center(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centring fitted on train: ``x' = x - mean``, the mean over the training examples of each
    feature (each pixel of an image: the mean image is removed), in place on float32, applied
    to ``x_train`` and every other split given; accumulated in float64.

    For models whose units compete for the input, such as the k-sparse autoencoder's top-k: on
    raw MNIST the mean image dominates every example, so the units aligned with it win most of
    the selections (at initialisation, the top 10% of 1000 random units hold 43% of the top-100
    wins, against 16% on centred images) and the rest starve.
    """
    mean = x_train.mean(axis=0, dtype=np.float64)  # (*example_shape)
    for x in (x_train, *others):
        x -= mean.astype(x.dtype)
    return (x_train, *others)


def scale(
    x_train: np.ndarray,
    others: list[np.ndarray],
    scaling: str,
    is_image: bool,
    image_max: float | None,
) -> tuple[np.ndarray, list[np.ndarray], str]:
    """``scaling`` (auto | unit | standardize | center | none) fitted on ``x_train`` and applied
    to copies of it and of the held-out splits ``others``; returns them as float32 (train,
    others, name). The arithmetic is in float64 when the arrays come as float64 (tables whose
    values float32 would round: a column of 1e7 + small variations keeps its variations), else
    in float32.

    With a known format maximum (``image_max``: 255 for 8-bit pixels, 16 for digits), ``unit``
    divides by it, ``standardize`` standardizes after that division and ``auto`` means
    ``unit``. Without one (arrays other than 8-bit images, tabular TFDS sets), ``unit`` is the
    min-max scaling fitted on train (`unit_scale`) and ``auto`` means that. ``center`` is
    ``unit`` followed by subtracting each feature's training mean (`center`).
    """
    work = np.float64 if x_train.dtype == np.float64 else np.float32
    arrays = [np.array(x, dtype=work, order="C") for x in (x_train, *others)]  # fresh copies
    applied = _scale_in_place(arrays, scaling, is_image, image_max)
    single = [np.asarray(x, dtype=np.float32, order="C") for x in arrays]
    return single[0], single[1:], applied


def _scale_in_place(arrays: list[np.ndarray], scaling: str, is_image: bool, image_max) -> str:
    """``scale`` on fresh copies (the training split first), in place, in their own float
    type; returns the scaling applied."""
    if scaling == "none":
        return "none"
    if scaling == "auto":
        scaling = "unit"
    if image_max is not None:
        for x in arrays:
            x /= x.dtype.type(image_max)
        if scaling == "unit":
            return "unit"
    if scaling == "center":
        if image_max is None:
            unit_scale(*arrays, is_image=is_image, setting="center")
        center(*arrays)
        return "center"
    fit = unit_scale if scaling == "unit" else standardize
    fit(*arrays, is_image=is_image)
    return scaling


def _check_available(key: str, limit: int | None, available: int) -> None:
    if limit is not None and limit > available:
        raise DataError(
            f"data.{key}={limit} is larger than the {available} examples available; "
            f"use a value in 1..{available} or null for all"
        )


def _take_first(limit: int | None, x: np.ndarray, y: np.ndarray | None):
    if limit is None:
        return x, y
    # Copies, so the full arrays can be freed.
    return x[:limit].copy(), (None if y is None else y[:limit].copy())


def _labels(y: np.ndarray | None) -> np.ndarray | None:
    return None if y is None else np.ascontiguousarray(y, dtype=np.int32)


# Above this, squared errors summed over an example overflow float32 (3.4e38) on any
# realistic width: the first step's loss is inf, which reads as a learning rate too large.
MAX_MAGNITUDE = 1e15


def _check_magnitude(name: str, x: np.ndarray, scaling: str) -> None:
    peak = max(float(x.max()), -float(x.min())) if x.size else 0.0  # no |x| copy of MNIST
    if peak > MAX_MAGNITUDE:
        raise DataError(
            f"{name}: values up to {peak:.3g} after data.scaling={scaling} overflow float32 in "
            "the squared error at the first step; scale them (data.scaling=unit or "
            "standardize)"
        )


def _warn_constant_columns(
    name: str, x_train: np.ndarray, held_out: list[np.ndarray], scaling: str
) -> None:
    """One warning for the feature columns of a table that hold one value across the training
    split: a fitted scaling has no spread to divide by, so they carry nothing to learn, and
    where a held-out split varies in them its error there is not on the scale of the others
    (``standardize`` only centres them; ``unit`` and ``center`` map them to 0)."""
    if x_train.ndim != 2 or x_train.shape[0] == 0:
        return
    flat = np.flatnonzero(np.all(x_train == x_train[:1], axis=0))
    if not flat.size:
        return
    varying = [c for c in flat if any(np.any(x[:, c] != x_train[0, c]) for x in held_out)]
    shown = ", ".join(str(c) for c in flat[:8]) + (", ..." if flat.size > 8 else "")
    held = ""
    if varying:
        done = "only centres" if scaling == "standardize" else "maps to 0"
        held = (
            f"; {len(varying)} of them vary in the held-out data, which data.scaling={scaling} "
            f"{done} there: the test error on them is not on the others' scale"
        )
    log.warning(
        "%s: %d feature column(s) hold one value across the training split (column %s): "
        "nothing to learn from them%s",
        name,
        flat.size,
        shown,
        held,
    )


def build_dataset(
    raw: RawData,
    *,
    name: str,
    scaling: str,
    test_fraction: float,
    split_seed: int,
    max_train: int | None,
    max_test: int | None,
    validation: float = 0.0,
) -> Dataset:
    """Split (if the source has no test split), carve the validation split, scale, subsample and
    wrap ``raw`` as a `Dataset`."""
    x_train, y_train, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if x_test is None:
        train, test = split_indices(
            x_train.shape[0], test_fraction, split_seed, y_train, class_names=raw.class_names
        )
        x_train, x_test = x_train[train], x_train[test]
        if y_train is not None:
            y_train, y_test = y_train[train], y_train[test]
    x_val = y_val = None
    count = validation_count(validation, x_train.shape[0])
    if count:
        # Its own stream of the split seed: the validation split does not move the test split.
        train, val = split_indices(
            x_train.shape[0],
            0.0,
            (split_seed + 0x5EED) % 2**32,
            y_train,
            count=count,
            class_names=raw.class_names,
        )
        x_train, x_val = x_train[train], x_train[val]
        if y_train is not None:
            y_train, y_val = y_train[train], y_train[val]
    # Checked before the (costly) scaling so that a wrong limit fails at once.
    _check_available("max_train", max_train, x_train.shape[0])
    _check_available("max_test", max_test, x_test.shape[0])
    held_out = [x_test] if x_val is None else [x_test, x_val]
    fitted = scaling != "none" and not (raw.image_max and scaling in ("auto", "unit"))
    if x_train.shape[0] < 2 and fitted:  # min and max, or mean and std, of one example
        raise DataError(
            f"{name}: 1 training example is left (after data.test_fraction and "
            f"data.validation), and data.scaling={scaling} fitted on it maps every value to one "
            "number (0): give the data at least 2 training examples, or data.scaling=none"
        )
    if fitted and not raw.is_image:
        _warn_constant_columns(name, x_train, held_out, scaling)
    x_train, held_out, applied = scale(x_train, held_out, scaling, raw.is_image, raw.image_max)
    _check_magnitude(name, x_train, scaling)
    x_test = held_out[0]
    x_val = held_out[1] if x_val is not None else None
    x_train, y_train = _take_first(max_train, x_train, y_train)
    x_test, y_test = _take_first(max_test, x_test, y_test)
    return Dataset(
        name=str(name),
        x_train=x_train,
        y_train=_labels(y_train),
        x_test=x_test,
        y_test=_labels(y_test),
        example_shape=tuple(x_train.shape[1:]),
        is_image=raw.is_image,
        scaling=applied,
        x_val=x_val,
        y_val=None if x_val is None else _labels(y_val),
        class_names=raw.class_names,
    )
