"""Reading user arrays from ``.npy``, ``.npz`` and ``.csv`` files (the ``array`` data source).

Layouts, by the number of dimensions of ``x``:

- ``(N, D)``: tabular rows, example shape ``(D,)``;
- ``(N, H, W)``: grey images, example shape ``(H, W, 1)``;
- ``(N, H, W, C)``: images with channels.

Files: ``.npy`` holds one array of all rows (split later with ``data.test_fraction``); ``.npz``
holds ``x_train`` and ``x_test`` (+ ``y_train`` / ``y_test``), or ``x`` (+ ``y``); ``.csv`` is
numeric, comma-separated, with an optional header row (detected when at least half the fields of
the first row are not numbers, when they are pandas' column numbers 0..D-1 above rows that
are not all whole numbers, or when the first field is empty: pandas' row index, whose column is
then left out with a warning) and optionally the labels in column ``data.label_column`` (a
number, or a header's name; class numbers, or class names numbered in sorted order). A
separate ``data.test_path`` file in any of these formats supplies the test split.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import difflib
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ae_jax.data.dataset import DataError
from ae_jax.data.preprocessing import RawData

log = logging.getLogger("ae_jax")

ARRAY_SUFFIXES = (".npy", ".npz", ".csv")
LAYOUTS = (
    "(N, D) tabular rows, (N, H, W) grey images or (N, H, W, C) images (channels-first "
    "(N, C, H, W) with C of 1, 3 or 4 is moved), with N >= 1"
)

Table = dict  # key ("x", "y", "x_train", ...) -> np.ndarray


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _without_column_numbers(path: Path, table: np.ndarray) -> np.ndarray:
    """``table`` without a first row of column numbers: consecutive whole numbers (pandas'
    0..D-1 header of an unnamed DataFrame, years 2019..2022) above rows that are not all whole
    numbers (in a table of whole numbers such a row may be data, and stays)."""
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        return table
    first, rest = table[0], table[1:]
    numbers = np.all(first == np.round(first)) and np.all(np.diff(first) == 1)
    if not numbers or np.all(rest == np.round(rest)):
        return table
    if first[0] != 0:  # pandas' own 0..D-1 is read as a header without a word
        log.info(
            "CSV file %s: its first row, %g..%g, is read as a header of column numbers (whole "
            "numbers counting up, above rows that are not whole numbers)",
            path,
            first[0],
            first[-1],
        )
    return rest


def _unquoted(field: str) -> str:
    field = field.strip()
    return field[1:-1] if len(field) >= 2 and field[0] == field[-1] == '"' else field


def _listed(names: list[str], most: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _label_position(path: Path, label_column: int | str, columns: list | None, count: int) -> int:
    """Where ``data.label_column`` is among a CSV file's ``count`` columns (pandas' index
    column not counted): a number (negative from the end) or a name of the header row's
    ``columns`` (None: the file has no header)."""
    if isinstance(label_column, str) and (columns is None or label_column not in columns):
        with contextlib.suppress(ValueError):  # "3" given quoted: the column number 3
            label_column = int(label_column)
    if isinstance(label_column, str):
        if columns is None:
            raise DataError(
                f"data.label_column={label_column!r} names a column, but CSV file {path} has no "
                f"header row of column names; give the column's number (0..{count - 1}, -1 for "
                "the last)"
            )
        if label_column not in columns:
            near = difflib.get_close_matches(label_column, columns, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise DataError(
                f"data.label_column={label_column!r} is not a column of CSV file {path}{hint}; "
                f"its columns: {_listed(columns)}"
            )
        if columns.count(label_column) > 1:
            raise DataError(
                f"data.label_column={label_column!r} names {columns.count(label_column)} columns "
                f"of CSV file {path}; give the column's number instead"
            )
        return columns.index(label_column)
    if not -count <= label_column < count or count < 2:
        raise DataError(
            f"data.label_column={label_column!r} is not a column of {path} ({count} columns); "
            f"valid: -{count}..{count - 1}, leaving at least one feature column"
        )
    return label_column % count


def _loadtxt(path: Path, header: bool, fields: list[str], usecols: Any, dtype: Any) -> np.ndarray:
    """``np.loadtxt`` of a CSV file's rows below its header; a value it cannot read is one
    line naming its line and field."""
    try:
        with warnings.catch_warnings():
            # An empty table is reported by the caller as a DataError naming the file.
            warnings.simplefilter("ignore", UserWarning)
            return np.loadtxt(
                path,
                delimiter=",",
                skiprows=int(header),
                ndmin=2 if dtype is np.float64 else 1,
                dtype=dtype,
                usecols=usecols,
                quotechar='"',  # "1.5" is a number, "setosa, Linnaeus" one name
                encoding="utf-8-sig",
            )
    except ValueError as err:
        # numpy counts the data rows from 0 (after the header) and the fields from 1
        where = re.match(
            r"could not convert string (.*) to float64 at row (\d+), column (\d+)", str(err)
        )
        said = str(err)
        ragged = re.match(r"the number of columns changed from (\d+) to (\d+) at row (\d+)", said)
        if where is not None:
            line = int(where.group(2)) + 1 + int(header)
            said = f"{where.group(1)} on line {line}, field {where.group(3)}, is not a number"
        elif ragged is not None:  # numpy counts these rows from 1, after the header
            line = int(ragged.group(3)) + int(header)
            said = f"line {line} has {ragged.group(2)} fields, the lines above {ragged.group(1)}"
        index = (
            ""
            if fields[0].strip() or where is None or where.group(3) != "1"
            else (
                " (its header's first field is empty: a first column of row numbers, as pandas' "
                "to_csv writes by default? save with index=False)"
            )
        )
        error = DataError(
            f"CSV file {path} cannot be read as a numeric table ({said}){index}; every row must "
            "hold the same number of numeric fields, after at most one header row of column "
            "names"
        )
        # the field of the value (counted from 1, as numpy does), and whether it is a name
        error.field = None if where is None else int(where.group(3))
        try:
            error.name = where is not None and ast.literal_eval(where.group(1)).strip() != ""
        except (ValueError, SyntaxError):
            error.name = True
        raise error from err


def _class_names(path: Path, text: np.ndarray, header: bool, classes: Any) -> Table:
    """Labels given as names (``setosa``): numbered 0..K-1 in sorted order, or in the order
    of the training file's ``classes`` when ``path`` is the test file."""
    names = [_unquoted(t) for t in text.tolist()]
    empty = next((i for i, n in enumerate(names) if not n), None)
    numbers = [_is_number(n) for n in names]
    odd = empty if empty is not None else (numbers.index(False) if any(numbers) else None)
    if odd is not None:
        what = "no label" if empty is not None else f"the label {names[odd]!r} among numbers"
        raise DataError(
            f"CSV file {path}: line {odd + 1 + int(header)} has {what}; every row needs a label, "
            "all of them class numbers or all of them class names"
        )
    known = sorted(set(names)) if classes is None else [str(c) for c in classes]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise DataError(
            f"CSV file {path} (data.test_path) has labels {_listed(unknown)} that the training "
            f"file does not; its classes are {_listed(known)}"
        )
    number = {name: i for i, name in enumerate(known)}
    return {"y": np.array([number[n] for n in names], np.int32), "classes": np.array(known)}


def _said_index(path: Path) -> None:
    log.warning(
        "CSV file %s: the first column has an empty header, as pandas' to_csv writes for its "
        "row index, and is left out (columns are counted without it, also by "
        "data.label_column; save with index=False to keep it out of the file)",
        path,
    )


def _read_csv(path: Path, label_column: int | str | None = None, classes: Any = None) -> Table:
    """A CSV file's ``{"x": features}``, with ``"y"`` when ``label_column`` (a column's
    number, or its name in the header row) holds the labels: class numbers, or class names
    numbered 0..K-1 in sorted order (those of the training file, ``classes``, for a test file;
    ``"classes"`` then holds the names)."""
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first value
    with open(path, newline="", encoding="utf-8-sig") as f:
        first = f.readline()
    for sep, name in ((";", "semicolons"), ("\t", "tabs")):
        if sep in first and "," not in first:
            raise DataError(
                f"CSV file {path} separates its fields with {name}; only commas are read: save "
                "it with commas (pandas: to_csv(path, index=False))"
            )
    # the first row's fields as numpy reads them: a quoted "length, cm" is one field
    fields = next(csv.reader([first.strip()]), None) or [""]
    # a header: column names (at least half of them not numbers, so "id,2019,2020,x,y" is
    # one and a data row with a typo is not); pandas' column numbers are found once read
    names = sum(not _is_number(_unquoted(v)) for v in fields)
    # an empty first field heads the row index pandas' to_csv writes by default
    index = len(fields) > 1 and not fields[0].strip()
    header = bool(first.strip()) and (2 * names >= len(fields) or index)
    label = None  # the labels' field of the file, counted from 0 (pandas' index included)
    if label_column is not None:
        columns = [_unquoted(f) for f in fields[int(index) :]] if header else None
        label = int(index) + _label_position(path, label_column, columns, len(fields) - index)
    try:
        table = _loadtxt(path, header, fields, None, np.float64)
    except DataError as err:
        if getattr(err, "field", None) is None or err.field - 1 < int(index):
            raise
        if label is None or err.field != label + 1:
            if not err.name:  # an empty field
                raise
            # a column of names: its labels, not said to be?
            column = err.field - 1 - int(index)
            name = f" ({_unquoted(fields[err.field - 1])!r})" if header else ""
            raise DataError(
                f"{err}; if its column {column}{name} holds class labels, set "
                f"data.label_column={column}"
            ) from err
        # the labels are names: the features without them, then the names
        features = [c for c in range(int(index), len(fields)) if c != label]
        text = _loadtxt(path, header, fields, label, str)
        x = _loadtxt(path, header, fields, features, np.float64)
        if index:
            _said_index(path)
        return {"x": x} | _class_names(path, text, header, classes)
    if table.size == 0:
        below = " below its header" if header else ""
        raise DataError(f"CSV file {path} holds no data rows{below}; give it at least one row")
    bad = np.argwhere(~np.isfinite(table))
    if bad.size:  # "nan", "inf" in the file: named by line and field, as a text value is
        line, field = bad[0] + (1 + int(header), 1)
        raise DataError(
            f"CSV file {path} holds {len(bad)} NaN/inf value{'s' * (len(bad) > 1)} (the first "
            f"on line {line}, field {field}); every value must be finite"
        )
    if index and table.shape[1] > 1:
        _said_index(path)
        table = table[:, 1:]
    elif not header:
        table = _without_column_numbers(path, table)
    if label is None:
        return {"x": table}
    return _split_label_column(path, table, label - int(index))


NPZ_LAYOUTS = "x (+ y), or x_train and x_test (+ y_train and y_test)"


def _read_file(
    path: Path, label_column: int | str | None, key: str = "data.path", classes: Any = None
) -> Table:
    suffix = path.suffix.lower()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise DataError(f"array file {path}{where} {what}; {key} must name a .npy/.npz/.csv file")
    if suffix not in ARRAY_SUFFIXES:
        raise DataError(
            f"{key}: array file {path} has suffix {suffix!r}; valid: {', '.join(ARRAY_SUFFIXES)}"
        )
    if label_column is not None and suffix == ".npz":
        raise DataError(
            f"data.label_column={label_column} does not apply to {path}: an .npz file gives its "
            "labels as y / y_train / y_test arrays; set data.label_column=null"
        )
    try:
        if suffix == ".csv":
            return _read_csv(path, label_column, classes)
        elif suffix == ".npy":
            table = {"x": _read_npy(path)}
        else:
            table = _read_npz(path)
    except (OSError, ValueError, EOFError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"array file {path} cannot be read as {suffix} ({err})") from err
    if label_column is not None:
        table = _split_label_column(path, table["x"], label_column)
    return table


def _read_npy(path: Path) -> np.ndarray:
    """The one array of an .npy file; a file of another kind (an .npz archive, text) is named
    for what it is."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:4] == b"PK\x03\x04":  # a zip archive: np.savez's
        raise DataError(
            f"array file {path} is an .npz archive of named arrays, not one .npy array; give it "
            "the suffix .npz"
        )
    if magic != b"\x93NUMPY":
        raise DataError(
            f"array file {path} is not an .npy file (it does not start with numpy's header); "
            "write it with numpy.save, or give a .csv or .npz file"
        )
    return np.load(path, allow_pickle=False)


def _read_npz(path: Path) -> Table:
    """The arrays of an .npz archive, its keys checked against the layouts read."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile.BadZipFile, a pickle refused, ...
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"array file {path} cannot be read as .npz ({reason})") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(
            f"array file {path} holds one .npy array, not an .npz archive of named arrays; "
            "give it the suffix .npy"
        )
    with loaded as npz:
        try:
            table = {key: npz[key] for key in npz.files}
        except Exception as err:  # a damaged member: a bad CRC, a truncated stream, ...
            reason = " ".join(str(err).split()) or type(err).__name__
            raise DataError(f"array file {path} cannot be read as .npz ({reason})") from err
    keys = set(table)
    unknown = sorted(keys - {"x", "y", "x_train", "x_test", "y_train", "y_test"})
    mixed = "x" in keys and keys & {"x_train", "x_test"}
    orphans = [y for y in ("y", "y_train", "y_test") if y in keys and "x" + y[1:] not in keys]
    if unknown:
        problem = f"{', '.join(unknown)}, which no layout reads"
    elif mixed:
        problem = f"x beside {' and '.join(sorted(mixed))}, two layouts at once"
    elif orphans:
        problem = f"labels {', '.join(orphans)} without their examples"
    else:
        return table
    raise DataError(
        f"array file {path} holds {', '.join(sorted(keys))}: {problem}; an .npz holds {NPZ_LAYOUTS}"
    )


def _split_label_column(path: Path, table: np.ndarray, label_column: int) -> Table:
    if table.ndim != 2:
        raise DataError(
            f"data.label_column={label_column} needs a 2-D table, but {path} holds shape "
            f"{table.shape}"
        )
    d = table.shape[1]
    if not isinstance(label_column, int) or not -d <= label_column < d or d < 2:
        raise DataError(
            f"data.label_column={label_column!r} is not a column of {path} (shape {table.shape}); "
            f"valid: -{d}..{d - 1}, leaving at least one feature column"
        )
    return {"x": np.delete(table, label_column, axis=1), "y": table[:, label_column]}


def _features(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """``x`` as float examples ``(N, *example_shape)``, grey images given a channel axis:
    float64 where the file's type holds more than float32 does (float64, 32- and 64-bit
    integers), so that the scaling subtracts a large offset (timestamps, 1e7 + small
    variations) before anything is rounded (``preprocessing.scale``, which returns float32);
    float32 otherwise."""
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"array {key!r} in {path} has dtype {x.dtype}; it must be numeric (bool, int or float)"
        )
    if x.ndim not in (2, 3, 4) or x.shape[0] == 0 or 0 in x.shape:
        raise DataError(f"array {key!r} in {path} has shape {x.shape}; valid: {LAYOUTS}")
    if x.dtype.kind == "f" and np.isfinite(x).all():
        peak = float(np.abs(x).max())
        largest = float(np.finfo(np.float32).max)
        if peak > largest:  # finite here, inf as the float32 it trains in
            raise DataError(
                f"array {key!r} in {path} holds values up to {peak:.3g}, beyond float32's range "
                f"(±{largest:.3g}); rescale them in the file"
            )
    wide = x.dtype.itemsize > 4 or (x.dtype.kind in "iu" and x.dtype.itemsize == 4)
    x = np.asarray(x, dtype=np.float64 if wide else np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        where = np.argwhere(~finite)[0].tolist()
        raise DataError(
            f"array {key!r} in {path} (shape {x.shape}) holds {int((~finite).sum())} NaN/inf "
            f"values (first at index {where}); every value must be finite (and within float32 "
            "range)"
        )
    if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[3] > 4:
        # PyTorch's (N, C, H, W): read as (N, H, W, C) it trained a C-row image of W channels
        log.warning(
            "array %r in %s has shape %s: read as channels-first (N, C, H, W) images of %d "
            "channel%s, %d x %d, and moved to (N, H, W, C) %s; save the file in that layout "
            "(np.moveaxis(x, 1, -1)) to read it without this line",
            key,
            path,
            x.shape,
            x.shape[1],
            "s" * (x.shape[1] > 1),
            x.shape[2],
            x.shape[3],
            (x.shape[0], x.shape[2], x.shape[3], x.shape[1]),
        )
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return x[..., None] if x.ndim == 3 else x


def _labels(path: Path, key: str, y: np.ndarray | None, n: int) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    what = f"the labels of {key}" if key.startswith("data.") else f"labels {key!r}"
    if y.dtype.kind not in "biuf" or y.shape != (n,):
        raise DataError(
            f"{what} in {path} are {y.dtype} of shape {y.shape}; they must be ({n},) "
            "integers, one per example"
        )
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and np.all(y == np.round(y))):
        raise DataError(
            f"{what} in {path} are not whole numbers; class labels must be (a "
            "measured target is none: ae-jax learns no regression; take it out of the file, or "
            "give classes as numbers or names)"
        )
    if n and (y.min() < 0 or y.max() > np.iinfo(np.int32).max):
        raise DataError(
            f"{what} in {path} range over [{y.min()}, {y.max()}]; labels must be class "
            "indices 0..K-1"
        )
    classes, used = (int(y.max()) + 1 if n else 0), len(np.unique(y))
    if classes > 100 and classes > 2 * used:  # e.g. ids or codes, not class indices
        raise DataError(
            f"{what} in {path} are {used} distinct values up to {int(y.max())}, which "
            f"as class indices would make {classes} classes; labels must be class indices "
            f"0..K-1 with most of them used: renumber them 0..{used - 1}"
        )
    return y.astype(np.int32)


def _pick(path: Path, table: Table, role: str) -> tuple[str, str | None]:
    """The (x key, y key) of ``table`` for ``role`` ("all", "train" or "test")."""
    keys = {"all": ("x", "x_train"), "train": ("x_train", "x"), "test": ("x_test", "x")}[role]
    for key in keys:
        if key in table:
            y_key = key.replace("x", "y", 1)
            return key, (y_key if y_key in table else None)
    raise DataError(
        f"array file {path} holds keys {sorted(table)}; an .npz needs x_train and x_test "
        "(+ y_train, y_test) or x (+ y)"
    )


def load_arrays(
    path: str | Path, test_path: str | Path | None = None, label_column: int | str | None = None
) -> RawData:
    """The train (and, if given, test) examples of an ``array`` source, unscaled float32."""
    path = Path(path).expanduser()
    table = _read_file(path, label_column)
    classes = table.pop("classes", None)
    if classes is not None:
        said = ", ".join(f"{i} {name}" for i, name in enumerate(classes[:10].tolist()))
        more = f", ... ({len(classes)} classes)" if len(classes) > 10 else ""
        log.info("%s: the labels are class names, numbered in sorted order: %s%s", path, said, more)
    x_key, y_key = _pick(path, table, "all")
    x_train = _features(path, x_key, table[x_key])
    # labels from a file's column are named by the setting that gave them, not as 'y'
    said = None if label_column is None else f"data.label_column={label_column}"
    y_train = _labels(path, said or y_key, table.get(y_key), x_train.shape[0])
    x_test = y_test = None
    test_file = path
    if "x_train" in table and "x_test" in table:
        x_test = _features(path, "x_test", table["x_test"])
        y_test = _labels(path, "y_test", table.get("y_test"), x_test.shape[0])
    if test_path is not None:
        if x_test is not None:
            raise DataError(
                f"array file {path} already holds x_test, and data.test_path={str(test_path)!r} "
                "gives another test set; keep one of them"
            )
        test_file = Path(test_path).expanduser()
        test_table = _read_file(test_file, label_column, "data.test_path", classes)
        if (classes is None) != (test_table.pop("classes", None) is None):
            kinds = ("class numbers", "class names")[:: 1 if classes is None else -1]
            raise DataError(
                f"the labels of {path} are {kinds[0]} and those of {test_file} {kinds[1]}; give "
                "both files labels of the same kind"
            )
        tx_key, ty_key = _pick(test_file, test_table, "test")
        x_test = _features(test_file, tx_key, test_table[tx_key])
        y_test = _labels(test_file, said or ty_key, test_table.get(ty_key), x_test.shape[0])
    if x_test is not None:
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataError(
                f"test array in {test_file} has examples of shape {x_test.shape[1:]} (array shape "
                f"{x_test.shape}), but the training examples in {path} have shape "
                f"{x_train.shape[1:]}; the test examples must have that shape"
            )
        if (y_train is None) != (y_test is None):
            which = "training" if y_test is None else "test"
            raise DataError(
                f"labels are given for the {which} examples only ({path}, {test_file}); give "
                "labels for both splits or for neither"
            )
    names = None if classes is None else tuple(str(c) for c in classes.tolist())
    is_image = x_train.ndim == 4
    # 8-bit images are pixels of 0..255 (divided by 255, as MNIST's IDX files and TFDS's
    # images are), not values to min-max: a set whose brightest pixel is 200 kept its contrast
    held = [table[x_key]] + ([test_table[tx_key]] if test_path is not None else [])
    held += [table["x_test"]] if "x_train" in table and "x_test" in table else []
    eight_bit = is_image and all(a.dtype == np.uint8 for a in held)
    # Images already in [0, 1] (floats from a PIL / 255 conversion, binary masks, even as
    # uint8 0/1) are unit pixels as they are: min-max per channel would stretch each colour on
    # its own and change the images' colour balance (and divided by 255, a mask goes black)
    unit = is_image and all(a.size and 0 <= np.min(a) and np.max(a) <= 1 for a in held)
    return RawData(
        x_train,
        y_train,
        x_test,
        y_test,
        is_image=is_image,
        class_names=names,
        image_max=1.0 if unit else 255.0 if eight_bit else None,
    )
