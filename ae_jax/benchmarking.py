"""Measurements behind ``scripts/benchmark.py``: matmul ceiling, training, epochs, memory.

Every figure comes from the real training path (``Trainer``, its compiled epoch program, and the
per-device ``make_train_step``) and is the best of several repeats, so that other processes on a
shared machine slow a repeat down but do not set the number. FLOPs are counted from the layer
sizes, as is customary (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1:
forward 2 x multiply-accumulates, backward twice the forward), not measured: bias adds,
activations and the optimiser are overhead, not work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax.config import Config, DataConfig, LossConfig, ModelConfig, TrainerConfig, validate
from ae_jax.data import Dataset, load_dataset
from ae_jax.sweeps.vectorized import group_by_program, train_group
from ae_jax.training.checkpoint import Checkpointer
from ae_jax.training.parallel import compiler_options
from ae_jax.training.step import make_train_step
from ae_jax.training.trainer import Trainer

MNIST_SHAPE = (28, 28, 1)
HINTON_WIDTHS = (1000, 500, 250)  # Hinton & Salakhutdinov (2006): 784-1000-500-250-30
HINTON_LATENT = 30
HINTON_BATCHES = (128, 1000, 8192)  # the training rows' batch sizes (--tiny: 32 alone)
MIN_STEPS = 3  # batches per timed epoch at least, whatever --examples says


class BenchmarkError(ValueError):
    """A benchmark setting cannot be measured; the message names the value and what is valid."""


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory, versions and XLA flags: what the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = math.nan
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    dev = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "device": f"{dev.platform}:{dev.device_kind}",
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work competing for the cores)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [math.nan] * 3


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def best_times(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``repeats`` calls of ``fn`` (which must block).

    The CPU time (all threads) hardly changes when other processes compete for the cores,
    where the wall time does; on a shared machine it tells a real change from noise.
    """
    wall = cpu = math.inf
    for _ in range(repeats):
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, cpu_seconds() - c0)
    return wall, cpu


# How a product's operands are stored: "nn" (m, k) @ (k, n); "tn" the left one as (k, m), as in
# a weight gradient x^T g; "nt" the right one as (n, k), as in an input gradient g W^T.
FORMS = {
    "nn": (lambda m, k, n: ((m, k), (k, n)), lambda a, b: a @ b),
    "tn": (lambda m, k, n: ((k, m), (k, n)), lambda a, b: a.T @ b),
    "nt": (lambda m, k, n: ((m, k), (n, k)), lambda a, b: a @ b.T),
}


# The operand dtype of a ceiling product and the matmul precision it is traced under: float32
# products in true float32 (what trainer.precision=float32 asks for; a GPU's default would be
# TensorFloat-32, a TPU's one bfloat16 pass), bfloat16 ones in one pass with float32 sums.
MATMUL_DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def matmul_rates(
    m: int,
    k: int,
    n: int,
    repeats: int = 5,
    form: str = "nn",
    min_seconds: float = 0.05,
    dtype: str = "float32",
) -> tuple[float, float]:
    """Rate of a jitted (m, k) @ (k, n) product: (GFLOP/s, GFLOP per CPU-second).

    ``dtype`` (``MATMUL_DTYPES``): float32 operands at true float32 precision, or bfloat16.

    2mkn FLOPs per product, best of ``repeats``; each repeat runs the product back to back for
    ``min_seconds``, so that dispatch does not count against small shapes. ``form`` is how the
    operands are stored (``FORMS``). The second number divides by the CPU time of all threads:
    on a machine shared with other work it stays put where the wall-clock rate drops (it is the
    rate per core, times the parallel efficiency).
    """
    if form not in FORMS:
        raise BenchmarkError(f"matmul form={form!r} is not valid; choose one of {sorted(FORMS)}")
    if dtype not in MATMUL_DTYPES:
        raise BenchmarkError(
            f"matmul dtype={dtype!r} is not valid; choose one of {sorted(MATMUL_DTYPES)}"
        )
    shapes, product = FORMS[form]
    a_shape, b_shape = shapes(m, k, n)
    a = jax.random.normal(jax.random.key(0), a_shape, dtype)
    b = jax.random.normal(jax.random.key(1), b_shape, dtype)

    def traced(a, b):
        with jax.default_matmul_precision(MATMUL_DTYPES[dtype]):
            return product(a, b)

    dot = jax.jit(traced)
    once = best_times(lambda: dot(a, b).block_until_ready(), 2)[0]
    inner = max(1, math.ceil(min_seconds / max(once, 1e-6)))

    def run():
        for _ in range(inner):
            out = dot(a, b)
        out.block_until_ready()

    wall, cpu = best_times(run, repeats)
    flops = 2.0 * m * k * n * inner
    return flops / wall / 1e9, flops / cpu / 1e9


def square_ceiling(sizes: tuple[int, ...], repeats: int, dtype: str = "float32") -> dict[str, Any]:
    """Square matmul rates by size and their best: the machine's ceiling, wall and per CPU-s."""
    rates = {str(s): matmul_rates(s, s, s, repeats, dtype=dtype) for s in sizes}
    return {
        "dtype": dtype,
        "sizes": {s: r[0] for s, r in rates.items()},
        "gflops": max(r[0] for r in rates.values()),
        "gflops_per_cpu_second": max(r[1] for r in rates.values()),
    }


def best_ceiling(*measurements: dict[str, Any]) -> dict[str, Any]:
    """The best of several ``square_ceiling`` runs (e.g. at the start and at the end of a
    benchmark): a ceiling measured while other work held a core would flatter every ratio."""
    return {
        "gflops": max(m["gflops"] for m in measurements),
        "gflops_per_cpu_second": max(m["gflops_per_cpu_second"] for m in measurements),
    }


def mlp_matmul_shapes(batch: int, dims: tuple[int, ...]) -> list[tuple[int, int, int, str]]:
    """The (m, k, n, form) products of one training step of an MLP with layer sizes ``dims``.

    Per Dense layer (d_in -> d_out): forward (B, d_in) @ (d_in, d_out), weight gradient
    x^T g = (d_in, B) @ (B, d_out) with x stored (B, d_in), and input gradient
    g W^T = (B, d_out) @ (d_out, d_in) with W stored (d_in, d_out). The first layer's input
    gradient is not computed by the step (no gradient flows into the data).
    """
    shapes = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        shapes += [(batch, d_in, d_out, "nn"), (d_in, batch, d_out, "tn")]
        if i > 0:
            shapes.append((batch, d_out, d_in, "nt"))
    return shapes


def shape_ceiling(batch: int, dims: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """Matmul rates at the products a training step does, and their combined rate.

    The combined rate is total FLOPs over the sum of each product's standalone time: what the
    step would reach if it did nothing but these products, each at its measured speed. Inside
    the compiled step small products can run a little faster than standalone (no dispatch
    between them), so a step may come out slightly above this figure.
    """
    rates: dict[str, tuple[float, float]] = {}
    flops, wall, cpu = 0.0, 0.0, 0.0
    for m, k, n, form in mlp_matmul_shapes(batch, dims):
        key = f"{m}x{k}@{k}x{n}:{form}"
        if key not in rates:
            rates[key] = matmul_rates(m, k, n, repeats, form)
        flops += 2.0 * m * k * n
        wall += 2.0 * m * k * n / (rates[key][0] * 1e9)
        cpu += 2.0 * m * k * n / (rates[key][1] * 1e9)
    return {
        "shapes": {key: r[0] for key, r in rates.items()},
        "gflops": flops / wall / 1e9,
        "gflops_per_cpu_second": flops / cpu / 1e9,
    }


def mlp_flops_per_example(dims: tuple[int, ...]) -> int:
    """Training FLOPs per example of an MLP with layer sizes ``dims`` (encoder + decoder):
    ``6 * sum_l d_in * d_out`` (forward 2, backward 4 per multiply-accumulate)."""
    return 6 * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def conv_flops_per_example(
    example_shape: tuple[int, int, int], channels: tuple[int, ...], kernel_size: int, latent: int
) -> int:
    """Training FLOPs per example of ``ConvAutoencoder``: 6 x its multiply-accumulates.

    A stride-2 SAME convolution does ``H_out W_out k^2 C_in C_out`` MACs; its transpose does
    ``H_in W_in k^2 C_in C_out`` (each input pixel scatters k^2 taps; the zeros of the dilated
    input are not work); the two Dense layers to and from the code do ``F k`` each, with F the
    flattened size of the smallest feature map.
    """
    h, w, c = example_shape
    kk = kernel_size * kernel_size
    macs = 0
    for out_c in channels:  # encoder: stride-2 convolutions
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        macs += h * w * kk * c * out_c
        c = out_c
    macs += 2 * h * w * c * latent  # to_code and from_code
    for out_c in (*reversed(channels[:-1]), example_shape[-1]):  # decoder: transposed
        macs += h * w * kk * c * out_c
        h, w, c = 2 * h, 2 * w, out_c
    return 6 * macs


def _config(model: ModelConfig, batch_size: int, loss: str, epochs: int, **data) -> Config:
    trainer = TrainerConfig(
        epochs=epochs,
        batch_size=batch_size,
        devices=1,
        eval_every=10**6,
        log_every=10**6,
        figures=False,
        progress=False,
    )
    return validate(
        Config(model=model, loss=LossConfig(loss), trainer=trainer, data=DataConfig(**data))
    )


def hinton_config(batch_size: int, epochs: int = 1, **data) -> Config:
    """The 784-1000-500-250-30 deep autoencoder: logistic hidden units, linear code, BCE, Adam."""
    model = ModelConfig(
        kind="mlp",
        latent_dim=HINTON_LATENT,
        depth=3,
        widths=list(HINTON_WIDTHS),
        activation="sigmoid",
        code_activation="linear",
    )
    return _config(model, batch_size, "bce", epochs, **data)


def conv_config(batch_size: int, epochs: int = 1, **data) -> Config:
    """``conf/model/conv.yaml`` (3x3 stride-2 convolutions, 32 and 64 channels), a 30-unit code."""
    model = ModelConfig(kind="conv", latent_dim=HINTON_LATENT)
    return _config(model, batch_size, "mse", epochs, **data)


def digits_config(epochs: int = 1, **data) -> Config:
    """The default run (``conf/config.yaml``): 64-64-32-8 GELU autoencoder, batches of 64."""
    return _config(ModelConfig(), TrainerConfig().batch_size, "mse", epochs, **data)


def epoch_examples(examples: int, batch_size: int) -> int:
    """Examples per timed epoch at ``batch_size``: ``examples``, or ``MIN_STEPS`` whole batches
    where that is more (batch 8192 needs 24576, twice the default ``--examples``)."""
    return max(examples, MIN_STEPS * batch_size)


def synthetic_mnist(n: int, seed: int = 0) -> Dataset:
    """``n`` uniform-random examples of MNIST's shape and range (28, 28, 1) in [0, 1]."""
    x = np.random.default_rng(seed).random((n, *MNIST_SHAPE), dtype=np.float32)
    return Dataset(
        "mnist-shaped", x, None, x[: min(n, 256)].copy(), None, MNIST_SHAPE, True, "unit"
    )


def epoch_program_seconds(trainer: Trainer, repeats: int) -> tuple[float, float, float]:
    """(compile, best wall, best CPU) seconds of the trainer's compiled epoch, data on device."""
    state = trainer.parallel.place(trainer.init_state())
    x = trainer.parallel.place(jnp.asarray(trainer.data.x_train))
    hparams = trainer.parallel.place(trainer.hparams())
    start = time.perf_counter()
    program = trainer.compile(state, x, hparams)
    compile_seconds = time.perf_counter() - start
    box = [state]

    def run():  # the state is donated: thread it through the repeats
        box[0], metrics = program(box[0], x, jnp.int32(0), hparams)
        jax.block_until_ready((box[0], metrics))

    run()  # first call: allocations, thread-pool start
    return (compile_seconds, *best_times(run, repeats))


def pure_steps(trainer: Trainer) -> Callable[[], tuple[float, float]]:
    """A runner of one epoch's worth of the train step alone: a scan over batches already cut
    and on the device; no permutation, no gather, no host work. What epochs are measured
    against. Each call runs it once and returns its (wall, CPU) seconds."""
    if len(trainer.parallel.devices) != 1:
        raise BenchmarkError(
            f"pure step timing needs trainer.devices=1, got {len(trainer.parallel.devices)}"
        )
    step = make_train_step(
        trainer.objective, trainer.tx, None, norms=trainer.cfg.trainer.step_norms
    )
    b, steps = trainer.cfg.trainer.batch_size, trainer.steps_per_epoch
    xs = jnp.asarray(trainer.data.x_train[: steps * b])
    xs = xs.reshape(steps, b, *trainer.data.example_shape)  # (steps, B, *S)
    hparams = trainer.hparams()

    def scan(state, xs):
        return jax.lax.scan(lambda s, x: step(s, x, hparams), state, xs)

    options = compiler_options(trainer.parallel.devices)  # as the epoch program's
    lowered = jax.jit(scan, donate_argnums=0).lower(trainer.init_state(), xs)
    program = lowered.compile(compiler_options=options)
    box = [trainer.init_state()]

    def run():
        box[0], metrics = program(box[0], xs)
        jax.block_until_ready((box[0], metrics))

    run()  # first call: allocations, thread-pool start
    return lambda: best_times(run, 1)


def pure_step_times(trainer: Trainer, repeats: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds per step of the train step alone (see ``pure_steps``)."""
    run = pure_steps(trainer)
    times = [run() for _ in range(repeats)]
    steps = trainer.steps_per_epoch
    return min(t[0] for t in times) / steps, min(t[1] for t in times) / steps


def measure_training(
    name: str, cfg: Config, data: Dataset, flops_per_example: int, repeats: int
) -> dict:
    """Throughput of one model and batch size on the real epoch program (``Trainer``, data on
    the device, best of ``repeats`` epochs), its compile time and its pure step time."""
    trainer = Trainer(cfg, data)
    b = cfg.trainer.batch_size
    compile_s, epoch_s, cpu_s = epoch_program_seconds(trainer, repeats)
    examples = trainer.steps_per_epoch * b
    return {
        "model": name,
        "batch_size": b,
        "examples_per_epoch": examples,
        "flops_per_example": flops_per_example,
        "compile_seconds": compile_s,
        "epoch_seconds": epoch_s,
        "step_ms": 1e3 * epoch_s / trainer.steps_per_epoch,
        "cpu_step_ms": 1e3 * cpu_s / trainer.steps_per_epoch,
        "pure_step_ms": 1e3 * pure_step_times(trainer, repeats)[0],
        "samples_per_second": examples / epoch_s,
        "gflops": examples * flops_per_example / epoch_s / 1e9,
        "gflops_per_cpu_second": examples * flops_per_example / cpu_s / 1e9,
    }


def score(row: dict, ceiling: dict, shape: dict | None = None) -> dict:
    """``row`` with its share of the ceiling (wall clock and per CPU-second) and, given
    ``shape``, of the rate at the model's own matmul products (``shape_ceiling``)."""
    row = dict(row)
    row["ceiling_gflops"] = ceiling["gflops"]
    row["pct_of_ceiling"] = 100.0 * row["gflops"] / ceiling["gflops"]
    row["pct_of_ceiling_cpu"] = (
        100.0 * row["gflops_per_cpu_second"] / ceiling["gflops_per_cpu_second"]
    )
    if shape is not None:
        row["shape_ceiling_gflops"] = shape["gflops"]
        row["pct_of_shape_ceiling"] = 100.0 * row["gflops"] / shape["gflops"]
    return row


def measure_end_to_end(cfg: Config, repeats: int) -> dict[str, float]:
    """A real MNIST run (IDX files -> Dataset -> device -> compile -> ``fit``), phase by phase,
    against the pure step time of the same step. ``cfg.data`` names the IDX directory.

    ``epoch_seconds`` is ``fit``'s wall time per epoch (the in-program shuffle and gather, the
    host loop, metrics, the final eval; no compiling). The pure steps run ``repeats`` times
    just before and just after ``fit``, and their mean is the reference: a mean against a
    mean, taken minutes apart at most, so that other work on a shared machine weighs on both.
    ``..._cpu_...`` figures do the same in CPU time, which such work hardly moves.
    """
    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    t_load = time.perf_counter()
    trainer = Trainer(cfg, data)
    state = trainer.init_state()
    jax.block_until_ready(state)
    t_build = time.perf_counter()
    place = trainer.parallel.place
    x, placed, hparams = place(jnp.asarray(data.x_train)), place(state), place(trainer.hparams())
    jax.block_until_ready(x)
    t_transfer = time.perf_counter()
    trainer.compile(placed, x, hparams)  # fit reuses this program
    jax.block_until_ready(trainer.eval_mse(placed.params, x[:8]))  # and this one's compiled too
    t_compile = time.perf_counter()
    del x, placed  # fit places its own copies
    pure = pure_steps(trainer)
    reference = [pure() for _ in range(repeats)]
    cpu0 = cpu_seconds()
    _, history, timing = trainer.fit(state)
    fit_cpu = cpu_seconds() - cpu0
    reference += [pure() for _ in range(repeats)]
    epochs = cfg.trainer.epochs
    pure_wall = float(np.mean([r[0] for r in reference]))
    pure_cpu = float(np.mean([r[1] for r in reference]))
    epoch, epoch_cpu = timing["time/train_seconds"] / epochs, fit_cpu / epochs
    first = t_compile - t0 + epoch
    return {
        "examples": int(data.x_train.shape[0]),
        "batch_size": cfg.trainer.batch_size,
        "epochs": epochs,
        "load_seconds": t_load - t0,
        "build_seconds": t_build - t_load,
        "transfer_seconds": t_transfer - t_build,
        "compile_seconds": t_compile - t_transfer,
        "epoch_seconds": epoch,
        "pure_epoch_seconds": pure_wall,
        "pure_epoch_seconds_each": [r[0] for r in reference],
        "epoch_over_pure_pct": 100.0 * (epoch / pure_wall - 1.0),
        "epoch_cpu_seconds": epoch_cpu,
        "pure_epoch_cpu_seconds": pure_cpu,
        "epoch_over_pure_cpu_pct": 100.0 * (epoch_cpu / pure_cpu - 1.0),
        "first_epoch_end_to_end_seconds": first,
        "first_epoch_over_pure_pct": 100.0 * (first / pure_wall - 1.0),
        "final_train_loss": history[-1]["train/loss"],
    }


def sweep_configs(members: int, epochs: int) -> list[Config]:
    """``members`` runs of the default digits model that differ only in traced settings, so
    that they train as one vectorised program (``ae_jax.sweeps.vectorized``): member i has
    ``trainer.seed=i`` and a learning rate spread log-evenly over half to twice the default."""
    if members < 1:
        raise BenchmarkError(f"sweep members={members} is not valid; it must be at least 1")
    base = digits_config(epochs)
    factors = np.geomspace(0.5, 2.0, members) if members > 1 else np.ones(1)
    configs = [
        validate(
            dataclasses.replace(
                base,
                optim=dataclasses.replace(base.optim, lr=float(base.optim.lr * f)),
                trainer=dataclasses.replace(base.trainer, seed=i),
            )
        )
        for i, f in enumerate(factors)
    ]
    if len(group_by_program(configs)) != 1:  # a guard: the members must share one program
        raise BenchmarkError("the sweep's members do not share one program")
    return configs


def measure_sweep(members: int, epochs: int, repeats: int) -> dict[str, Any]:
    """A ``members``-member vectorised sweep of the default digits model (``sweep_configs``,
    trained by ``ae_jax.sweeps.vectorized.train_group``, the engine of ``hydra/launcher=vmap``)
    against its first member trained alone (``Trainer.fit``, the single-run path), each with a
    checkpoint at the end as a run writes one, in a temporary directory.

    Wall times are what each engine reports as ``time/train_seconds``: the training loop, its
    epochs with their fixed costs (the first dispatch, compiling and running the end-of-run
    evaluation, the checkpoint: about 0.3 s on a CPU, amortised over ``epochs``), not the
    compile of the epoch program (``compile_seconds``) nor the outputs written after; best of
    ``repeats``. ``time_ratio`` is the sweep's time over the one member's, and
    ``samples_per_second`` counts every member's examples.
    """
    configs = sweep_configs(members, epochs)
    single_cfg = configs[0]
    data = load_dataset(single_cfg.data)
    single: dict[str, float] = {}
    group: dict[str, float] = {}
    failed = 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(single_cfg, data)
            keep = single_cfg.trainer.keep_checkpoints
            checkpointer = Checkpointer(Path(tmp) / "single" / "checkpoints", keep=keep)
            _, _, timing = trainer.fit(trainer.init_state(), checkpointer=checkpointer)
            _keep_best(single, timing, 1)
            workdirs = [Path(tmp) / "sweep" / f"{i:03d}" for i in range(members)]
            results = train_group(configs, workdirs)
        done = [r for r in results if r]
        failed = members - len(done)
        if not done:
            raise BenchmarkError(f"every one of the {members} sweep members diverged")
        _keep_best(group, done[0], members)
    steps = len(data.x_train) // single_cfg.trainer.batch_size
    return {
        "model": "digits default 64-64-32-8",
        "members": members,
        "varied": "optim.lr (x0.5 to x2, log-spaced) and trainer.seed",
        "epochs": epochs,
        "batch_size": single_cfg.trainer.batch_size,
        "examples_per_epoch": steps * single_cfg.trainer.batch_size,
        "repeats": repeats,
        "single": single,
        "vmap": {**group, "failed_members": failed},
        "time_ratio": group["train_seconds"] / single["train_seconds"],
        "throughput_ratio": group["samples_per_second"] / single["samples_per_second"],
    }


def _keep_best(best: dict[str, float], timing: dict[str, float], members: int) -> None:
    """Fold a run's timing into ``best`` (the fastest repeat); samples/s of all members."""
    seconds = timing["time/train_seconds"]
    if seconds < best.get("train_seconds", math.inf):
        best["train_seconds"] = seconds
        best["samples_per_second"] = members * timing["train/samples_per_second"]
    compile_s = timing["time/compile_seconds"]
    best["compile_seconds"] = min(compile_s, best.get("compile_seconds", math.inf))


def peak_memory() -> dict[str, Any]:
    """Peak resident memory of this process (MiB) and the device's allocator stats, if any."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    scale = 2**20 if platform.system() == "Darwin" else 2**10
    out: dict[str, Any] = {"max_rss_mib": rss * scale / 2**20}
    stats = jax.devices()[0].memory_stats()
    if stats:
        out["device_peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
        out["device_bytes_limit"] = stats.get("bytes_limit")
    else:
        out["device_stats"] = "unavailable on this backend (CPU: device memory is host memory)"
    return out


def torch_hinton(
    batches: tuple[int, ...],
    steps: int,
    repeats: int,
    modes: tuple[str, ...] = ("eager", "compile"),
) -> dict[str, Any]:
    """The same Hinton step in PyTorch, where torch is installed (never a dependency).

    784-1000-500-250-30 and back, logistic hidden units, linear code, BCE with logits, Adam;
    float32 with TensorFloat-32 off (as JAX's ``trainer.precision=float32``), on CUDA when
    available. ``eager`` runs the module as is; ``compile`` wraps the loss in ``torch.compile``
    (the optimiser step stays eager). Each row: best of ``repeats`` runs of ``steps`` steps,
    after 3 warm-up steps (which hold the compile). The JAX rows (``training``) run a whole
    epoch as one program; here Python dispatches each step.
    """
    if importlib.util.find_spec("torch") is None:
        return {"skipped": "torch is not installed"}
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dims = (784, *HINTON_WIDTHS, HINTON_LATENT, *reversed(HINTON_WIDTHS), 784)
    flops = mlp_flops_per_example(dims)
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "rows": [],
    }
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TensorFloat-32
    try:
        for mode in modes:
            for b in batches:
                try:
                    row = _torch_rate(torch, device, dims, b, steps, repeats, mode)
                except Exception as err:  # e.g. torch.compile without a C compiler
                    row = {"error": f"{type(err).__name__}: {err}"[:500]}
                row.update(mode=mode, batch_size=b, flops_per_example=flops)
                if "step_ms" in row:
                    row["samples_per_second"] = 1e3 * b / row["step_ms"]
                    row["gflops"] = row["samples_per_second"] * flops / 1e9
                out["rows"].append(row)
    finally:
        torch.set_float32_matmul_precision(before)
    return out


def _torch_rate(torch, device, dims, batch, steps, repeats, mode) -> dict[str, float]:
    nn, functional = torch.nn, torch.nn.functional
    torch.manual_seed(0)
    layers: list = []
    code = len(dims) // 2  # index of the code layer's output in dims
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i + 1 != code and i + 2 != len(dims):  # linear code, logits out
            layers.append(nn.Sigmoid())
    model = nn.Sequential(*layers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs = torch.rand(steps, batch, dims[0], device=device)

    def loss_fn(x):
        return functional.binary_cross_entropy_with_logits(model(x), x)

    loss = torch.compile(loss_fn) if mode == "compile" else loss_fn

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss(x).backward()
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for i in range(3):
        step(xs[i % steps])
    sync()
    warmup = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            step(xs[i])
        sync()
        best = min(best, time.perf_counter() - t0)
    return {"step_ms": 1e3 * best / steps, "warmup_seconds": warmup}
