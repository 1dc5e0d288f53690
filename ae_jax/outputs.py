"""What a run writes and prints about itself: the description line, test metrics, params,
history, reconstructions, figures and the summary line. Shared by single runs
(``ae_jax.train``), pipelines (``ae_jax.pretraining.pipeline``) and vectorised sweeps."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax.config import Config, config_dict
from ae_jax.evaluation.metrics import evaluate_trained, warn_if_not_at_pca, warn_if_not_learned
from ae_jax.run_io import write_atomic, write_history, write_json_atomic
from ae_jax.training.loop import Preempted
from ae_jax.training.trainer import Trainer

log = logging.getLogger("ae_jax")


def _num(value) -> str:
    """A setting's value as written (``0.1``, ``3e-05``), or to 4 significant digits where
    that is long (a value an Optuna search drew: ``0.001512``)."""
    text = str(value)
    return text if len(text) <= 8 or not isinstance(value, float) else f"{value:.4g}"


def _one_or_set(values, ordered: bool = False) -> str:
    """``0.1``, or ``{0.0,0.1,0.2}`` for the values that the members of a group vary; with
    ``ordered``, ``[0.3,0.1,0.2]``: each member's, in the members' order."""
    values = list(values)
    distinct = sorted(set(values))
    if len(distinct) == 1:
        return _num(distinct[0])
    if ordered:
        return "[" + ",".join(map(_num, values)) + "]"
    return "{" + ",".join(map(_num, distinct)) + "}"


def _grid(columns: list[list]) -> bool:
    """Whether the members' values of the settings they vary (``columns``, one list per
    setting) form a grid, every combination of those values, so that each setting's set of
    values says it all (a search's trials do not: they pair values in no such way)."""
    varying = [c for c in columns if len(set(c)) > 1]
    return len(varying) < 2 or len(set(zip(*varying))) == math.prod(len(set(c)) for c in varying)


def describe(
    cfg: Config,
    trainer: Trainer,
    devices: bool = True,
    members: list[Config] | None = None,
    untrained: str | None = None,
) -> str:
    """One line: the data, the model, the objective, the optimiser and the schedule (and the
    devices, unless the caller states its own layout, as a vectorised group does). Given a
    group's ``members``, the noise level, term strengths and learning rate they vary are
    written as sets, ``noise masking:{0.0,0.1,0.2}``. A model that ``trainer`` does not train (an
    unrolled stack left as it is) gets the note ``untrained`` instead of the objective and the
    schedule."""
    members = members or [cfg]
    m, data = cfg.model, trainer.data
    arch = f"{m.kind}"
    if m.kind != "conv":
        widths = trainer.model.widths
        layers = [data.num_features, *widths, m.latent_dim]
        arch += " " + "-".join(map(str, layers))
        decoder = getattr(m, "decoder_widths", None)
        if decoder is not None and list(decoder) != list(reversed(widths)):  # asymmetric
            arch += ", decoder " + "-".join(map(str, [m.latent_dim, *decoder, data.num_features]))
        hidden = f"{m.activation}, " if widths else ""  # no hidden layer, no activation
        arch += f" ({hidden}code {m.code_activation}{', tied' if m.tied else ''})"
    else:
        arch += f" channels {list(m.channels)} -> {m.latent_dim}"
    if m.sparse_k is not None:  # Makhzani & Frey's k-sparse code
        arch += f" top-{m.sparse_k}"
        if m.sparse_k_start is not None and m.sparse_anneal_epochs:
            arch += f" (from {m.sparse_k_start} over {m.sparse_anneal_epochs} epochs)"
        if m.sparse_k_features not in (None, m.sparse_k):
            arch += f", features top-{m.sparse_k_features}"
    o = cfg.optim
    columns = [[c.optim.lr for c in members], [c.noise.level for c in members]]
    columns += [[c.reg[term].strength for c in members] for term in cfg.reg]
    ordered = not _grid(columns)  # each member's values in order, said once at the end
    optim = f"{o.name} lr {_one_or_set(columns[0], ordered)}"
    optim += f" {o.schedule}" if o.schedule != "constant" else ""
    optim += f", decay {o.weight_decay}" if o.weight_decay else ""
    optim += f", clip {o.grad_clip}" if o.grad_clip is not None else ""
    precision = cfg.trainer.precision

    def strength(term: str) -> str:
        return _one_or_set((c.reg[term].strength for c in members), ordered)

    n = trainer.parallel.devices
    where = f" on {len(n)} {n[0].platform} device{'s' * (len(n) > 1)}" if devices else ""
    if devices and len(n) > 1:  # the data axis: each device's share of a batch, and how
        share = trainer.cfg.trainer.batch_size // len(n)
        where += f" ({share} example{'s' * (share > 1)} each, {trainer.parallel.mode})"
    head = (
        f"{data.name}: {data.x_train.shape[0]} train / "
        + ("" if data.x_val is None else f"{data.x_val.shape[0]} val / ")
        + f"{data.x_test.shape[0]} test, "
        f"example {tuple(data.example_shape)} | {arch} -> {trainer.output_activation}"
    )
    if untrained is not None:
        return f"{head} | {untrained}{where}"
    noise = cfg.noise.kind
    if noise != "none":
        noise += f":{_one_or_set(columns[1], ordered)}"
    return (
        f"{head} | loss {cfg.loss.kind} | noise {noise} | "
        f"reg {' + '.join(f'{k}:{strength(k)}' for k in cfg.reg) or 'none'} | "
        f"{optim} | "
        + (f"{precision} | " if precision != "float32" else "")
        + f"{trainer.epochs} epoch{'s' if trainer.epochs != 1 else ''} x "
        f"{trainer.steps_per_epoch} "
        f"step{'s' if trainer.steps_per_epoch != 1 else ''} of "
        f"{trainer.cfg.trainer.batch_size}"
        + (f" ({trainer.passes} passes each)" if trainer.passes > 1 else "")
        + where
        + (" | [...]: each member's value, in the members' order" if ordered else "")
    )


def evaluate_and_write(
    cfg: Config,
    trainer: Trainer,
    params,
    history: list[dict],
    timing: dict,
    workdir: Path,
    t0: float,
    loggers=None,
    figures_later: list | None = None,
    who: str = "",
) -> dict[str, float]:
    """Test metrics of trained ``params``; write params, metrics, history, reconstructions and
    figures to ``workdir``, and hand the figures and the final metrics to ``loggers``
    (``ae_jax.loggers``). Shared by single runs and the vectorised sweep engine.

    Given ``figures_later``, the run's figures are not drawn: what they are drawn from
    (``figures_of_run``, or None with ``trainer.figures=false``) is appended to it, and the
    caller draws them (``draw_many_runs_figures``, several runs at once) and then calls
    ``finish_outputs``."""
    metrics = evaluate_trained(cfg, trainer, params)
    warn_if_not_at_pca(cfg, trainer, metrics, who)  # who: a group member, by its directory
    warn_if_not_learned(cfg, trainer, metrics, who)
    metrics.update(timing)
    # the last epoch's loss and every term of it (reconstruction, each regulariser)
    metrics.update({k: v for k, v in history[-1].items() if k.startswith("train/loss")})
    metrics["time/total_seconds"] = time.perf_counter() - t0
    save_params(workdir / PARAMS_FILE, params)
    write_json_atomic(workdir / "metrics.json", metrics)
    write_history(workdir, history)
    write_reconstructions(trainer, params, workdir, eval_level(cfg), cfg.trainer.seed)
    figures = None
    if cfg.trainer.figures:
        figures = figures_of_run(trainer, history, workdir, cfg, params, metrics)
    if figures_later is not None:
        figures_later.append(figures)
        return metrics
    if figures is not None:
        from ae_jax.evaluation.figures import draw_run_figures

        draw_run_figures(figures)
    finish_outputs(loggers, cfg, workdir, history, metrics)
    return metrics


def finish_outputs(loggers, cfg: Config, workdir: Path, history: list, metrics: dict) -> None:
    """The end of a run's outputs, once its figures are drawn: the figures and the final
    metrics to the loggers, and the summary lines on the console."""
    log_final(loggers, cfg, workdir, history, metrics)
    log.info(summary(metrics))
    log.info("outputs in %s", workdir.resolve())


@functools.partial(jax.jit, static_argnums=1)
def _example_keys(seed, n: int):
    """n noise keys of a run's seed for the reconstructions figure (one program)."""
    return jax.random.split(jax.random.key(seed), n)


def write_reconstructions(
    trainer: Trainer, params, workdir: Path, eval_level: float, seed: int, n: int = 10
) -> None:
    """``reconstructions.npz``: the first n test inputs, their corrupted versions (when the run
    measures denoising) and reconstructions, and the codes of up to 2048 test examples."""
    arrays = reconstruction_arrays(trainer, params, eval_level, seed, n)
    write_atomic(workdir / "reconstructions.npz", lambda f: np.savez_compressed(f, **arrays))


def reconstruction_arrays(
    trainer: Trainer, params, eval_level: float, seed: int, n: int = 10
) -> dict[str, np.ndarray]:
    """The arrays of ``reconstructions.npz`` (see ``write_reconstructions``)."""
    data, obj = trainer.data, trainer.objective
    x = data.x_test[:n]
    arrays = {"input": x}
    x_in = _corrupted(trainer, x, eval_level, seed)
    if x_in is not None:
        arrays["corrupted"] = x_in
    else:
        x_in = x
    arrays["reconstruction"] = np.asarray(obj.jitted.forward(params, x_in)[1])
    k = min(trainer.model.latent_dim, data.num_features, data.x_train.shape[0])
    if k < data.num_features:  # PCA with every component is the identity: nothing to compare
        arrays["pca"] = trainer.pca(k).reconstruct(x_in).astype(np.float32)
    arrays["codes"] = np.asarray(obj.jitted.encode(params, data.x_test[:2048]))
    return arrays


def _corrupted(trainer: Trainer, x: np.ndarray, eval_level: float, seed: int):
    """The examples ``x`` corrupted at ``eval_level`` with the run's fixed figure keys (the same
    corruption every time), or None when the run measures no denoising."""
    obj = trainer.objective
    if not (eval_level > 0 and obj.noise_kind != "none"):
        return None
    keys = _example_keys(np.int32(seed), x.shape[0])
    return np.asarray(obj.jitted.corrupt(keys, x, jnp.float32(eval_level))[0])


def eval_level(cfg: Config) -> float:
    """The noise level a run is evaluated at (``noise.eval_level``, else ``noise.level``)."""
    return cfg.noise.level if cfg.noise.eval_level is None else cfg.noise.eval_level


def reconstruction_snapshots(
    cfgs: list[Config], trainer: Trainer, loggers: list, stage: str = "", group: bool = False
):
    """The trackers' reconstructions every ``image_every`` epochs (``logger.<name>.image_every``)
    as the loop's ``Snapshots``, or None when no selected logger asks for them.

    ``cfgs`` and ``loggers``: one run's (or one stage's: ``stage`` prefixes the tag) config and
    loggers, or with ``group`` a vectorised group's members' (the state then has a leading
    members axis). The examples are the first 10 of the split the run evaluates on (validation
    when it has one: nothing of the test split is shown before the end), corrupted as in the
    final figure; each image has ``reconstructions.png``'s layout with the epoch in its title,
    logged as ``[<stage>/]reconstructions`` at that epoch, the last epoch's included unless the
    run's final ``reconstructions`` figure is that image (a run or group with figures). Every
    process takes the snapshot (a multi-process run's programs are collective); one without
    loggers draws nothing.
    """
    from ae_jax.loggers import image_every
    from ae_jax.training.loop import Snapshots

    every = [image_every(c.logger) for c in cfgs]  # per member: tracker -> its period
    if not any(every):
        return None
    # the last epoch is every tracker's, unless the final figure shows it (a run with figures)
    last, at_end = trainer.epochs, bool(stage) or not cfgs[0].trainer.figures

    def due_trackers(i: int, epoch: int) -> list[str]:
        if epoch == last:
            return list(every[i]) if at_end else []
        return [name for name, n in every[i].items() if epoch % n == 0]

    data, obj = trainer.data, trainer.objective
    x = np.asarray(trainer.x_eval[:10])
    corrupted = [_corrupted(trainer, x, eval_level(c), c.trainer.seed) for c in cfgs]
    x_in = [x if c is None else c for c in corrupted]
    if group:  # each member its own inputs (members may differ in noise level)
        forward = jax.jit(jax.vmap(lambda params, x: obj.forward(params, x)[1]))
        x_in = np.stack(x_in)
    else:
        forward, x_in = jax.jit(lambda params, x: obj.forward(params, x)[1]), x_in[0]
    tag = f"{stage}/reconstructions" if stage else "reconstructions"
    split = "validation" if trainer.eval_prefix == "val" else "test"

    def use(epoch: int, arrays, skip) -> None:
        for i, (cfg, lg) in enumerate(zip(cfgs, loggers)):
            trackers = due_trackers(i, epoch)
            if not lg or i in skip or not trackers:
                continue
            rows = {"input": x}
            if corrupted[i] is not None:
                rows[f"{obj.noise_kind} {eval_level(cfg):g}"] = corrupted[i]
            rows["autoencoder"] = arrays[i] if group else arrays
            title = f"{cfg.name}: {data.name} ({split} split), epoch {epoch}"
            try:
                _log_reconstructions(lg, tag, rows, data.example_shape, title, epoch, trackers)
            except Exception as err:  # an image must never stop the training run
                log.warning(
                    "the trackers' reconstructions stop at epoch %d (%s: %s); training goes on",
                    epoch,
                    type(err).__name__,
                    err,
                )
                every[:] = [{} for _ in every]  # due no more
                return

    return Snapshots(
        due=lambda epoch: any(due_trackers(i, epoch) for i in range(len(cfgs))),
        take=lambda state: forward(state.params, x_in),
        use=use,
    )


def _log_reconstructions(loggers, tag, rows: dict, example_shape, title: str, epoch: int, only):
    """One reconstructions image to the ``only`` trackers of ``loggers`` at ``epoch``, through a
    temporary PNG (every tracker copies or reads it as it logs)."""
    import tempfile

    from ae_jax.evaluation.figures import plot_reconstructions

    with tempfile.TemporaryDirectory(prefix="ae_jax-image-") as tmp:
        png = Path(tmp) / "reconstructions.png"
        plot_reconstructions(png, rows, tuple(example_shape), title=title)
        loggers.log_image(tag, png, epoch, only=only)


def warm_evaluation(cfg: Config, trainer: Trainer, params) -> None:
    """Trace and compile (or load from the compilation cache) every program that
    ``evaluate_and_write`` runs, by evaluating ``params`` and discarding the figures; writes
    nothing. The vectorised engine calls it while its epoch program compiles on another
    thread, so that the members' evaluation after training only runs programs."""
    evaluate_trained(cfg, trainer, params)
    reconstruction_arrays(trainer, params, eval_level(cfg), cfg.trainer.seed)


def warm_outputs_in_background(cfg: Config, trainer: Trainer, params) -> threading.Thread:
    """Ready what ``evaluate_and_write`` needs while the run trains, on a second thread: its
    evaluation programs (``warm_evaluation`` on ``params``, a host copy of the initial ones)
    and matplotlib when figures are drawn. The device and XLA's threads train meanwhile; the
    caller joins the thread before evaluating. A failure here is left for the real evaluation
    to report."""

    def warm() -> None:
        try:
            warm_evaluation(cfg, trainer, params)
            if cfg.trainer.figures:
                import ae_jax.evaluation.figures  # noqa: F401  (matplotlib: ~0.5 s)
        except Exception:  # the evaluation after training raises it where it matters
            log.debug("readying the evaluation failed", exc_info=True)

    thread = threading.Thread(target=warm, name="ae_jax-warm-evaluation", daemon=True)
    thread.start()
    return thread


FIGURES = ("reconstructions", "training_curves", "code_activations", "filters")


def figures_of_run(
    trainer: Trainer,
    history,
    workdir: Path,
    cfg: Config,
    params=None,
    metrics: dict | None = None,
):
    """A run's figures, as plain values (``ae_jax.evaluation.figures.RunFigures``, drawn by
    ``draw_run_figures`` here or in a worker process), once ``write_reconstructions`` has written
    its ``reconstructions.npz``: ``reconstructions.png`` (input / corrupted / AE / PCA with the
    same k), ``training_curves.png`` (log-scale losses, eval beside train, PCA's test MSE as a
    reference line), ``code_activations.png`` (sparsity; KL's target marked) and, for a fully
    connected model of images, ``filters.png`` (the first layer's weights as images)."""
    from ae_jax.evaluation.figures import RunFigures

    data, obj = trainer.data, trainer.objective
    k = cfg.model.latent_dim
    level = eval_level(cfg)
    sparse = cfg.model.sparse_k  # a k-sparse code: its width, and the k units it keeps
    pca_label = f"PCA k={min(k, data.num_features)}"
    reference = None
    if metrics and metrics.get("test/pca_mse", 0.0) > 0:  # 0: PCA is exact at this k
        reference = {f"{pca_label} test MSE": metrics["test/pca_mse"]}
    kernel = (params or {}).get("encoder_0", {}).get("kernel") if params is not None else None
    if not (data.is_image and kernel is not None and np.ndim(kernel) == 2):
        kernel = None
    return RunFigures(
        workdir=Path(workdir),
        title=f"{cfg.name}: {data.name}, " + (f"{k} units, top {sparse}" if sparse else f"k={k}"),
        example_shape=tuple(data.example_shape),
        corrupted_label=f"{obj.noise_kind} {level:g}",
        pca_label=pca_label,
        history=list(history or []),
        reference=reference,
        kl_target=getattr(cfg.reg.get("kl_sparse"), "target", None),
        kernel=None if kernel is None else np.asarray(kernel),
    )


def log_final(loggers, cfg: Config, workdir: Path, history: list, metrics: dict) -> None:
    """The run's figures and its config with the final metrics, to every selected logger."""
    if not loggers:
        return
    step = int(history[-1]["epoch"]) if history else 0
    for tag in FIGURES:
        if (workdir / f"{tag}.png").exists():
            loggers.log_image(tag, workdir / f"{tag}.png", step)
    loggers.log_hparams(cfg, metrics)


def epoch_logger(loggers, prefix: str = "", nested: tuple[str, ...] = ()):
    """``on_epoch(row)`` for the loop: each history row to the loggers (step = epoch), keys
    prefixed with a stage name in multi-stage runs (without ``epoch``, which the step is);
    None when no logger is open. ``nested``: the stages whose names extend ``prefix``
    (``baseline/supervised`` of ``baseline``), whose rows are not this stage's."""
    if not loggers:
        return None

    def on_epoch(row: dict) -> None:
        if prefix:  # the step is the stage's epoch: an unprefixed "epoch" of every stage
            keys = {f"{prefix}/{k}": v for k, v in row.items() if k != "epoch"}
        else:  # would be logged at the same steps again and again
            keys = dict(row)
        loggers.log_metrics(keys, step=int(row["epoch"]), stage=prefix)

    on_epoch.flush = loggers.flush  # before each checkpoint (ae_jax.training.loop.run_stage)
    # what a killed session logged after the checkpoint is stale: the whole run's, or only
    # this stage's (every stage's steps start at 1: the other stages' must stay)
    if prefix:
        on_epoch.resumed = lambda epoch: loggers.stage_resumed(prefix, epoch, nested)
    else:
        on_epoch.resumed = loggers.resumed
    return on_epoch


PARAMS_FILE = "params.msgpack"


def save_params(path: Path, params) -> None:
    """The trained parameters (flax msgpack), written atomically."""
    from flax import serialization

    write_atomic(path, lambda f: f.write(serialization.to_bytes(params)))


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


def sweep_group() -> str | None:
    """The name of the Hydra multirun this job belongs to (groups its runs in the trackers)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return Path(str(HydraConfig.get().sweep.dir)).name
    except (ImportError, ValueError):
        pass
    return None


@contextlib.contextmanager
def open_run_loggers(
    cfg, workdir: Path, main: bool = True, group: str | None = None, fresh: bool = False
):
    """The run's ``logger`` selection opened in ``workdir`` (``ae_jax.loggers``), closed after;
    ``fresh``: new tracker runs beside an earlier run of another config there (``open_loggers``).
    """
    from ae_jax.loggers import open_loggers

    loggers = open_loggers(
        cfg.logger,
        workdir=workdir,
        run_name=f"{cfg.name}/{workdir.name}",
        config=config_dict(cfg),
        group=group or sweep_group(),
        main=main,
        fresh=fresh,
    )
    try:
        yield loggers
    except BaseException as err:  # the trackers record how the run ended
        loggers.close("preempted" if isinstance(err, Preempted) else "failed")
        raise
    finally:
        loggers.close()
