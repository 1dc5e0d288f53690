"""``pretrain_and_finetune(cfg, workdir)``: greedy pretraining, unrolling, fine-tuning, baseline.

The run that ``ae_jax.train.train_and_evaluate`` hands over when ``cfg.pretrain.enabled``:

1. every encoder layer is pretrained as a shallow autoencoder (``layerwise.pretrain_layers``);
2. the layers are unrolled into the deep autoencoder (``unrolled/test/...``);
3. unsupervised fine-tuning of the whole deep AE on reconstruction (``test/...``: the run's
   result, with ``test/sse_per_example`` beside ``test/pca_sse_per_example``; Hinton &
   Salakhutdinov 2006 minimise cross-entropy and report squared error, so does ``loss=bce``);
4. supervised fine-tuning of the encoder plus a softmax layer (``supervised/test/error_pct``;
   Vincent et al. 2010, sec. 3.5);
5. the same network and stages from a random start (``baseline/...``);
6. a linear probe on the final codes (``probe/error_pct``), raw pixels (``probe/raw/...``) and
   PCA codes of the same size (``probe/pca/...``).

Outputs in ``workdir``: ``metrics.json`` (every stage), ``params.msgpack`` (the final deep AE,
what ``ae_jax.features`` loads), ``history.*`` (unsupervised fine-tuning),
``pretrain/layer_<i>/history.*``, ``pretrain/unrolled.msgpack``, ``supervised/params.msgpack``
and ``history.*``, ``baseline/...``, ``reconstructions.npz`` and the figures.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ae_jax.config import Config, to_config, to_yaml, validate
from ae_jax.data import Dataset, load_dataset
from ae_jax.evaluation.metrics import evaluate_trained
from ae_jax.features import probe_report, trainer_devices, write_run_info
from ae_jax.outputs import (
    describe,
    epoch_logger,
    figures_of_run,
    log_final,
    open_run_loggers,
    reconstruction_snapshots,
    save_params,
    summary,
    write_reconstructions,
)
from ae_jax.pretraining.classifier import (
    EncoderClassifier,
    SupervisedError,
    init_classifier,
    train_classifier,
)
from ae_jax.pretraining.layerwise import (
    check_layer_configs,
    encode_in_chunks,
    layer_sizes,
    pretrain_layers,
    unroll,
)
from ae_jax.run_io import write_history, write_json_atomic
from ae_jax.training.checkpoint import Checkpointer
from ae_jax.training.loop import checkpoint_schedule, raise_if_preempted
from ae_jax.training.parallel import fit_batch, select_devices
from ae_jax.training.rundir import claimed
from ae_jax.training.trainer import Trainer, warn_if_overcomplete

log = logging.getLogger("ae_jax")
LAYER_METRICS = (
    "test/mse",
    "test/sse_per_example",
    "test/bce",
    "test/denoise_mse",
    "test/jacobian_fro",
    "test/mean_code_activation",
    "train/loss",
    "time/train_seconds",
)


# labels of more distinct values than this, with fewer examples each than MIN_PER_CLASS on
# average, are a measured quantity (a regression target), not classes
MANY_VALUES = 20
MIN_PER_CLASS = 3


def class_label_problem(y: np.ndarray) -> str | None:
    """Why training labels ``y`` cannot be classified, or None: one class (nothing to tell
    apart, and a 0% error that means nothing), or many values with a few examples each (the
    diabetes target, 25..346: 214 values of ~2 examples, trained as 347 classes to 100% error)."""
    values = np.unique(y)
    if values.size < 2:
        which = values[0] if values.size else "none"
        return f"its training labels hold one class ({which}): there is nothing to classify"
    each = y.size / values.size
    if values.size > MANY_VALUES and each < MIN_PER_CLASS:
        return (
            f"its training labels take {values.size} values, {each:.1f} examples each: a "
            "measured quantity (a regression target) rather than classes, which these stages "
            "do not learn"
        )
    return None


def finetune_config(cfg: Config, sizes: list[int]) -> Config:
    """The deep autoencoder's config for unsupervised fine-tuning (and the baseline).

    Plain reconstruction unless ``pretrain.finetune_keep_objective``: Hinton & Salakhutdinov
    fine-tune on the reconstruction error alone, and Vincent et al. corrupt only during
    pretraining.
    """
    c = copy.deepcopy(cfg)
    c.model.widths = list(sizes[:-1])
    c.model.depth = len(sizes) - 1
    if not cfg.pretrain.finetune_keep_objective:
        c.noise.kind, c.noise.level, c.noise.eval_level = "none", 0.0, None
        c.reg = {}
    return validate(c)


def evaluate_autoencoder(cfg: Config, trainer: Trainer, params) -> dict[str, float]:
    """Every ``test/...`` metric of deep-AE params, plus the PCA per-image SSE beside it."""
    return evaluate_trained(cfg, trainer, params)


def _prefixed(prefix: str, metrics: dict[str, Any], keys=None) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in metrics.items() if keys is None or k in keys}


def _save_params(path: Path, params) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_params(path, params)


def _classifier(cfg: Config, sizes: list[int], data: Dataset) -> EncoderClassifier:
    m = cfg.model
    linear = m.kind == "linear"
    return EncoderClassifier(
        sizes=tuple(sizes),
        num_classes=int(data.num_classes),
        activation="linear" if linear else m.activation,
        code_activation="linear" if linear else m.code_activation,
    )


def chance_error_pct(labels: np.ndarray) -> float:
    """The error % of always answering the most frequent label: chance for a classifier (labels
    {3, 7} are two classes among eight indices; unbalanced labels put chance below 1 - 1/K)."""
    return 100.0 * (1 - np.bincount(labels).max() / labels.size)


def supervised_stage(
    cfg: Config,
    sizes: list[int],
    data: Dataset,
    encoder: dict | None,
    workdir: Path,
    prefix: str,
    loggers=None,
) -> dict[str, float]:
    """Fine-tune ``encoder`` (None: a random start) plus a softmax layer on the labels; a
    stage of the one loop, checkpointed in ``<workdir>/<prefix>/checkpoints``."""
    p, t = cfg.pretrain, cfg.trainer
    model = _classifier(cfg, sizes, data)
    params = init_classifier(model, data.example_shape, t.seed + 1000, encoder)
    flat = (-1, data.num_features)
    n = p.supervised_epochs
    log.info(
        "%s: encoder + softmax %s-%s-%d on the labels, %d epoch%s (%s lr %g)",
        prefix.rstrip("/"),
        data.num_features,
        "-".join(map(str, sizes)),
        model.num_classes,
        n,
        "" if n == 1 else "s",
        p.supervised_optim,
        p.supervised_lr,
    )
    params, history, metrics = train_classifier(
        model,
        params,
        data.x_train.reshape(flat),
        data.y_train,
        data.x_test.reshape(flat),
        data.y_test,
        epochs=p.supervised_epochs,
        batch_size=p.supervised_batch_size or t.batch_size,
        batch_key=(
            "pretrain.supervised_batch_size" if p.supervised_batch_size else "trainer.batch_size"
        ),
        data_name=data.name,
        lr=p.supervised_lr,
        optim=p.supervised_optim,
        schedule=p.supervised_schedule,
        seed=t.seed,
        devices=t.devices,
        parallel=t.parallel,
        eval_every=max(1, min(t.eval_every, p.supervised_epochs)),
        name=prefix.rstrip("/"),
        on_epoch=epoch_logger(loggers, prefix.rstrip("/")),
        checkpointer=Checkpointer(workdir / prefix / "checkpoints", keep=t.keep_checkpoints),
        resume=t.resume,
        **checkpoint_schedule(t),
        log_every=t.log_every,
        progress=t.progress,
        precision=t.precision,
        x_val=None if data.x_val is None else data.x_val.reshape(flat),
        y_val=data.y_val,
        patience=t.patience if t.early_stopping else None,
    )
    raise_if_preempted(f"after stage {prefix.rstrip('/')}")
    out_dir = workdir / prefix
    out_dir.mkdir(parents=True, exist_ok=True)
    write_history(out_dir, history)
    _save_params(out_dir / "params.msgpack", params)
    log.info(
        "%s: test error %.2f%% (train %.2f%%) in %.1fs",
        prefix.rstrip("/"),
        metrics["test/error_pct"],
        metrics["train/error_pct"],
        metrics["time/train_seconds"],
    )
    chance = chance_error_pct(data.y_train)
    if chance > 0 and metrics["train/error_pct"] >= chance - min(2.0, 0.05 * chance):
        log.warning(
            "%s: the classifier has not learned its training labels (train error %.2f%%, "
            "chance %.0f%%: always the most frequent of %d classes): pretrain.supervised_lr=%g "
            "is too high (a loss that grew) or too low for its %d epochs",
            prefix.rstrip("/"),
            metrics["train/error_pct"],
            chance,
            int(np.unique(data.y_train).size),
            p.supervised_lr,
            p.supervised_epochs,
        )
    return _prefixed(prefix, metrics)


def probe_stage(cfg: Config, trainer: Trainer, params, data: Dataset) -> dict[str, float]:
    """Linear probe on the codes, the raw inputs and PCA codes of the same size (test error %)."""
    enc = trainer.objective.jitted.features  # k-sparse: model.sparse_k_features units kept
    flat = (-1, data.num_features)
    z_train = encode_in_chunks(enc, params, data.x_train.reshape(flat))
    z_test = encode_in_chunks(enc, params, data.x_test.reshape(flat))
    z_val = None if data.x_val is None else encode_in_chunks(enc, params, data.x_val.reshape(flat))
    return probe_report(
        z_train,
        z_test,
        data,
        steps=cfg.pretrain.probe_steps,
        seed=cfg.trainer.seed,
        l2=list(cfg.pretrain.probe_l2),
        z_val=z_val,
    )


def pretrain_and_finetune(cfg: Any, workdir: str | Path, rundir=None) -> dict[str, float]:
    """Run every configured stage (see the module docstring); return and write the metrics.

    Every stage goes through the one loop and checkpoints in its own directory
    (``pretrain/layer_<i>/``, ``checkpoints/`` for the fine-tuning, ``supervised/``,
    ``baseline/``, ``baseline/supervised/``). Run the same command again after an interruption
    and complete stages are restored from their final checkpoints, the interrupted one resumes
    at its newest checkpoint ("resuming stage ... at epoch ..."), and the result is bitwise the
    same as an uninterrupted run's. ``rundir`` is the claimed run directory
    (``ae_jax.train.train_and_evaluate`` passes it); None claims ``workdir`` here.
    """
    cfg = validate(to_config(cfg))
    workdir = Path(workdir)
    with claimed(cfg, workdir, rundir) as rundir:
        return _run_stages(cfg, workdir, rundir)


def _run_stages(cfg: Config, workdir: Path, rundir) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        return _stages(cfg, workdir, rundir, stack)


def _stages(cfg: Config, workdir: Path, rundir, stack: contextlib.ExitStack) -> dict[str, float]:
    p, t = cfg.pretrain, cfg.trainer
    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    rundir.check_data(data, cfg.data)
    # a batch larger than the data trains every stage on the whole split (said once, here);
    # config.yaml, the loggers and the final record keep the value the run was given
    recorded = cfg
    batch = fit_batch(
        t.batch_size, data.x_train.shape[0], t.devices, "trainer.batch_size", data.name
    )
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(t, batch_size=batch))
    t = cfg.trainer
    if p.baseline and not (p.unsupervised or p.supervised):
        log.warning(
            "pretrain.baseline=true compares the fine-tuning stages with a random start, and "
            "none runs (pretrain.unsupervised=false, pretrain.supervised=false): no baseline"
        )
    if p.supervised and data.y_train is None:
        raise SupervisedError(
            f"pretrain.supervised=true needs class labels, but {data.name} has none; use a "
            "labelled dataset or set pretrain.supervised=false"
        )
    unusable = None if data.y_train is None else class_label_problem(data.y_train)
    if unusable and p.supervised:  # before any stage trains
        raise SupervisedError(
            f"pretrain.supervised=true classifies {data.name}'s labels, but {unusable}; set "
            "pretrain.supervised=false (and pretrain.probe=false) to pretrain without them"
        )
    if unusable and p.probe:
        log.warning("no linear probe: %s's %s", data.name, unusable.replace("its ", "", 1))
    probe = p.probe and data.y_train is not None and not unusable
    sizes = layer_sizes(cfg, data.num_features)
    check_layer_configs(cfg, data.num_features, sizes, data.in_unit_interval)
    ft_cfg = finetune_config(cfg, sizes)
    trainer = Trainer(ft_cfg, data, is_code=False)  # refuses what does not fit the data
    if p.supervised:  # the last stage's batch over the devices, before the first stage trains
        key = "pretrain.supervised_batch_size" if p.supervised_batch_size else "trainer.batch_size"
        b, n = p.supervised_batch_size or t.batch_size, data.x_train.shape[0]
        if b <= n:
            select_devices(t.devices, b, key)
        else:  # batches of the whole split, said once here for both supervised stages (or
            # refused in one line): the stages then get the split's size
            whole = fit_batch(b, n, t.devices, key, data.name)
            p = dataclasses.replace(p, supervised_batch_size=whole)
            cfg = dataclasses.replace(cfg, pretrain=p)
    if p.unsupervised:  # the one stage that trains the deep AE's code on ft_cfg's objective
        if not p.finetune_keep_objective and (cfg.reg or cfg.noise.kind != "none"):
            warn_if_overcomplete(
                ft_cfg,
                data.num_features,
                " in unsupervised fine-tuning",
                "pretrain.finetune_keep_objective=true fine-tunes with the layers' reg and noise",
            )
        else:
            warn_if_overcomplete(ft_cfg, data.num_features)
    if t.resume:  # another model's checkpoints here: refused before anything is written
        Checkpointer(workdir / "checkpoints").check_same_run(trainer.init_state())
    rundir.start(to_yaml(recorded))
    if rundir.main:  # from the start: a rerun on changed data is refused (RunDir.check_data)
        write_run_info(workdir, data, trainer.output_activation, trainer_devices(trainer))
    # a finished pipeline (completed, its metrics.json written at the end) is evaluated
    # again, not trained: its trackers already hold it. (A changed rerun moves the earlier
    # metrics.json aside, RunDir.start, and its status says running until it completes.)
    finished = (
        t.resume and rundir.completed() and (workdir / "metrics.json").exists()
    ) and not rundir.changed
    loggers = stack.enter_context(
        open_run_loggers(
            recorded, workdir, rundir.main and not finished, fresh=bool(rundir.changed)
        )
    )
    metrics: dict[str, float] = {}

    # 1. greedy layer-wise pretraining
    layers = pretrain_layers(
        cfg,
        data,
        workdir=workdir,
        resume=t.resume,
        on_epoch=lambda name: epoch_logger(loggers, name),
        # the first layer reconstructs the data (the others, codes): its images for the trackers
        snapshots=lambda i, name, lcfg, layer: (
            reconstruction_snapshots([lcfg], layer, [loggers], stage=name) if i == 0 else None
        ),
    )
    for layer in layers:
        name = f"pretrain/layer_{layer.index}"
        (workdir / name).mkdir(parents=True, exist_ok=True)
        write_history(workdir / name, layer.history)
        metrics.update(_prefixed(f"{name}/", layer.metrics, LAYER_METRICS))
    metrics["pretrain/time/train_seconds"] = sum(r.metrics["time/train_seconds"] for r in layers)

    # 2. unroll into the deep autoencoder
    log.info(
        describe(
            ft_cfg,
            trainer,
            untrained=None
            if p.unsupervised
            else "the unrolled stack, not fine-tuned as an autoencoder",
        )
    )
    state = trainer.init_state()
    random_start = jax.device_get(state.params)
    unrolled = unroll([layer.params for layer in layers], random_start, p.decoder_init)
    _save_params(workdir / "pretrain" / "unrolled.msgpack", unrolled)
    metrics.update(_prefixed("unrolled/", evaluate_autoencoder(ft_cfg, trainer, unrolled)))
    log.info(
        "unrolled (before fine-tuning): test mse %.5f, sse/image %.3f",
        metrics["unrolled/test/mse"],
        metrics["unrolled/test/sse_per_example"],
    )

    # 3. unsupervised fine-tuning
    params, history = unrolled, []
    if p.unsupervised:
        state = state.replace(params=unrolled, opt_state=trainer.tx.init(unrolled))
        state, history, timing = trainer.fit(
            state,
            checkpointer=Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints),
            resume=t.resume,
            stage_name="finetune",
            on_epoch=epoch_logger(loggers, "finetune"),
            profile_dir=workdir / "tensorboard" if t.profile else None,
            snapshots=reconstruction_snapshots([ft_cfg], trainer, [loggers], stage="finetune"),
        )
        raise_if_preempted("after stage finetune")
        params = jax.device_get(state.params)
        metrics.update(_prefixed("finetune/", timing))
        metrics["train/loss"] = history[-1]["train/loss"]
    metrics.update(evaluate_autoencoder(ft_cfg, trainer, params))
    _save_params(workdir / "params.msgpack", params)
    if history:
        write_history(workdir, history)
    write_reconstructions(trainer, params, workdir, 0.0, cfg.trainer.seed)
    if cfg.trainer.figures:  # reconstructions, codes, filters (curves only if fine-tuned)
        from ae_jax.evaluation.figures import draw_run_figures

        draw_run_figures(figures_of_run(trainer, history, workdir, ft_cfg, params, metrics))
    log.info("deep autoencoder (%s): %s", "fine-tuned" if history else "unrolled", summary(metrics))

    # 4. supervised fine-tuning of the encoder + softmax
    if p.supervised:
        metrics.update(supervised_stage(cfg, sizes, data, params, workdir, "supervised/", loggers))

    # 5. the same network and stages without pretraining
    if p.baseline:
        base = random_start
        if p.unsupervised:
            bstate, bhistory, btiming = trainer.fit(
                trainer.init_state(),
                checkpointer=Checkpointer(
                    workdir / "baseline" / "checkpoints", keep=t.keep_checkpoints
                ),
                resume=t.resume,
                stage_name="baseline",
                on_epoch=epoch_logger(loggers, "baseline", nested=("baseline/supervised",)),
            )
            raise_if_preempted("after stage baseline")
            base = jax.device_get(bstate.params)
            (workdir / "baseline").mkdir(parents=True, exist_ok=True)
            write_history(workdir / "baseline", bhistory)
            metrics.update(_prefixed("baseline/", btiming))
            metrics.update(_prefixed("baseline/", evaluate_autoencoder(ft_cfg, trainer, base)))
            log.info(
                "no pretraining: test mse %.5f, sse/image %.3f",
                metrics["baseline/test/mse"],
                metrics["baseline/test/sse_per_example"],
            )
        if p.supervised:
            encoder = base if p.unsupervised else None
            metrics.update(
                supervised_stage(
                    cfg, sizes, data, encoder, workdir, "baseline/supervised/", loggers
                )
            )

    # 6. linear probe
    if p.probe and data.y_train is None:
        log.info("no linear probe: %s has no labels", data.name)
    if probe:
        metrics.update(probe_stage(cfg, trainer, params, data))
        log.info(
            "probe test error: codes %.2f%%, raw %.2f%%, PCA-%d %.2f%%",
            metrics["probe/error_pct"],
            metrics["probe/raw/error_pct"],
            sizes[-1],
            metrics["probe/pca/error_pct"],
        )

    metrics["time/total_seconds"] = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in metrics.items()}
    write_json_atomic(workdir / "metrics.json", metrics)
    log_final(loggers, recorded, workdir, history, metrics)
    log.info("outputs in %s", workdir.resolve())
    return metrics
