"""Run the per-device epoch on one device, under ``jax.shard_map``, or under ``jax.pmap``.

Data parallelism is a one-axis device mesh: parameters, optimiser state and the (small) training
split are replicated, each device gathers its slice of every global batch, and gradients are
averaged over the axis inside the step. ``Parallel.run`` hides which transform is used; the
compiled program is built once (ahead of time) and reused every epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ae_jax.config import ConfigError
from ae_jax.training.step import DATA_AXIS

log = logging.getLogger("ae_jax")

# XLA:CPU's copy insertion, left to its default analysis, copies every parameter that the epoch
# loop's body both reads (the forward pass) and rewrites in place (the optimiser update): 2.83 M
# floats a step for the 784-1000-500-250-30 autoencoder, 5% of its batch-128 step. XLA's region
# analysis (off by default on CPU) proves those copies unneeded; the programs compute bitwise the
# same values (tests/test_trainer.py, PERFORMANCE.md).
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compiler_options(devices: list) -> dict[str, Any]:
    """XLA options for programs that run on ``devices`` (``jax.stages.Lowered.compile``)."""
    return dict(CPU_COMPILER_OPTIONS) if devices[0].platform == "cpu" else {}


def select_devices(requested: int | None, batch_size: int, key: str = "trainer.batch_size") -> list:
    """The devices to use (all processes' devices in a multi-process run); the global batch
    (the setting ``key``) must split evenly across them."""
    chosen = _chosen_devices(requested)
    n = len(chosen)
    if batch_size % n:
        raise ConfigError(
            f"{key}={batch_size} does not split evenly across {n} devices; set "
            f"trainer.devices to a divisor of {batch_size}, or use a multiple of {n}"
        )
    return chosen


def fit_batch(batch_size: int, examples: int, requested: int | None, key: str, data: str) -> int:
    """``batch_size``, or the whole training split when it is larger, said in one warning
    line: a batch larger than the data (the default 64 on a small table, or a large value
    written to mean "full batch") trains on full batches, as Keras and PyTorch's loaders do,
    instead of making no step. A whole split that does not split evenly over the devices is
    refused in one line (rounding it down would drop examples a run on fewer devices keeps)."""
    if batch_size <= examples:
        return batch_size
    devices = len(_chosen_devices(requested))
    if examples % devices:
        smaller = (
            f"set {key} to a multiple of {devices} up to {examples}, or "
            if examples >= devices
            else ""
        )
        raise ConfigError(
            f"{key}={batch_size} exceeds the {examples} training examples of {data}, and "
            f"batches of all {examples} do not split evenly over {devices} devices; {smaller}"
            f"set trainer.devices to a divisor of {examples}"
        )
    log.warning(
        "%s=%d exceeds the %d training examples of %s: every step takes the whole training "
        "split (batches of %d)",
        key,
        batch_size,
        examples,
        data,
        examples,
    )
    return examples


def _chosen_devices(requested: int | None) -> list:
    """``trainer.devices`` of this run's devices (null: all of them), checked."""
    if jax.process_count() > 1:
        available = jax.devices()
        if requested not in (None, len(available)):
            raise ConfigError(
                f"trainer.devices={requested} in a run of {jax.process_count()} processes: "
                f"multi-process runs use every device ({len(available)}); set trainer.devices=null"
            )
    else:
        available = jax.local_devices()
    n = len(available) if requested is None else requested
    if n > len(available):
        raise ConfigError(
            f"trainer.devices={requested} but only {len(available)} device(s) exist "
            f"({available[0].platform}); valid: 1..{len(available)} or null for all"
        )
    return available[:n]


@dataclasses.dataclass
class Parallel:
    """A per-device function ``fn(state, data, *args) -> (state, out)`` made to run on devices."""

    devices: list
    mode: str = "shard_map"  # shard_map | pmap (ignored on one device: plain jit)

    @property
    def axis_name(self) -> str | None:
        return DATA_AXIS if len(self.devices) > 1 else None

    def __post_init__(self):
        if self.mode == "pmap" and len(self.devices) > 1 and jax.process_count() > 1:
            raise ConfigError(  # its replicated state lives on one process's first device
                f"trainer.parallel=pmap runs within one process, and this run has "
                f"{jax.process_count()}; use trainer.parallel=shard_map for a multi-process run"
            )
        self.mesh = Mesh(np.array(self.devices), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.traces = 0  # how often the per-device function was traced (should be 1)
        self.compile_seconds = 0.0  # the last compile's (a fit that compiled nothing: 0)
        self.compiles = 0

    def place(self, tree: Any) -> Any:
        """Put a pytree on the devices (replicated) in the layout the compiled program wants."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree.map(self._global_replicated, tree)

    def _global_replicated(self, leaf):
        """A host value as an array replicated over every process's devices."""
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = self._global_replicated(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(host.shape, self.replicated, lambda idx: host[idx])

    def compile(self, fn: Callable, *example_args) -> Callable:
        """Compile ``fn`` once for these argument shapes; return the callable program."""

        def counted(*args):
            self.traces += 1
            return fn(*args)

        start = time.perf_counter()
        n = len(self.devices)
        options = compiler_options(self.devices)
        if n == 1:
            lowered = jax.jit(counted, donate_argnums=0).lower(*example_args)
            program = lowered.compile(compiler_options=options)
        elif self.mode == "shard_map":
            mapped = jax.shard_map(
                counted,
                mesh=self.mesh,
                in_specs=P(),
                out_specs=P(),
                check_vma=False,  # outputs are replicated by construction (pmean'd gradients)
            )
            lowered = jax.jit(mapped, donate_argnums=0).lower(*example_args)
            program = lowered.compile(compiler_options=options)
        elif self.mode == "pmap":
            # Every argument is replicated (in_axes None); pmap insists on one mapped argument,
            # so a dummy device index is mapped and dropped. The outputs are replicated by
            # construction (pmean'd gradients): out_axes None keeps them in the layout the
            # next call takes, as shard_map's out_specs P() does.
            nargs = len(example_args)
            pmapped = jax.pmap(
                lambda *a: counted(*a[:-1]),
                axis_name=DATA_AXIS,
                in_axes=(None,) * nargs + (0,),
                out_axes=None,
                devices=self.devices,
            )
            index = jax.device_put(np.arange(n), NamedSharding(self.mesh, P(DATA_AXIS)))
            # compiled without running it: calling it to compile trained a whole epoch, counted
            # as compile time, at every start and resume
            compiled = pmapped.lower(*example_args, index).compile(compiler_options=options)
            program = lambda *args: compiled(*args, index)
        else:
            raise ConfigError(f"trainer.parallel={self.mode!r} is not valid; use shard_map or pmap")
        self.compile_seconds = time.perf_counter() - start
        self.compiles += 1
        return program
