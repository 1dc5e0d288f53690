"""The vectorised sweep engine: runs that differ only in traced scalars train as ONE program.

Members of a sweep that share every shape-determining setting and differ only in the noise
level, the regularisation strength, the learning rate or the seed are stacked along a leading
axis and trained by ``jax.vmap`` of the same per-device epoch that single runs use: one
compilation, one dispatch per epoch for all members, bigger matrix multiplies. Each member then
gets exactly the outputs a single run writes (metrics.json, history, reconstructions, params,
figures), so reports cannot tell the two engines apart, and its metrics equal its sequential
run's to float round-off (tests/test_vectorized.py).

Select it for a Hydra multirun with ``hydra/launcher=vmap`` (see ``hydra_plugins/``), or call
``train_vectorized(configs, workdirs)`` from Python.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax.config import Config, ConfigError, to_yaml, validate
from ae_jax.data import load_dataset
from ae_jax.training.objective import make_hparams
from ae_jax.training.parallel import compiler_options
from ae_jax.training.trainer import Trainer

log = logging.getLogger("ae_jax")

# The settings a member may vary without changing the compiled program (see HParams).
VECTORIZABLE = (
    "noise.level",
    "noise.eval_level",
    "reg.strength",
    "optim.lr",
    "trainer.seed",
    "name",
)


def static_part(cfg: Config) -> str:
    """The config with every vectorisable scalar blanked: equal strings share one program."""
    c = dataclasses.replace(
        cfg,
        noise=dataclasses.replace(cfg.noise, level=0.0, eval_level=None),
        reg=dataclasses.replace(cfg.reg, strength=0.0),
        optim=dataclasses.replace(cfg.optim, lr=1.0),
        trainer=dataclasses.replace(cfg.trainer, seed=0),
        name="",
    )
    return to_yaml(c)


def group_by_program(configs: list[Config]) -> list[list[int]]:
    """Indices of ``configs`` grouped so that each group can run as one vectorised program."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(static_part(cfg), []).append(i)
    return list(groups.values())


@jax.jit
def _stack(trees):
    """Stack a list of equal pytrees along a new leading (member) axis, in one program."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def train_group(configs: list[Config], workdirs: list[Path]) -> list[dict[str, float]]:
    """Train configs that share one program (see ``group_by_program``) as one vmapped program;
    write each member's outputs to its workdir; return each member's metrics."""
    from ae_jax.run_io import write_json_atomic
    from ae_jax.train import describe, evaluate_and_write

    t0 = time.perf_counter()
    base = configs[0]
    if len({static_part(c) for c in configs}) != 1:
        raise ConfigError(
            "train_group needs members that differ only in " + ", ".join(VECTORIZABLE)
        )
    # One device: the sweep's members are the parallel axis here.
    base = dataclasses.replace(base, trainer=dataclasses.replace(base.trainer, devices=1))
    data = load_dataset(base.data)
    trainer = Trainer(base, data)
    n = len(configs)
    log.info("vectorised sweep: %d members in one program | %s", n, describe(base, trainer))
    for cfg, workdir in zip(configs, workdirs):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(to_yaml(cfg))
        write_json_atomic(
            workdir / "status.json",
            {"status": "running", "started": time.time(), "engine": "vmap", "members": n},
        )
    states = _stack([trainer.init_state(seed=c.trainer.seed) for c in configs])
    hparams = _stack([make_hparams(c) for c in configs])
    x_train = jnp.asarray(data.x_train)

    compile_start = time.perf_counter()
    epoch_fn = jax.vmap(trainer.epoch_fn, in_axes=(0, None, None, 0))
    lowered = jax.jit(epoch_fn, donate_argnums=0).lower(states, x_train, jnp.int32(0), hparams)
    program = lowered.compile(compiler_options=compiler_options(trainer.parallel.devices))
    compile_seconds = time.perf_counter() - compile_start

    epochs = base.trainer.epochs
    histories: list[list[dict]] = [[] for _ in configs]
    start = time.perf_counter()
    pending = None

    def record(epoch, metrics):
        per_step = jax.device_get(metrics)  # each (members, steps)
        for i in range(n):
            row = {"epoch": epoch + 1}
            row.update({f"train/{k}": float(np.mean(v[i])) for k, v in per_step.items()})
            row["time/elapsed"] = time.perf_counter() - start
            histories[i].append(row)
        if base.trainer.progress and (
            (epoch + 1) % base.trainer.log_every == 0 or epoch + 1 == epochs
        ):
            losses = " ".join(f"{h[-1]['train/loss']:.4f}" for h in histories)
            log.info(
                "epoch %d/%d | member losses %s | %.1fs",
                epoch + 1,
                epochs,
                losses,
                time.perf_counter() - start,
            )

    for epoch in range(epochs):
        states, metrics = program(states, x_train, jnp.int32(epoch), hparams)
        if pending is not None:
            record(*pending)
        pending = (epoch, metrics)
    record(*pending)
    jax.block_until_ready(states)
    seconds = time.perf_counter() - start

    examples = epochs * trainer.steps_per_epoch * base.trainer.batch_size
    params = jax.device_get(states.params)
    results = []
    for i, (cfg, workdir) in enumerate(zip(configs, workdirs)):
        losses = np.array([row["train/loss"] for row in histories[i]])
        status = {"status": "completed", "engine": "vmap", "members": n}
        if not np.all(np.isfinite(losses)):
            bad = int(np.flatnonzero(~np.isfinite(losses))[0]) + 1
            status = {
                "status": "failed",
                "engine": "vmap",
                "error": f"TrainingDiverged: non-finite loss at epoch {bad}",
            }
            write_json_atomic(workdir / "status.json", status)
            results.append({})
            continue
        timing = {
            "time/train_seconds": seconds,  # the whole group's wall time, shared by its members
            "time/compile_seconds": compile_seconds,
            "train/samples_per_second": examples / seconds,  # this member's examples
            "sweep/members": n,
        }
        metrics = evaluate_and_write(
            validate(cfg), trainer, _member(params, i), histories[i], timing, workdir, t0
        )
        write_json_atomic(workdir / "status.json", {**status, "ended": time.time()})
        results.append(metrics)
    return results


def train_vectorized(configs: list[Config], workdirs: list[Path]) -> list[dict[str, float]]:
    """Train every config, one vectorised program per group of compatible members."""
    results: list[dict] = [{} for _ in configs]
    for group in group_by_program(configs):
        out = train_group([configs[i] for i in group], [Path(workdirs[i]) for i in group])
        for i, metrics in zip(group, out):
            results[i] = metrics
    return results
