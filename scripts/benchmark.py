"""Measure what limits training speed, in one run: writes JSON (``--out``) and prints a table.

    python scripts/benchmark.py --out benchmark.json              # the figures in PERFORMANCE.md
    python scripts/benchmark.py --tiny --out /tmp/b.json          # smoke run (a minute, no timing)
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false python scripts/benchmark.py --only training

Measures (a) the float32 matmul ceiling through JAX, square and at the model's shapes; (b)
training throughput (samples/s, GFLOP/s counted from the layer sizes, % of the ceiling) of the
784-1000-500-250-30 deep autoencoder at batch 128, 1000 and 8192 (an epoch of at least three
batches), the default digits model and the conv model; (c) compile time of the epoch program;
(d) a full MNIST epoch end to end (IDX files, transfer, compile, epoch) against the pure step
time; (e) startup, process start to the first step, by phase, with and without the persistent
compilation cache; (f) peak memory (the process's RSS; on a GPU or TPU also the device
allocator's peak, ``jax.Device.memory_stats``); (g) where PyTorch is installed (never a
dependency; skipped otherwise), the same Hinton step in PyTorch, eager and ``torch.compile``d
(batch 8192 on a GPU or TPU only); (h) a 64-member vectorised sweep of the default digits model
(the engine of ``hydra/launcher=vmap``; members differ in learning rate and seed) against one
member trained alone: the wall time of each, their ratio, samples/s. The figures are for the
device JAX runs on (its kind is printed first); on a GPU or TPU the ceiling is measured in
float32 (true float32, as ``trainer.precision=float32`` computes) and in bfloat16, at sizes up
to 8192.

This file imports only the standard library at the top: ``--startup-probe`` (the child process
that the startup measurement spawns) times ``import jax`` itself.
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
PARTS = ("ceiling", "training", "end_to_end", "startup", "torch", "sweep")
STARTUP_OVERRIDES = ["trainer.epochs=1", "trainer.figures=false"]  # the default run, one epoch
HINTON, DIGITS, CONV = (
    "hinton 784-1000-500-250-30",
    "digits default 64-64-32-8",
    "conv [32, 64] -> 30",
)


def startup_probe(overrides: list[str]) -> dict:
    """Child process: the path of ``experiments/train.py`` up to its first epoch, timestamped."""
    marks = {"python": time.time()}
    import jax

    marks["import_jax"] = time.time()
    jax.devices()
    marks["jax_backend"] = time.time()
    import flax.linen  # noqa: F401
    import optax  # noqa: F401

    marks["import_flax_optax"] = time.time()
    from ae_jax.config import compose
    from ae_jax.data import load_dataset
    from ae_jax.training.trainer import Trainer

    marks["import_hydra_ae_jax"] = time.time()
    cfg = compose(*overrides, conf_dir=REPO / "conf")
    marks["hydra_compose"] = time.time()
    data = load_dataset(cfg.data)
    marks["data_load"] = time.time()
    trainer = Trainer(cfg, data)
    state = trainer.parallel.place(trainer.init_state())
    x = trainer.parallel.place(jax.numpy.asarray(data.x_train))
    hparams = trainer.parallel.place(trainer.hparams())
    jax.block_until_ready((state, x))
    marks["build_and_init"] = time.time()
    program = trainer.compile(state, x, hparams)
    marks["compile"] = time.time()
    jax.block_until_ready(program(state, x, jax.numpy.int32(0), hparams))
    marks["first_epoch"] = time.time()
    return {"marks": marks, "max_rss_kib": peak_rss_kib()}


def peak_rss_kib() -> int:
    """This process's peak resident memory in KiB: VmHWM, which (unlike ``ru_maxrss``, which
    Linux carries over from the parent across fork and exec) counts this program only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_probe(env_extra: dict[str, str], timeout: float) -> dict:
    """Spawn the startup probe; phase durations (s) from process start, and the child's RSS."""
    env = {**os.environ, **env_extra}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--startup-probe"]
    start = time.time()
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )
    if done.returncode:
        raise RuntimeError(f"startup probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    phases, last = {}, start
    for name, stamp in probe["marks"].items():
        phases[name] = stamp - last
        last = stamp
    phases["total_to_first_step"] = last - start
    phases["max_rss_mib"] = probe["max_rss_kib"] / 1024
    return phases


def run_train_script(env_extra: dict[str, str], timeout: float) -> dict:
    """``experiments/train.py`` itself (default config, one epoch): seconds to its first epoch
    line and to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "experiments/train.py",
            *STARTUP_OVERRIDES,
            "trainer.log_every=1",
            f"hydra.run.dir={tmp}",
        ]
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, **env_extra}
        start, first = time.time(), None
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        try:
            for line in proc.stdout:
                if first is None and "epoch 1/1" in line:
                    first = time.time() - start
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        return {
            "first_epoch_line_seconds": first,
            "exit_seconds": time.time() - start,
            "returncode": proc.returncode,
        }


def measure_startup(tiny: bool) -> dict:
    """Startup by phase, cold; then (not ``tiny``) with JAX's persistent compilation cache, cold
    and warm, and ``experiments/train.py`` run twice."""
    out = {"overrides": STARTUP_OVERRIDES, "no_cache": run_probe({}, 300)}
    if tiny:
        return out
    with tempfile.TemporaryDirectory() as cache:
        env = {
            "JAX_COMPILATION_CACHE_DIR": cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
        out["cache_cold"] = run_probe(env, 300)
        out["cache_warm"] = run_probe(env, 300)
    # the entry point itself, twice: a run after a run (with its own cache, if it keeps one)
    with tempfile.TemporaryDirectory() as cache:
        env = {"AE_JAX_COMPILATION_CACHE": cache}
        out["train_py_first"] = run_train_script(env, 600)
        out["train_py_second"] = run_train_script(env, 600)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    p.add_argument("--tiny", action="store_true", help="smoke mode: tiny sizes, one repeat")
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the best one counts")
    p.add_argument(
        "--examples",
        type=int,
        default=12000,
        help="MNIST-shaped examples per timed epoch of the throughput runs",
    )
    p.add_argument(
        "--conv-examples",
        type=int,
        default=2048,
        help="examples per timed epoch of the conv model (slow where XLA is slow)",
    )
    p.add_argument(
        "--mnist-dir",
        default=os.environ.get("AE_JAX_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist")),
    )
    p.add_argument("--e2e-batch", type=int, default=128, help="batch of the full MNIST run")
    p.add_argument("--e2e-epochs", type=int, default=3, help="epochs of the full MNIST run")
    p.add_argument(
        "--sweep-members",
        type=int,
        help="members of the vectorised digits sweep (default 64; --tiny: 8)",
    )
    p.add_argument(
        "--sweep-epochs",
        type=int,
        default=100,
        help="epochs of the sweep and of its one member alone (--tiny: 2); they amortise the "
        "loop's fixed costs (first dispatch, compiling the evaluation, the checkpoint)",
    )
    p.add_argument("--startup-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    at_least = {"--repeats": (args.repeats, 1), "--e2e-batch": (args.e2e_batch, 1)}
    at_least["--e2e-epochs"] = (args.e2e_epochs, 1)
    if args.sweep_members is None:
        args.sweep_members = 8 if args.tiny else 64
    at_least["--sweep-members"] = (args.sweep_members, 1)
    at_least["--sweep-epochs"] = (args.sweep_epochs, 1)
    if not args.tiny:  # every timed epoch needs whole batches: 1000 for Hinton, 128 for conv
        at_least["--examples"] = (args.examples, 1000)
        at_least["--conv-examples"] = (args.conv_examples, 128)
    for flag, (value, low) in at_least.items():
        if value < low:
            p.error(f"{flag}={value} is too small; it must be at least {low}")
    if args.out is not None and args.out.is_dir():
        p.error(f"--out={args.out} is a directory; give a file path for the JSON")
    return args


def run(args: argparse.Namespace) -> dict:
    from ae_jax import benchmarking as bm
    from ae_jax.data import DataError

    tiny = args.tiny
    repeats = 1 if tiny else args.repeats
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tiny": tiny,
        "machine": bm.machine_info(),
        "load_before": bm.load_average(),
    }
    hinton_dims = (784, *bm.HINTON_WIDTHS, bm.HINTON_LATENT, *reversed(bm.HINTON_WIDTHS), 784)
    batches = (32,) if tiny else bm.HINTON_BATCHES
    accelerator = result["machine"]["platform"] != "cpu"
    # PyTorch's eager steps at 8192 take minutes on a CPU: the side-by-side stops at 1000 there
    torch_batches = batches if accelerator else tuple(b for b in batches if b <= 1000)
    sizes = (256,) if tiny else (1024, 2048, 4096, 8192) if accelerator else (1024, 2048, 3072)
    ceiling_repeats = 1 if tiny else 4 * repeats  # the best one must catch the cores free
    if "ceiling" in args.only or "training" in args.only:
        result["ceiling"] = {"square_start": bm.square_ceiling(sizes, ceiling_repeats)}
        for b in batches:
            result["ceiling"][f"hinton_batch_{b}"] = bm.shape_ceiling(b, hinton_dims, repeats)
        if accelerator:  # XLA:CPU has no fast bfloat16 products: measured on GPU / TPU only
            result["ceiling"]["square_bf16"] = bm.square_ceiling(sizes, ceiling_repeats, "bfloat16")
    rows = []
    if "training" in args.only:
        n = 4 * max(batches) if tiny else args.examples
        mnist_like = bm.synthetic_mnist(n)
        hinton_flops = bm.mlp_flops_per_example(hinton_dims)
        for b in batches:
            cfg = bm.hinton_config(b)
            size = n if tiny else bm.epoch_examples(n, b)  # at least 3 batches (8192: 24576)
            data = mnist_like if size == n else bm.synthetic_mnist(size)
            rows.append(bm.measure_training(HINTON, cfg, data, hinton_flops, repeats))
            del data
        digits_cfg = bm.digits_config()
        digits = bm.load_dataset(digits_cfg.data)
        trainer = bm.Trainer(digits_cfg, digits)
        dims = (digits.num_features, *trainer.model.widths, digits_cfg.model.latent_dim)
        dims = (*dims, *reversed(dims[:-1]))
        flops = bm.mlp_flops_per_example(dims)
        rows.append(bm.measure_training(DIGITS, digits_cfg, digits, flops, repeats))
        conv = bm.conv_config(batches[0])
        m = conv.model
        flops = bm.conv_flops_per_example(
            bm.MNIST_SHAPE, tuple(m.channels), m.kernel_size, m.latent_dim
        )
        conv_data = bm.synthetic_mnist(n if tiny else args.conv_examples)
        rows.append(bm.measure_training(CONV, conv, conv_data, flops, repeats))
    if "end_to_end" in args.only:
        limit = {"max_train": 4 * args.e2e_batch, "max_test": 256} if tiny else {}
        cfg = bm.hinton_config(
            args.e2e_batch,
            args.e2e_epochs,
            source="idx",
            name="mnist",
            path=args.mnist_dir,
            **limit,
        )
        try:
            result["end_to_end"] = bm.measure_end_to_end(cfg, min(repeats, 3))
        except DataError as err:  # no MNIST files here: say so, measure the rest
            result["end_to_end"] = {"error": f"{type(err).__name__}: {err}"}
    if "startup" in args.only:
        result["startup"] = measure_startup(tiny)
    if "torch" in args.only:
        result["torch"] = bm.torch_hinton(torch_batches, 5 if tiny else 50, repeats)
    if "sweep" in args.only:
        epochs = 2 if tiny else args.sweep_epochs
        result["sweep"] = bm.measure_sweep(args.sweep_members, epochs, min(repeats, 3))
    if "ceiling" in result:  # again at the end: the best of both is the ceiling
        result["ceiling"]["square_end"] = bm.square_ceiling(sizes, ceiling_repeats)
        ceiling = bm.best_ceiling(
            result["ceiling"]["square_start"], result["ceiling"]["square_end"]
        )
        result["ceiling"]["best"] = ceiling
        if rows:
            result["training"] = [
                bm.score(r, ceiling, result["ceiling"].get(f"hinton_batch_{r['batch_size']}"))
                if r["model"] == HINTON
                else bm.score(r, ceiling)
                for r in rows
            ]
    result["memory"] = bm.peak_memory()
    result["load_after"] = bm.load_average()
    return result


def table(result: dict) -> str:
    """The results as aligned text, one section per measurement."""
    machine = result["machine"]
    lines = [
        f"device: {machine.get('device_kind', machine['device'])} "
        f"({machine.get('device_count', 1)} x {machine.get('platform', '?')}); host: "
        f"{result['machine']['cpu']} ({result['machine']['cores']} cores), "
        f"jax {result['machine']['jax']}, load {result['load_before']} -> "
        f"{result['load_after']}, XLA_FLAGS='{result['machine']['xla_flags']}'"
    ]
    if "ceiling" in result:
        c = result["ceiling"]
        for key in ("square_start", "square_end"):
            sq = ", ".join(f"{k}: {v:.1f}" for k, v in c[key]["sizes"].items())
            lines.append(f"matmul square GFLOP/s at the {key[7:]}: {sq}")
        lines.append(
            f"  ceiling (best): {c['best']['gflops']:.1f} GFLOP/s; per CPU-second "
            f"{c['best']['gflops_per_cpu_second']:.1f}"
        )
        if "square_bf16" in c:
            sq = ", ".join(f"{k}: {v:.1f}" for k, v in c["square_bf16"]["sizes"].items())
            lines.append(f"  bfloat16 matmul GFLOP/s: {sq}")
        for key, v in c.items():
            if key.startswith("hinton_batch_"):
                lines.append(
                    f"  at the products of a {key[13:]}-example Hinton step: {v['gflops']:.1f} "
                    f"GFLOP/s combined; per CPU-second {v['gflops_per_cpu_second']:.1f}"
                )
    if "training" in result:
        head = (
            f"{'model':28s} {'batch':>5s} {'samples/s':>10s} {'GFLOP/s':>8s} {'%ceil':>6s} "
            f"{'%shape':>6s} {'%c/cpu':>6s} {'step ms':>8s} {'cpu ms':>8s} {'pure ms':>8s} "
            f"{'compile s':>9s}"
        )
        lines += ["", head, "-" * len(head)]
        for r in result["training"]:
            shape = f"{r['pct_of_shape_ceiling']:6.1f}" if "pct_of_shape_ceiling" in r else " " * 6
            lines.append(
                f"{r['model']:28s} {r['batch_size']:5d} {r['samples_per_second']:10.0f} "
                f"{r['gflops']:8.2f} {r['pct_of_ceiling']:6.1f} {shape} "
                f"{r['pct_of_ceiling_cpu']:6.1f} {r['step_ms']:8.2f} {r['cpu_step_ms']:8.2f} "
                f"{r['pure_step_ms']:8.2f} {r['compile_seconds']:9.2f}"
            )
    if "error" in result.get("end_to_end", {}):
        lines += ["", f"MNIST end to end: not measured: {result['end_to_end']['error']}"]
    elif "end_to_end" in result:
        e = result["end_to_end"]
        lines += [
            "",
            f"MNIST end to end ({e['examples']} examples, batch {e['batch_size']}): "
            f"load {e['load_seconds']:.2f}s, build {e['build_seconds']:.2f}s, transfer "
            f"{e['transfer_seconds']:.2f}s, compile {e['compile_seconds']:.2f}s",
            f"  epoch {e['epoch_seconds']:.2f}s vs pure steps {e['pure_epoch_seconds']:.2f}s "
            f"({e['epoch_over_pure_pct']:+.1f}%; in CPU time "
            f"{e['epoch_over_pure_cpu_pct']:+.1f}%)",
            f"  first epoch from the files: {e['first_epoch_end_to_end_seconds']:.2f}s "
            f"({e['first_epoch_over_pure_pct']:+.1f}% over the pure steps)",
        ]
    if "startup" in result:
        lines.append("")
        for key in ("no_cache", "cache_cold", "cache_warm"):
            if key not in result["startup"]:
                continue
            s = result["startup"][key]
            phases = ", ".join(
                f"{k} {v:.2f}"
                for k, v in s.items()
                if k not in ("total_to_first_step", "max_rss_mib")
            )
            lines.append(
                f"startup {key:10s}: {s['total_to_first_step']:.2f}s to first step ({phases})"
            )
        for key in ("train_py_first", "train_py_second"):
            if key in result["startup"]:
                t = result["startup"][key]
                first = t["first_epoch_line_seconds"]
                first = "never" if first is None else f"{first:.2f}s"
                lines.append(
                    f"experiments/train.py ({key[9:]} run): first epoch line at {first}, "
                    f"exit at {t['exit_seconds']:.1f}s (status {t['returncode']})"
                )
    if "torch" in result:
        lines += ["", *torch_lines(result["torch"])]
    if "sweep" in result:
        lines += ["", *sweep_lines(result["sweep"])]
    m = result["memory"]
    lines += ["", f"peak RSS of this benchmark process: {m['max_rss_mib']:.0f} MiB"]
    if "startup" in result:
        rss = result["startup"]["no_cache"]["max_rss_mib"]
        lines.append(f"peak RSS of the default run (startup probe, one epoch): {rss:.0f} MiB")
    if "device_stats" in m:
        lines.append(f"device memory: {m['device_stats']}")
    else:
        peak, limit = (m.get(f"device_{k}") for k in ("peak_bytes_in_use", "bytes_limit"))
        mib = ["n/a" if v is None else f"{v / 2**20:.0f} MiB" for v in (peak, limit)]
        lines.append(f"device memory: peak {mib[0]} in use, of {mib[1]}")
    return "\n".join(lines)


def torch_lines(t: dict) -> list[str]:
    """The PyTorch side-by-side as text lines."""
    if "skipped" in t:
        return [f"PyTorch side-by-side: skipped ({t['skipped']})"]
    lines = [f"PyTorch {t['torch']} on {t['device']}, Hinton step, float32 (no TF32):"]
    for r in t["rows"]:
        if "error" in r:
            lines.append(f"  {r['mode']:8s} batch {r['batch_size']:5d}: failed: {r['error']}")
        else:
            lines.append(
                f"  {r['mode']:8s} batch {r['batch_size']:5d}: {r['step_ms']:8.3f} ms/step, "
                f"{r['samples_per_second']:10.0f} samples/s, {r['gflops']:8.1f} GFLOP/s "
                f"(warm-up {r['warmup_seconds']:.1f}s)"
            )
    return lines


def sweep_lines(s: dict) -> list[str]:
    """The vectorised sweep against one member, as text lines."""
    n = s["members"]
    lines = [
        f"vmap sweep: {n} members of the {s['model']} ({s['varied']} vary), {s['epochs']} "
        f"epochs of {s['examples_per_epoch']} examples, batch {s['batch_size']}:"
    ]
    for label, r, of in (
        ("1 member alone", s["single"], ""),
        (f"{n} members, vmap", s["vmap"], " (all members)"),
    ):
        lines.append(
            f"  {label:17s}: {r['train_seconds']:8.3f}s train, compile "
            f"{r['compile_seconds']:6.2f}s, {r['samples_per_second']:12.0f} samples/s{of}"
        )
    failed = s["vmap"]["failed_members"]
    lines.append(
        f"  time ratio {n} members / 1 member: {s['time_ratio']:.2f} (throughput "
        f"{s['throughput_ratio']:.1f}x one member's)"
        + (f"; {failed} members diverged" if failed else "")
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))  # this checkout's ae_jax, installed or not
    if args.startup_probe:
        print(json.dumps(startup_probe(STARTUP_OVERRIDES)))
        return 0
    mnist = Path(args.mnist_dir)
    if "end_to_end" in args.only and not (mnist.is_dir() and any(mnist.iterdir())):
        print(
            f"warning: no MNIST IDX files in --mnist-dir={mnist} ($AE_JAX_MNIST_DIR): the full "
            "MNIST epoch (end_to_end) will not be measured and the exit status will be 1. "
            "Point --mnist-dir at the four official files, or leave end_to_end out of --only.",
            file=sys.stderr,
        )
    result = run(args)
    print(table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 1 if "error" in result.get("end_to_end", {}) else 0


if __name__ == "__main__":
    sys.exit(main())
