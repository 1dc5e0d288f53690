"""A/B of the training step between two git revisions, measured in one run, interleaved.

    python scripts/benchmark_ab.py                       # HEAD~1 (A) against the working tree (B)
    python scripts/benchmark_ab.py --a 2d17371 --b HEAD --rounds 5

Each revision is exported (``git archive``; the working tree is used as it is for ``WORKTREE``)
and measured in its own fresh process, A and B alternating for ``--rounds`` rounds, so that
load and thermal drift hit both alike. Each process times the compiled epoch program of the
Hinton autoencoder 784-1000-500-250-30 (sigmoid, BCE, Adam) on MNIST-shaped data with
``ae_jax.benchmarking.epoch_program_seconds`` (best of ``--repeats`` epochs) at each batch size.
Prints ms per step for A and B, and B/A.

    python scripts/benchmark_ab.py --run --a 66740cf --b HEAD --rounds 5
    python scripts/benchmark_ab.py --run --a 66740cf --b HEAD -- noise=masking noise.level=0.3

``--run`` times a whole run instead: ``experiments/train.py`` (the default digits run, or the
overrides after ``--``) in a fresh process, once per revision to fill its own compilation cache
and then alternating for ``--rounds`` rounds. Prints the best and median wall time, the
training time (``time/train_seconds``), the rest (process start, composition, compiling,
evaluation, figures and files) and the process's CPU seconds. ``--cold`` gives every timed run
an empty compilation cache of its own, what a first run of these shapes pays. ``--sweep``
times a ``--multirun`` of those overrides the same way (training: the longest member's
``time/train_seconds``):

    python scripts/benchmark_ab.py --sweep --a 8902c9a --b HEAD -- noise=masking \\
        trainer.figures=false noise.level=0,0.1,0.2,0.3 'trainer.seed=range(0,2)' \\
        hydra/launcher=vmap
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKTREE = "WORKTREE"

PROBE = """
import json, sys
from ae_jax.benchmarking import epoch_program_seconds, hinton_config, synthetic_mnist
from ae_jax.training.trainer import Trainer
out = {}
for batch in BATCHES:
    cfg = hinton_config(batch)
    trainer = Trainer(cfg, synthetic_mnist(batch * STEPS))
    compile_s, wall, cpu = epoch_program_seconds(trainer, REPEATS)
    out[batch] = 1e3 * wall / trainer.steps_per_epoch
print(json.dumps(out))
"""


def export(rev: str, into: Path) -> Path:
    if rev == WORKTREE:
        return REPO
    target = into / rev.replace("/", "_")
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", rev], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def measure(tree: Path, batches: list[int], steps: int, repeats: int) -> dict[str, float]:
    code = (
        PROBE.replace("BATCHES", repr(batches))
        .replace("STEPS", str(steps))
        .replace("REPEATS", str(repeats))
    )
    env = {**os.environ, "PYTHONPATH": str(tree), "AE_JAX_COMPILATION_CACHE": "off"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"error: the probe failed in {tree}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_run(
    tree: Path, overrides: list[str], out: Path, cache: Path, sweep: bool = False
) -> tuple[float, float, float]:
    """(wall seconds, time/train_seconds, CPU seconds) of one ``experiments/train.py`` process
    in ``tree`` (with ``sweep``, a multirun: the longest member's training)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "AE_JAX_COMPILATION_CACHE": str(cache)}
    mode = ["--multirun"] if sweep else []
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    cmd = [sys.executable, "experiments/train.py", *mode, *overrides, f"{key}={out}"]
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed in {tree}:\n{proc.stderr[-2000:]}")
    files = sorted(out.glob("*/metrics.json")) if sweep else [out / "metrics.json"]
    if not files:
        sys.exit(f"error: {' '.join(cmd)} wrote no metrics.json under {out}")
    return wall, max(json.loads(f.read_text())["time/train_seconds"] for f in files), cpu


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare_runs(args, trees: dict[str, Path], tmp: Path) -> None:
    times: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
    if not args.cold:
        for name in ("A", "B"):  # each revision's compiled programs in its own cache
            cache = tmp / f"cache{name}"
            time_run(trees[name], args.overrides, tmp / f"warm{name}", cache, args.sweep)
    for r in range(args.rounds):
        for name in ("A", "B"):
            out = tmp / f"run{name}{r}"
            cache = tmp / (f"cold{name}{r}" if args.cold else f"cache{name}")
            times[name].append(time_run(trees[name], args.overrides, out, cache, args.sweep))
            wall, train, cpu = times[name][-1]
            print(f"round {r + 1}/{args.rounds} {name}: {wall:.2f} s ({train:.2f} training, "
                  f"{cpu:.2f} CPU-s)", file=sys.stderr)  # fmt: skip
    mode = "--multirun " if args.sweep else ""
    cache = "empty compilation caches" if args.cold else "warm compilation cache"
    print(f"experiments/train.py {mode}{' '.join(args.overrides)}: seconds, {cache}, "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"A = {args.a}, B = {args.b}")
    print(f"{'':>4} {'best wall':>10} {'median wall':>12} {'training':>9} {'outside':>8} "
          f"{'median CPU s':>13}")  # fmt: skip
    for name in ("A", "B"):
        walls = sorted(w for w, _, _ in times[name])
        wall, train, _ = min(times[name])
        cpu = statistics.median(c for _, _, c in times[name])
        print(f"{name:>4} {wall:>10.2f} {statistics.median(walls):>12.2f} {train:>9.2f} "
              f"{wall - train:>8.2f} {cpu:>13.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", default="HEAD~1", help="git revision A (default HEAD~1)")
    parser.add_argument("--b", default=WORKTREE, help="git revision B (default: working tree)")
    parser.add_argument("--batches", default="128,1000", help="batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch (default 40)")
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per process")
    parser.add_argument("--rounds", type=int, default=3, help="A/B alternations")
    parser.add_argument("--run", action="store_true", help="time whole runs, not the step")
    parser.add_argument("--sweep", action="store_true", help="time whole --multirun sweeps")
    parser.add_argument(
        "--cold", action="store_true", help="with --run/--sweep: an empty cache for every run"
    )
    parser.add_argument("overrides", nargs="*", help="with --run/--sweep: overrides of the run")
    args = parser.parse_args()
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        sys.exit(f"error: --batches={args.batches!r} must be integers separated by commas")
    if min(batches) < 1 or args.steps < 1 or args.repeats < 1 or args.rounds < 1:
        sys.exit("error: --batches, --steps, --repeats and --rounds must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            trees = {name: export(rev, Path(tmp)) for name, rev in (("A", args.a), ("B", args.b))}
        except subprocess.CalledProcessError as err:
            sys.exit(f"error: git archive failed: {err.stderr.decode().strip()}")
        if args.run or args.sweep:
            return compare_runs(args, trees, Path(tmp))
        best: dict[str, dict[str, float]] = {"A": {}, "B": {}}
        for r in range(args.rounds):
            for name in ("A", "B"):
                for batch, ms in measure(trees[name], batches, args.steps, args.repeats).items():
                    best[name][batch] = min(ms, best[name].get(batch, float("inf")))
                print(f"round {r + 1}/{args.rounds} {name}: {best[name]}", file=sys.stderr)
    print(f"Hinton AE step, ms (best of {args.rounds} rounds x {args.repeats} epochs)")
    print(f"A = {args.a}, B = {args.b}")
    print(f"{'batch':>6} {'A':>9} {'B':>9} {'B/A':>7}")
    for batch in best["A"]:
        a, b = best["A"][batch], best["B"][batch]
        print(f"{batch:>6} {a:>9.2f} {b:>9.2f} {b / a:>7.3f}")


if __name__ == "__main__":
    main()
