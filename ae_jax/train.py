"""``train_and_evaluate(cfg, workdir)``: one complete run, from config to metrics and figures.

This is the importable library behind ``experiments/train.py``; call it from a notebook with a
``Config`` (or a Hydra DictConfig) and a directory, and it returns the flat metrics dict it also
writes to ``<workdir>/metrics.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax.config import Config, to_config, to_yaml, validate
from ae_jax.data import load_dataset
from ae_jax.evaluation.metrics import evaluate_trained
from ae_jax.features import write_run_info
from ae_jax.run_io import write_history, write_json_atomic
from ae_jax.training import distributed
from ae_jax.training.checkpoint import Checkpointer
from ae_jax.training.trainer import Trainer

log = logging.getLogger("ae_jax")


def fresh_or_resumed_workdir(workdir: Path, resume: bool) -> Path:
    """``workdir``, unless resuming is off and it holds an earlier run: then a new sibling
    directory (the earlier run is never touched)."""
    earlier = (workdir / "checkpoints").exists() or (workdir / "metrics.json").exists()
    if resume or not earlier:
        return workdir
    fresh = workdir.with_name(f"{workdir.name}-fresh-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while fresh.exists():
        fresh = workdir.with_name(f"{workdir.name}-fresh-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    log.warning(
        "trainer.resume=false: %s holds an earlier run, which is kept; this run writes to %s",
        workdir,
        fresh,
    )
    return fresh


def describe(cfg: Config, trainer: Trainer) -> str:
    m, data = cfg.model, trainer.data
    arch = f"{m.kind}"
    if m.kind != "conv":
        widths = trainer.model.widths
        layers = [data.num_features, *widths, m.latent_dim]
        arch += " " + "-".join(map(str, layers))
        arch += f" ({m.activation}, code {m.code_activation}{', tied' if m.tied else ''})"
    else:
        arch += f" channels {list(m.channels)} -> {m.latent_dim}"
    n = trainer.parallel.devices
    return (
        f"{data.name}: {data.x_train.shape[0]} train / {data.x_test.shape[0]} test, "
        f"example {tuple(data.example_shape)} | {arch} -> {trainer.output_activation} | "
        f"loss {cfg.loss.kind} | noise {cfg.noise.kind}:{cfg.noise.level} | "
        f"reg {cfg.reg.kind}:{cfg.reg.strength} | {cfg.optim.name} lr {cfg.optim.lr} | "
        f"{cfg.trainer.epochs} epochs x {trainer.steps_per_epoch} steps of "
        f"{cfg.trainer.batch_size} "
        f"on {len(n)} {n[0].platform} device(s)"
    )


class ProgressLog:
    """Progress lines every ``log_every`` epochs: losses, eval MSE, throughput and ETA."""

    def __init__(self, cfg: Config, steps_per_epoch: int):
        self.cfg, self.steps = cfg, steps_per_epoch
        self.start = time.perf_counter()

    def __call__(self, row: dict) -> None:
        t, e = self.cfg.trainer, row["epoch"]
        if not t.progress or not (e % t.log_every == 0 or e == t.epochs or e == 1):
            return
        elapsed = row["time/elapsed"]
        rate = e * self.steps * t.batch_size / elapsed if elapsed > 0 else float("nan")
        eta = elapsed / e * (t.epochs - e)
        parts = [f"epoch {e:>{len(str(t.epochs))}}/{t.epochs}", f"loss {row['train/loss']:.5f}"]
        if self.cfg.reg.kind not in ("none", "k_sparse"):
            parts.append(f"(rec {row['train/loss/rec']:.5f} + reg {row['train/loss/reg']:.5f})")
        if "eval/mse" in row:
            parts.append(f"eval mse {row['eval/mse']:.5f}")
        parts += [f"{rate:,.0f} ex/s", f"{elapsed:.1f}s elapsed, eta {eta:.0f}s"]
        log.info(" | ".join(parts))


def train_and_evaluate(cfg: Any, workdir: str | Path) -> dict[str, float]:
    """Train the configured autoencoder, evaluate it, write outputs to ``workdir``."""
    cfg = validate(to_config(cfg))
    distributed.initialize(cfg.trainer)
    main = distributed.is_main_process()
    if not main:
        log.setLevel(logging.WARNING)  # process 0 speaks for the run
    workdir = fresh_or_resumed_workdir(Path(workdir), cfg.trainer.resume)
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(to_yaml(cfg))
    if cfg.pretrain.enabled:
        from ae_jax.pretraining.pipeline import pretrain_and_finetune

        return pretrain_and_finetune(cfg, workdir)
    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    trainer = Trainer(cfg, data)
    log.info(describe(cfg, trainer))
    if main:  # shapes and output activation, so that ae_jax.features.load_run needs no data
        write_run_info(workdir, data, trainer.output_activation)

    checkpointer = Checkpointer(workdir / "checkpoints", keep=cfg.trainer.keep_checkpoints)
    state, start_epoch, history = trainer.init_state(), 0, []
    if cfg.trainer.resume:
        restored = checkpointer.restore_latest(
            state, allow_none_valid=cfg.trainer.restart_if_corrupt
        )
        if restored is not None:
            state, start_epoch, history = restored
            log.info(
                "resuming from %s (epoch %d of %d)",
                checkpointer.last_saved,
                start_epoch,
                cfg.trainer.epochs,
            )
    state, history, timing = trainer.fit(
        state,
        start_epoch=start_epoch,
        history=history,
        checkpointer=checkpointer,
        on_epoch=ProgressLog(cfg, trainer.steps_per_epoch),
    )
    if not main:
        return {}
    log.info(
        "trained in %.1fs (%.0f examples/s; compile %.1fs)",
        timing["time/train_seconds"],
        timing["train/samples_per_second"],
        timing["time/compile_seconds"],
    )
    return evaluate_and_write(
        cfg, trainer, jax.device_get(state.params), history, timing, workdir, t0
    )


def evaluate_and_write(
    cfg: Config,
    trainer: Trainer,
    params,
    history: list[dict],
    timing: dict,
    workdir: Path,
    t0: float,
) -> dict[str, float]:
    """Test metrics of trained ``params``; write params, metrics, history, reconstructions and
    figures to ``workdir``. Shared by single runs and the vectorised sweep engine."""
    eval_level = cfg.noise.level if cfg.noise.eval_level is None else cfg.noise.eval_level
    metrics = evaluate_trained(cfg, trainer, params)
    metrics.update(timing)
    metrics["train/loss"] = history[-1]["train/loss"]
    metrics["train/loss/rec"] = history[-1]["train/loss/rec"]
    metrics["time/total_seconds"] = time.perf_counter() - t0
    save_params(workdir / PARAMS_FILE, params)
    write_json_atomic(workdir / "metrics.json", metrics)
    write_history(workdir, history)
    write_reconstructions(trainer, params, workdir, eval_level, cfg.trainer.seed)
    if cfg.trainer.figures:
        write_figures(trainer, history, workdir, cfg)
    log.info(summary(metrics))
    log.info("outputs in %s", workdir.resolve())
    return metrics


def write_reconstructions(
    trainer: Trainer, params, workdir: Path, eval_level: float, seed: int, n: int = 10
) -> None:
    """``reconstructions.npz``: the first n test inputs, their corrupted versions (when the run
    measures denoising) and reconstructions, and the codes of up to 2048 test examples."""
    data, obj = trainer.data, trainer.objective
    x = data.x_test[:n]
    arrays = {"input": x}
    x_in = x
    if eval_level > 0 and obj.noise_kind != "none":
        keys = jax.random.split(jax.random.key(seed), x.shape[0])
        x_in = np.asarray(obj.jitted.corrupt(keys, x, jnp.float32(eval_level))[0])
        arrays["corrupted"] = x_in
    arrays["reconstruction"] = np.asarray(obj.jitted.forward(params, x_in)[1])
    arrays["codes"] = np.asarray(obj.jitted.encode(params, data.x_test[:2048]))
    np.savez_compressed(workdir / "reconstructions.npz", **arrays)


def write_figures(trainer: Trainer, history, workdir: Path, cfg: Config) -> None:
    """``reconstructions.png``, ``training_curves.png``, ``code_activations.png``."""
    from ae_jax.evaluation.figures import (
        plot_code_histogram,
        plot_reconstructions,
        plot_training_curves,
    )

    data, obj = trainer.data, trainer.objective
    saved = np.load(workdir / "reconstructions.npz")
    rows = {"input": saved["input"]}
    if "corrupted" in saved:
        level = cfg.noise.level if cfg.noise.eval_level is None else cfg.noise.eval_level
        rows[f"{obj.noise_kind} {level:g}"] = saved["corrupted"]
    rows["reconstruction"] = saved["reconstruction"]
    title = f"{cfg.name}: {data.name}, k={cfg.model.latent_dim}"
    plot_reconstructions(workdir / "reconstructions.png", rows, data.example_shape, title=title)
    plot_training_curves(workdir / "training_curves.png", history, title=title)
    plot_code_histogram(workdir / "code_activations.png", saved["codes"], title=title)


PARAMS_FILE = "params.msgpack"


def save_params(path: Path, params) -> None:
    """The trained parameters (flax msgpack), written atomically."""
    from flax import serialization

    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(serialization.to_bytes(params))
    tmp.replace(path)


def summary(metrics: dict[str, float]) -> str:
    keys = [
        "test/mse",
        "test/pca_mse",
        "test/sse_per_example",
        "test/bce",
        "test/denoise_mse",
        "test/mean_code_activation",
        "test/code_nonzero_per_example",
        "test/jacobian_fro",
        "test/subspace_angle_max_deg",
    ]
    shown = [f"{k.split('/', 1)[1]}={metrics[k]:.5g}" for k in keys if k in metrics]
    return "test: " + "  ".join(shown)
