"""Write the codes and reconstructions of a trained run's dataset to .npz (kept short on purpose).

    python experiments/embed.py RUN_DIR                     # RUN_DIR/embeddings.npz, both splits
    python experiments/embed.py RUN_DIR --out codes.npz --reconstructions --probe

The .npz holds ``z_train``, ``z_test`` (codes, float32 (N, k)), ``y_train``, ``y_test`` when the
dataset is labelled, and ``x_hat_test`` with ``--reconstructions``. ``--probe`` also prints the
linear-probe test error of the codes beside raw pixels and PCA codes of the same size. The work
is done by ``ae_jax.features``; the codes are deterministic (the clean encoder, no noise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ae_jax.data import load_dataset
from ae_jax.features import RunError, embed, load_run, probe_report, reconstruct


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="directory of a finished run (config.yaml, params.msgpack)")
    parser.add_argument("--out", help="output .npz (default: RUN_DIR/embeddings.npz)")
    parser.add_argument("--reconstructions", action="store_true", help="add x_hat_test")
    parser.add_argument("--probe", action="store_true", help="linear probe: codes, raw, PCA")
    parser.add_argument("--probe-steps", type=int, default=500)
    args = parser.parse_args(argv)
    try:
        run = load_run(args.run_dir)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    data = load_dataset(run.cfg.data)
    arrays = {"z_train": embed(run, data.x_train), "z_test": embed(run, data.x_test)}
    if data.y_train is not None:
        arrays.update(y_train=data.y_train, y_test=data.y_test)
    if args.reconstructions:
        arrays["x_hat_test"] = reconstruct(run, data.x_test).astype(np.float32)
    out = Path(args.out) if args.out else Path(args.run_dir) / "embeddings.npz"
    np.savez_compressed(out, **arrays)
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
                steps=args.probe_steps,
                seed=run.cfg.trainer.seed,
            )
        )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
