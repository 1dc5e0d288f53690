"""Where a vectorised group's epoch spends its time: the compiled program alone, then by op.

The vmap engine's training time is its epoch program (the loop around it adds little, see
PERFORMANCE.md). This script times that program, the one ``train_group`` compiles, for the
default digits model with masking noise (what ``scripts/benchmark_sweep.py`` sweeps) at
several member counts, and the same members one after another in the single-run program, in
one process:

    python scripts/profile_group.py                      # 1, 2, 4, 8 members on 1 core
    python scripts/profile_group.py --devices 2 --members 8 64
    python scripts/profile_group.py --members 4 --trace  # + a jax.profiler breakdown by op
    python scripts/profile_group.py noise=none           # any config overrides at the end
    python scripts/profile_group.py --devices 2 --members 8 --seeds 2   # 4 members per seed

``--seeds`` gives the members that many seeds (consecutive members share one), so that the
members of a seed share their random draws as ``train_group`` arranges them; by default each
member has its own seed.

``--trace`` records five epochs with ``jax.profiler`` and sums the XLA:CPU thunks' time by
kind: the threefry loops (random bits of the noise and the per-example keys), the matrix
products (``dot`` and YNNPACK fusions), the epoch's permutation sort, and the rest. Sums of
op time exceed the wall time when XLA runs independent thunks at once; read them as shares.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--devices", type=int, default=1, help="CPU devices (one per core)")
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=None, help="seeds among the members")
    parser.add_argument("--trace", action="store_true", help="op breakdown of the last count")
    parser.add_argument("overrides", nargs="*", default=["noise=masking"])
    args = parser.parse_args()
    if args.devices < 1 or any(m < 1 for m in args.members) or (args.seeds or 1) < 1:
        sys.exit("--devices, --members and --seeds must be positive integers")
    os.environ.setdefault("AE_JAX_COMPILATION_CACHE", "off")
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    import numpy as np

    from ae_jax.config import ConfigError, compose
    from ae_jax.data import load_dataset
    from ae_jax.sweeps import vectorized as V
    from ae_jax.training.objective import make_hparams
    from ae_jax.training.parallel import compiler_options
    from ae_jax.training.trainer import Trainer

    overrides = ["trainer.figures=false", "trainer.progress=false", *args.overrides]
    try:
        cfg = compose(*overrides, conf_dir=REPO / "conf")
    except ConfigError as err:  # a bad override, on one line
        sys.exit(f"overrides {' '.join(args.overrides)}: {err}")
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, devices=1))
    data = load_dataset(cfg.data)
    trainer = Trainer(cfg, data)
    steps = trainer.steps_per_epoch
    print(
        f"{' '.join(args.overrides) or 'defaults'}: {steps} steps of {cfg.trainer.batch_size} "
        f"per epoch, {args.devices} CPU device(s), best of {args.repeats} x {args.epochs} epochs"
    )

    def best_ms(fn, state, extra) -> tuple[float, object]:
        state, metrics = fn(state, *extra(0))
        jax.block_until_ready(metrics)
        times = []
        for r in range(args.repeats):
            start = time.perf_counter()
            for e in range(args.epochs):
                state, metrics = fn(state, *extra(1 + r * args.epochs + e))
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - start) / args.epochs)
        return 1e3 * min(times), state

    # One member's single-run program (what a sequential sweep runs), for the ratio.
    x = jax.device_put(np.asarray(data.x_train))
    state = trainer.init_state(seed=0)
    single = (
        jax.jit(trainer.epoch_fn, donate_argnums=0)
        .lower(state, x, np.int32(0), trainer.hparams())
        .compile(compiler_options=compiler_options(jax.devices()[:1]))
    )
    one, _ = best_ms(single, state, lambda e: (x, np.int32(e), trainer.hparams()))
    print(f"single-run program, 1 member: {one:.2f} ms per epoch")
    print("members | ms per epoch | per member | vs the single-run program | layout")
    for n in args.members:
        seeds = list(range(n)) if args.seeds is None else [i * args.seeds // n for i in range(n)]
        configs = [
            dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, seed=s))
            for s in seeds
        ]
        layout = V.group_layout(n, None, cfg.trainer.batch_size)
        runs = V.shared_draws(seeds, layout.members)
        hp = V._spread(V._stack([make_hparams(c) for c in configs]), layout.mesh)
        xs = V._spread(np.asarray(data.x_train), layout.mesh, replicated=True)
        states = V._spread(V._stack([trainer.init_state(seed=s) for s in seeds]), layout.mesh)
        program = (
            jax.jit(V._group_epoch(trainer, layout, runs), donate_argnums=0)
            .lower(states, xs, np.int32(0), hp)
            .compile(compiler_options=compiler_options(jax.devices()))
        )
        ms, states = best_ms(program, states, lambda e, xs=xs, hp=hp: (xs, np.int32(e), hp))
        print(
            f"{n:7d} | {ms:12.2f} | {ms / n:10.2f} | {one * n / ms:24.2f}x | "
            + layout.describe().lstrip(", ")
            + (f", {runs} members per draw" if runs > 1 else "")
        )
    if args.trace:
        _trace(program, states, xs, hp, steps, n)


def _trace(program, states, xs, hp, steps: int, members: int) -> None:
    import jax
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        jax.block_until_ready(states)
        jax.profiler.start_trace(tmp)
        for e in range(5):
            states, metrics = program(states, xs, np.int32(1000 + e), hp)
        jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        files = sorted(Path(tmp).glob("plugins/profile/*/*.trace.json.gz"))
        if not files:
            sys.exit(f"jax.profiler wrote no trace under {tmp}")
        events = [e for e in json.load(gzip.open(files[-1]))["traceEvents"] if e.get("ph") == "X"]

    def inside(e, w) -> bool:
        return w is not e and w["tid"] == e["tid"] and w["ts"] <= e["ts"] <= w["ts"] + w["dur"]

    # The threefry loops: XLA:CPU whiles with no matrix product inside (the epoch's scan is a
    # while too, around everything).
    products = [e for e in events if e["name"].startswith(("dot", "ynn_fusion"))]
    whiles = [e for e in events if re.fullmatch(r"while\.\d+", e["name"])]
    loops = [w for w in whiles if not any(inside(p, w) for p in products)]

    def in_loop(e) -> bool:
        return any(inside(e, w) for w in loops)

    kinds: collections.Counter = collections.Counter()
    for e in events:
        name = e["name"]
        if not re.fullmatch(r"[a-z_]+(\.\d+)?", name) or (
            name.startswith("while") and e not in loops
        ):
            continue
        if e in loops:
            kinds["threefry loops (noise bits, example keys)"] += e["dur"]
            continue
        if in_loop(e):
            continue
        if name.startswith("sort"):
            kinds["permutation sort"] += e["dur"]
        elif name.startswith(("dot", "ynn_fusion")):
            kinds["matrix products (dot, YNNPACK)"] += e["dur"]
        else:
            kinds["other fusions and copies"] += e["dur"]
    total = sum(kinds.values())
    print(f"\nop time of 5 epochs ({5 * steps} steps) of {members} member(s), by kind:")
    for kind, us in kinds.most_common():
        print(f"  {kind:42s} {us / 1e3:8.1f} ms  {100 * us / total:5.1f}%")


if __name__ == "__main__":
    main()
