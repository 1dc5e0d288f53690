"""Benchmark: an 8-member sweep of the default digits model, sequential vs vectorised.

Runs the same Hydra multirun twice as a user would, in fresh processes, and prints the wall
times and the speedup:
  sequential:  python experiments/train.py --multirun noise=masking noise.level=0,0.1,0.2,0.3 \\
                   trainer.seed=0,1                                 (Hydra's basic launcher)
  vectorised:  the same command + hydra/launcher=vmap

    python scripts/benchmark_sweep.py [--epochs 300] [--out sweep_benchmark.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = ("noise=masking", "noise.level=0,0.1,0.2,0.3", "trainer.seed=0,1", "trainer.figures=false")


def run(extra: list[str], sweep_dir: Path) -> float:
    """Wall seconds of one multirun, with an empty compilation cache of its own (as a first
    sweep on a fresh machine; members after the first load the programs it compiled)."""
    cmd = [
        sys.executable,
        "experiments/train.py",
        "--multirun",
        *SWEEP,
        *extra,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    start = time.perf_counter()
    env = {
        **os.environ,
        "AE_JAX_COMPILATION_CACHE": str(sweep_dir.parent / f"{sweep_dir.name}-xla"),
    }
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds


def member_metrics(sweep_dir: Path) -> dict[str, float]:
    return {
        p.parent.name: json.loads(p.read_text())["test/mse"]
        for p in sorted(sweep_dir.glob("*/metrics.json"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=300, help="trainer.epochs per member")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    epochs = [f"trainer.epochs={args.epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        seq_dir, vec_dir = Path(tmp) / "sequential", Path(tmp) / "vectorised"
        seq = run(epochs, seq_dir)
        vec = run([*epochs, "hydra/launcher=vmap"], vec_dir)
        seq_m, vec_m = member_metrics(seq_dir), member_metrics(vec_dir)
    worst = max(abs(vec_m[k] - seq_m[k]) / seq_m[k] for k in seq_m)
    result = {
        "members": len(seq_m),
        "epochs": args.epochs,
        "sequential_seconds": round(seq, 2),
        "vectorised_seconds": round(vec, 2),
        "speedup": round(seq / vec, 2),
        "max_relative_test_mse_difference": worst,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min": os.getloadavg()[0],
    }
    print(f"{'engine':<12}{'members':>8}{'wall s':>10}")
    print(f"{'sequential':<12}{result['members']:>8}{seq:>10.1f}")
    print(f"{'vmap':<12}{result['members']:>8}{vec:>10.1f}")
    print(f"speedup {result['speedup']:.2f}x; members' test/mse agree to {worst:.1e} (relative)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
