"""Benchmark: sweeps of the default digits model, sequential vs vectorised, as a user runs them.

Every figure comes from fresh processes of the documented commands, in one run of this script:

  single run:  python experiments/train.py trainer.figures=false            (twice: the second
               finds the first's compiled programs in the cache; its wall time outside
               training is process start, composition, compile, evaluation and writing)
  sequential:  python experiments/train.py --multirun noise=masking noise.level=0,0.1,0.2,0.3 \\
                   trainer.seed=0,1 trainer.figures=false                   (Hydra's basic launcher)
  vectorised:  the same command + hydra/launcher=vmap, with 8, 32 and 64 members (4 or 8 noise
               levels x 2 or 8 seeds)

Each sweep starts from an empty compilation cache of its own (a first sweep on a fresh
machine; members after the first of a sequential sweep load the programs it compiled). The
8-member sweeps then run once more with their caches warm (the same sweep again, or another
of the same shapes: what a user's later sweeps pay). The
compute floor is the members' training FLOPs (6 per multiply-accumulate of the dense layers, per
example) over the machine's float32 matmul ceiling measured here (best square product).

    python scripts/benchmark_sweep.py [--epochs 300] [--members 8 32 64] [--out sweep.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIXED = ("noise=masking", "trainer.figures=false")
LEVELS = ("0,0.1,0.2,0.3", "0,0.05,0.1,0.15,0.2,0.25,0.3,0.35")


def sweep_overrides(members: int) -> list[str]:
    """8 = 4 levels x 2 seeds, 32 = 4 x 8, 64 = 8 x 8 (a multiple of 4 up to 32, of 8 above)."""
    levels = LEVELS[1] if members > 32 else LEVELS[0]
    seeds = members // len(levels.split(","))
    if members < 1 or seeds * len(levels.split(",")) != members:
        sys.exit(f"--members {members}: use a multiple of 4 up to 32, or of 8 above it")
    return [f"noise.level={levels}", f"trainer.seed=range(0,{seeds})"]


def run(args: list[str], out_dir: Path, cache: Path, multirun: bool = True) -> float:
    """Wall seconds of one command in a fresh process."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    cmd = [sys.executable, "experiments/train.py", *(["--multirun"] if multirun else []), *args]
    cmd.append(f"{key}={out_dir}")
    env = {**os.environ, "AE_JAX_COMPILATION_CACHE": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds


def metrics(sweep_dir: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))
    }


def training_flops(epochs: int, members: int) -> float:
    """FLOPs of ``members`` default digits runs of ``epochs`` epochs (dense layers, 6/MAC)."""
    import jax

    from ae_jax.config import compose
    from ae_jax.data import load_dataset
    from ae_jax.training.trainer import Trainer

    cfg = compose(*FIXED, conf_dir=REPO / "conf")
    trainer = Trainer(cfg, load_dataset(cfg.data))
    params = trainer.init_state().params
    kernels = [k for path, k in jax.tree_util.tree_leaves_with_path(params) if k.ndim == 2]
    macs = sum(k.shape[0] * k.shape[1] for k in kernels)
    per_example = 6 * macs  # forward 2, backward 4 per multiply-accumulate
    examples = epochs * trainer.steps_per_epoch * cfg.trainer.batch_size
    return float(per_example) * examples * members


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=300, help="trainer.epochs per member")
    parser.add_argument("--members", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.epochs < 1:
        sys.exit(f"--epochs {args.epochs}: use a positive number of epochs")
    for n in args.members:
        sweep_overrides(n)  # every size checked before anything is timed
    from ae_jax.benchmarking import load_average, machine_info, square_ceiling

    epochs = [f"trainer.epochs={args.epochs}"]
    ceiling = square_ceiling((256, 512, 1024), repeats=3)["gflops"]
    rows, result = [], {"epochs": args.epochs, "machine": machine_info()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # A single run, twice: the second with the first's compiled programs.
        single = []
        for i in range(2):
            wall = run([*FIXED, *epochs], tmp / f"single{i}", tmp / "single-xla", multirun=False)
            train = json.loads((tmp / f"single{i}" / "metrics.json").read_text())
            single.append((wall, train["time/train_seconds"]))
        result["single_run"] = {
            "wall_seconds_cold": round(single[0][0], 2),
            "wall_seconds_warm": round(single[1][0], 2),
            "train_seconds_warm": round(single[1][1], 2),
            "outside_training_seconds_warm": round(single[1][0] - single[1][1], 2),
        }
        base = args.members[0]
        seq_dir = tmp / "sequential"
        seq_over = [*FIXED, *epochs, *sweep_overrides(base)]
        seq = run(seq_over, seq_dir, tmp / "seq-xla")
        seq_m = metrics(seq_dir)
        rows.append(("sequential", base, seq, None, None))
        seq_warm = run(seq_over, tmp / "sequential-warm", tmp / "seq-xla")
        for n in args.members:
            vec_dir = tmp / f"vmap{n}"
            over = [*FIXED, *epochs, *sweep_overrides(n), "hydra/launcher=vmap"]
            wall = run(over, vec_dir, tmp / f"vmap{n}-xla")
            vec_m = metrics(vec_dir)
            if len(vec_m) != n:
                sys.exit(f"vmap sweep of {n} members wrote {len(vec_m)} metrics files")
            train = max(m["time/train_seconds"] for m in vec_m.values())
            floor = training_flops(args.epochs, n) / (ceiling * 1e9)
            rows.append(("vmap", n, wall, train, floor))
            if n == base:
                vmap_warm = run(over, tmp / f"vmap{n}-warm", tmp / f"vmap{n}-xla")
                worst = max(
                    abs(vec_m[k]["test/mse"] - seq_m[k]["test/mse"]) / seq_m[k]["test/mse"]
                    for k in seq_m
                )
    vmap = {n: (wall, train, floor) for engine, n, wall, train, floor in rows if engine == "vmap"}
    result |= {
        "matmul_ceiling_gflops": round(ceiling, 1),
        "sequential_seconds": round(seq, 2),
        "vmap": {
            str(n): {
                "wall_seconds": round(w, 2),
                "train_seconds": round(t, 2),
                "compute_floor_seconds": round(f, 2),
            }
            for n, (w, t, f) in vmap.items()
        },
        "speedup": round(seq / vmap[base][0], 2),
        "warm_cache": {
            "sequential_seconds": round(seq_warm, 2),
            "vmap_seconds": round(vmap_warm, 2),
            "speedup": round(seq_warm / vmap_warm, 2),
        },
        "max_relative_test_mse_difference": worst,
        "load_average_1min": load_average()[0],
    }
    s = result["single_run"]
    print(
        f"single run: {s['wall_seconds_warm']:.1f} s wall with a warm cache "
        f"({s['wall_seconds_cold']:.1f} s cold), {s['train_seconds_warm']:.1f} s training, "
        f"{s['outside_training_seconds_warm']:.1f} s outside training"
    )
    print(f"float32 matmul ceiling {ceiling:.0f} GFLOP/s")
    print(
        f"{'engine':<12}{'members':>8}{'wall s':>9}{'x seq':>8}{'x 8':>7}"
        f"{'train s':>9}{'floor s':>9}{'x floor':>9}"
    )
    for engine, n, wall, train, floor in rows:
        line = f"{engine:<12}{n:>8}{wall:>9.1f}"
        if engine == "vmap":
            line += f"{seq * n / base / wall:>8.2f}{wall / vmap[base][0]:>7.2f}"
            line += f"{train:>9.1f}{floor:>9.2f}{train / floor:>9.1f}"
        print(line)
    print(f"(x seq beyond {base} members: against {base} sequential runs' time scaled by n/{base})")
    print(
        f"speedup at {base} members {result['speedup']:.2f}x; members' test/mse agree with "
        f"their sequential runs to {worst:.1e} (relative); load average {load_average()[0]:.2f}"
    )
    print(
        f"warm cache (the same sweeps again): sequential {seq_warm:.1f} s, vmap {vmap_warm:.1f} s, "
        f"speedup at {base} members {seq_warm / vmap_warm:.2f}x"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
