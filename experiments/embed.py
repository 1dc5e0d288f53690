"""Write a trained run's codes of its dataset (and reconstructions) to an .npz file.

    python experiments/embed.py RUN_DIR                     # RUN_DIR/embeddings.npz, both splits
    python experiments/embed.py RUN_DIR --out codes.npz --reconstructions --probe

The .npz holds ``z_train``, ``z_test`` (codes, float32 (N, k)), ``z_val`` when the run held out a
validation split (``data.validation``), ``y_train``, ``y_test`` (and ``y_val``) when the dataset
is labelled, and ``x_hat_test`` with ``--reconstructions``. ``--probe`` also prints the
linear-probe test error of the codes beside raw pixels and PCA codes of the same size. The work
is done by ``ae_jax.features``; the codes are deterministic (the clean encoder, no noise).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from ae_jax.data import DataError, load_dataset
from ae_jax.features import (
    RunError,
    embed,
    load_run,
    probe_report,
    reconstruct,
    run_data_config,
    unfinished,
)
from ae_jax.run_io import reader_left, write_atomic
from ae_jax.training.rundir import data_changed


def _an_embeddings_file(path: Path) -> bool:
    """Whether ``path`` is an .npz this script wrote (which a rerun may replace)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {"z_train", "z_test"} <= set(npz.files)
    except Exception:  # not an .npz at all: a file of another kind
        return False


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="directory of a finished run (config.yaml, params.msgpack)")
    parser.add_argument("--out", help="output .npz (default: RUN_DIR/embeddings.npz)")
    parser.add_argument("--reconstructions", action="store_true", help="add x_hat_test")
    parser.add_argument("--probe", action="store_true", help="linear probe: codes, raw, PCA")
    parser.add_argument(
        "--probe-steps",
        type=int,
        help="L-BFGS steps (>= 1; default: the run's pretrain.probe_steps)",
    )
    parser.add_argument(
        "--probe-l2",
        type=float,
        nargs="+",
        metavar="L2",
        help="the probe's weight penalty, or several to choose among on the run's validation "
        "split (default: the run's pretrain.probe_l2)",
    )
    args = parser.parse_args(argv)
    given = [
        o for o, v in (("--probe-steps", args.probe_steps), ("--probe-l2", args.probe_l2)) if v
    ]
    if given and not args.probe:  # they were ignored without a word
        verb = "tunes" if len(given) == 1 else "tune"
        parser.error(f"{' and '.join(given)} {verb} the linear probe, which runs with --probe")
    if args.probe_steps is not None and args.probe_steps < 1:
        parser.error(f"--probe-steps {args.probe_steps}: give a positive number of steps")
    if args.probe_l2 is not None and not all(v >= 0 and np.isfinite(v) for v in args.probe_l2):
        parser.error(f"--probe-l2 {args.probe_l2}: give finite penalties >= 0")
    try:
        return _embed(args)
    except (RunError, DataError, OSError) as err:  # one line, no traceback
        if isinstance(err, OSError) and err.filename:
            err = f"{err.filename}: {err.strerror or err}"
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _embed(args: argparse.Namespace) -> dict:
    run = load_run(args.run_dir)
    out = Path(args.out) if args.out else Path(args.run_dir) / "embeddings.npz"
    if not out.parent.is_dir():
        what = "is a file" if out.parent.exists() else "does not exist"
        raise RunError(f"--out {out}: its directory {out.parent} {what}")
    if out.suffix.lower() != ".npz":
        raise RunError(f"--out {out}: the codes are written as an .npz; give a path ending in .npz")
    if out.exists() and not _an_embeddings_file(out):  # a run's file, the data, anything else
        raise RunError(
            f"--out {out} exists and is not an embeddings file (an .npz holding z_train and "
            "z_test); it is left as it is: choose another path"
        )
    try:  # before any compute: a directory that takes no new file (read-only, full)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"):
            pass
    except OSError as err:
        raise RunError(f"--out {out} cannot be written: {err.strerror or err}") from err
    ended = unfinished(run.path)
    if ended:  # params.msgpack of a run that did not complete: said, then used
        print(
            f"note: {run.path} did not complete ({ended}): these are the codes of the "
            "parameters it wrote"
        )
    data = load_dataset(run_data_config(run))
    changed = data_changed(run.path, data, run.cfg.data)
    if changed:  # the codes would be of other data than the run trained on
        raise RunError(f"{run.path} trained on other data: {changed}; restore that data")
    if args.probe and data.y_train is None:  # before any compute or file
        raise RunError(f"--probe: {data.name} has no labels; a linear probe needs class labels")
    # the probe the run itself reported (pretrain.probe_l2 and probe_steps), unless told
    l2 = list(args.probe_l2 if args.probe_l2 is not None else run.cfg.pretrain.probe_l2)
    steps = args.probe_steps if args.probe_steps is not None else run.cfg.pretrain.probe_steps
    if args.probe and len(l2) > 1 and data.x_val is None:
        raise RunError(
            f"--probe: {len(l2)} penalties {l2} are chosen among on a validation split, and "
            f"{run.path} has none (data.validation); give one with --probe-l2"
        )
    arrays = {"z_train": embed(run, data.x_train), "z_test": embed(run, data.x_test)}
    if data.x_val is not None:  # the run's validation split, held out of z_train
        arrays["z_val"] = embed(run, data.x_val)
    if data.y_train is not None:
        arrays.update(y_train=data.y_train, y_test=data.y_test)
        if data.y_val is not None:
            arrays["y_val"] = data.y_val
        if data.class_names:  # label i's name (a CSV's column of class names)
            arrays["class_names"] = np.array(data.class_names)
    if args.reconstructions:
        arrays["x_hat_test"] = reconstruct(run, data.x_test).astype(np.float32)
    try:
        write_atomic(out, lambda f: np.savez_compressed(f, **arrays))  # never half a file
    except OSError as err:
        raise RunError(f"--out {out} cannot be written: {err.strerror or err}") from err
    report = {
        "out": str(out),
        "z_train": list(arrays["z_train"].shape),
        "z_test": list(arrays["z_test"].shape),
    }
    if args.probe:
        report.update(
            probe_report(
                arrays["z_train"],
                arrays["z_test"],
                data,
                steps=steps,
                seed=run.cfg.trainer.seed,
                l2=l2 if len(l2) > 1 else l2[0],
                z_val=arrays["z_val"] if len(l2) > 1 else None,
            )
        )
    shapes = ", ".join(f"{k} {' x '.join(map(str, arrays[k].shape))}" for k in arrays)
    print(f"wrote {out}: {shapes}")
    if args.probe:
        k = arrays["z_train"].shape[1]
        pct = {name: f"{v:.2f}%" for name, v in report.items() if name.startswith("probe/")}
        chosen = report.get("probe/l2")
        how = (
            f"l2 {chosen:g} chosen on validation among {', '.join(f'{v:g}' for v in l2)}"
            if len(l2) > 1
            else f"l2 {l2[0]:g}"
        )
        print(
            f"linear probe test error: codes {pct['probe/error_pct']}, "
            f"raw {pct['probe/raw/error_pct']}, PCA-{k} {pct['probe/pca/error_pct']} "
            f"(training error on the codes {pct['probe/train_error_pct']}; {how}, {steps} "
            "L-BFGS steps)"
        )
    return report


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # `... | head`: the reader left after the files were written
        reader_left()
        sys.exit(141)
