"""Greedy layer-wise pretraining: one shallow autoencoder per encoder layer, then unrolling.

Layer i of the deep encoder (sizes ``model.widths + [model.latent_dim]``) is trained as a
shallow autoencoder ``h_{i-1} -> h_i -> h_{i-1}`` of the run's own variant (its ``noise``,
``reg`` and ``loss``), on the CLEAN codes ``h_{i-1}`` of the layers below: only the layer's own
input is corrupted while it trains (Vincent et al. 2010, JMLR 11:3371, sec. 3.5 and Fig. 3;
Bengio et al. 2007 use autoencoders where Hinton & Salakhutdinov 2006 use RBMs). ``unroll``
then copies layer i's encoder into the deep encoder's ``encoder_i`` and its decoder into the
deep decoder in reverse order, or the transposed encoder kernel (Hinton & Salakhutdinov 2006,
Fig. 1, "unrolling").

    layers = pretrain_layers(cfg, data)          # [LayerResult, ...], bottom first
    deep = unroll([l.params for l in layers], deep_params, decoder_init="transposed")
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ae_jax.chunks import map_in_chunks
from ae_jax.config import Config, ConfigError, PretrainConfigError, validate
from ae_jax.data import Dataset
from ae_jax.evaluation.metrics import warn_if_not_learned
from ae_jax.models.builder import default_widths
from ae_jax.training.checkpoint import Checkpointer
from ae_jax.training.loop import loss_text, raise_if_preempted
from ae_jax.training.trainer import Trainer

log = logging.getLogger("ae_jax")
ENCODE_CHUNK = 8192  # examples per encode call (bounds the host copy of wide codes)


class UnrollError(ValueError):
    """Layer parameters do not fit the deep model they are unrolled into; says which layer."""


@dataclasses.dataclass
class LayerResult:
    """One pretrained layer: its shallow AE's params, training history and test metrics."""

    index: int
    params: Any  # the shallow MLPAutoencoder's params: encoder_0, decoder_0 | decoder_bias_0
    history: list[dict]
    metrics: dict[str, float]
    trainer: Trainer


def layer_sizes(cfg: Config, num_features: int) -> list[int]:
    """Encoder output sizes, bottom first: the hidden widths then the code (``[1000, 500, 30]``)."""
    m = cfg.model
    widths = (
        m.widths if m.widths is not None else default_widths(num_features, m.latent_dim, m.depth)
    )
    return [*map(int, widths), int(m.latent_dim)]


def layer_config(cfg: Config, index: int, sizes: list[int], input_in_unit_interval: bool) -> Config:
    """The shallow-autoencoder config of encoder layer ``index`` (0 = on the data).

    ``sizes`` are the encoder's output sizes (``layer_sizes``).

    Hidden layers use ``model.activation`` as their code unit and the top layer
    ``model.code_activation``. Layer 0 keeps the run's loss and output activation; a layer
    above reconstructs the codes below it, with the run's loss when those codes lie in [0, 1]
    (sigmoid units: cross-entropy, as for the pixels) and squared error with a linear output
    otherwise.
    """
    c = copy.deepcopy(cfg)
    p, m = c.pretrain, c.model
    top = index == len(sizes) - 1
    m.depth, m.widths, m.decoder_widths = 0, None, None
    m.latent_dim = sizes[index]
    m.code_activation = m.code_activation if top else m.activation
    # a tied deep model decodes with its encoder's kernels transposed, which cannot hold the
    # layers' own decoders: its layers are tied too, so that unrolled they are the stack
    m.tied = p.layer_tied or cfg.model.tied
    if index > 0:
        m.output_activation = "auto"
        if not input_in_unit_interval:
            c.loss.kind = "mse"
    c.optim.lr = p.layer_lr if p.layer_lr is not None else c.optim.lr
    c.optim.name = p.layer_optim if p.layer_optim is not None else c.optim.name
    c.trainer.epochs = p.layer_epochs
    c.trainer.min_steps = 0  # a layer trains exactly pretrain.layer_epochs
    c.trainer.early_stopping = False  # ... whatever the fine-tuning stages do
    c.trainer.batch_size = p.layer_batch_size or c.trainer.batch_size
    c.trainer.eval_every = min(c.trainer.eval_every, p.layer_epochs)
    c.trainer.figures = False
    c.pretrain.enabled = False
    c.name = f"{cfg.name}/layer_{index}"
    return validate(c)


def check_layer_configs(
    cfg: Config, num_features: int, sizes: list[int], data_in_unit_interval: bool
) -> None:
    """Every layer's config (``layer_config``) checked before the first layer trains: a
    setting that every layer shares but only a higher one cannot take (``model.sparse_k``
    above a narrower hidden layer) stopped the run after the layers below had trained, naming
    the layer's own keys (its code is ``model.latent_dim`` to the layer, ``model.widths[i]``
    to the user; its units are ``model.activation``)."""
    for i in range(len(sizes)):
        # the codes below a layer lie in [0, 1] when they are sigmoid units
        unit = data_in_unit_interval if i == 0 else cfg.model.activation == "sigmoid"
        try:
            layer_config(cfg, i, sizes, unit)
        except ConfigError as err:
            said = str(err)
            if i < len(sizes) - 1:  # a hidden layer: its code is a width, its units activation
                said = said.replace("model.latent_dim", f"model.widths[{i}]")
                said = said.replace("model.code_activation", "model.activation")
            below = sizes[i - 1] if i else num_features
            raise PretrainConfigError(
                f"pretraining layer {i} ({below} -> {sizes[i]} units): {said}"
            ) from None


def encode_in_chunks(encode: Callable, params, x: np.ndarray) -> np.ndarray:
    """``encode(params, x)`` over x in fixed chunks (one compilation); float32 (N, k), host."""
    z = map_in_chunks(lambda xb, _: encode(params, xb), x, ENCODE_CHUNK)
    return np.ascontiguousarray(z, dtype=np.float32)


def codes_dataset(
    data: Dataset,
    z_train: np.ndarray,
    z_test: np.ndarray,
    index: int,
    z_val: np.ndarray | None = None,
) -> Dataset:
    """The codes of layer ``index`` as the tabular dataset that the next layer trains on."""
    return Dataset(
        name=f"{data.name}/codes_{index}",
        x_train=z_train,
        y_train=data.y_train,
        x_test=z_test,
        y_test=data.y_test,
        example_shape=(z_train.shape[1],),
        is_image=False,
        scaling="none",
        x_val=z_val,
        y_val=None if z_val is None else data.y_val,
    )


def pretrain_layers(
    cfg: Config,
    data: Dataset,
    seed: int | None = None,
    evaluate: bool = True,
    workdir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[str], Callable[[dict], None] | None] | None = None,
    snapshots: Callable[[int, str, Config, Trainer], Any] | None = None,
) -> list[LayerResult]:
    """Train every encoder layer greedily, bottom first; each on the clean codes of the last.

    Each layer is a stage of the one loop (``pretrain/layer_<i>``), with progress lines as in
    a plain run. With ``workdir`` each layer checkpoints to
    ``<workdir>/pretrain/layer_<i>/checkpoints``; with ``resume`` a complete layer is restored
    from its final checkpoint instead of trained again, and an interrupted one continues from
    its newest checkpoint. With ``evaluate``, each layer's ``test/...`` metrics (on the test
    codes of the layer below) are computed. ``on_epoch(name)`` gives a layer's epoch hook and
    ``snapshots(index, name, layer config, trainer)`` its ``Snapshots`` (or None).
    """
    from ae_jax.evaluation.metrics import evaluate_test_split

    seed = cfg.trainer.seed if seed is None else seed
    sizes = layer_sizes(cfg, data.num_features)
    check_layer_configs(cfg, data.num_features, sizes, data.in_unit_interval)
    results: list[LayerResult] = []
    current = data
    for i in range(len(sizes)):
        lcfg = layer_config(cfg, i, sizes, current.in_unit_interval)
        trainer = Trainer(
            lcfg,
            current,
            is_code=i == len(sizes) - 1,
            batch_key=(
                "pretrain.layer_batch_size"
                if cfg.pretrain.layer_batch_size
                else "trainer.batch_size"
            ),
            lr_key="pretrain.layer_lr" if cfg.pretrain.layer_lr is not None else "optim.lr",
        )
        state = trainer.init_state(seed + i)  # distinct initial weights and noise per layer
        n = lcfg.trainer.epochs
        log.info(
            "layer %d: %d -> %d (%s units), %d epoch%s",
            i,
            current.num_features,
            sizes[i],
            lcfg.model.code_activation,
            n,
            "" if n == 1 else "s",
        )
        name = f"pretrain/layer_{i}"
        checkpointer = None
        if workdir is not None:
            checkpointer = Checkpointer(
                Path(workdir) / name / "checkpoints", keep=lcfg.trainer.keep_checkpoints
            )
        state, history, timing = trainer.fit(
            state,
            checkpointer=checkpointer,
            resume=resume,
            stage_name=name,
            on_epoch=on_epoch(name) if on_epoch is not None else None,
            snapshots=snapshots(i, name, lcfg, trainer) if snapshots is not None else None,
        )
        raise_if_preempted(f"after {name}")
        params = jax.device_get(state.params)
        metrics = dict(timing)
        if evaluate:
            level = lcfg.noise.level if lcfg.noise.eval_level is None else lcfg.noise.eval_level
            metrics.update(
                evaluate_test_split(
                    trainer.objective,
                    params,
                    current.x_train,
                    current.x_test,
                    latent_dim=sizes[i],
                    eval_level=level,
                    in_unit_interval=current.in_unit_interval,
                    jacobian_examples=lcfg.trainer.jacobian_examples,
                    linear=lcfg.model.kind == "linear",
                    seed=seed,
                )
            )
        metrics["train/loss"] = history[-1]["train/loss"]
        results.append(LayerResult(i, params, history, metrics, trainer))
        log.info(
            "layer %d: train loss %s, test mse %s, %.1fs",
            i,
            loss_text(metrics["train/loss"]),
            loss_text(metrics["test/mse"]) if evaluate else "-",
            timing["time/train_seconds"],
        )
        if evaluate:  # a layer that grew to nonsense, before the stages after it fail on it
            warn_if_not_learned(lcfg, trainer, metrics, who=f"layer {i}")
        if i + 1 < len(sizes):
            enc = trainer.objective.jitted.encode
            z_train = encode_in_chunks(
                enc, params, current.x_train.reshape(-1, current.num_features)
            )
            flat = (-1, current.num_features)
            z_test = encode_in_chunks(enc, params, current.x_test.reshape(flat))
            z_val = None
            if current.x_val is not None:
                z_val = encode_in_chunks(enc, params, current.x_val.reshape(flat))
            current = codes_dataset(data, z_train, z_test, i, z_val)
    return results


def _layer_decoder(layer: Any, index: int) -> tuple[np.ndarray | None, np.ndarray]:
    """(kernel (k, D_in) or None when the layer is tied, bias (D_in,)) of a shallow AE."""
    if "decoder_0" in layer:
        return layer["decoder_0"]["kernel"], layer["decoder_0"]["bias"]
    if "decoder_bias_0" in layer:
        return None, layer["decoder_bias_0"]
    raise UnrollError(
        f"layer {index}'s params have no decoder_0 or decoder_bias_0 (keys {sorted(layer)}); "
        "pass the params of a shallow MLPAutoencoder (model.depth=0)"
    )


def unroll(layers: list[Any], deep: Any, decoder_init: str = "pretrained") -> dict:
    """The deep autoencoder's params with every layer copied in (Hinton & Salakhutdinov 2006).

    Encoder: ``deep.encoder_i = layers[i].encoder_0``. Decoder layer j (j = 0 next to the code)
    inverts encoder layer ``L - j``: it gets that layer's own pretrained decoder
    (``decoder_init="pretrained"``) or the transposed encoder kernel ``W_{L-j}^T`` with the
    layer's decoder bias (``"transposed"``, what Hinton & Salakhutdinov do with RBM weights).
    A tied deep model takes only the decoder biases (its kernels are the transposes anyway).

    Args:
      layers: shallow-AE params, bottom first (``encoder_0``, ``decoder_0`` or ``decoder_bias_0``).
      deep: params of the deep MLPAutoencoder (a template: every leaf is replaced).
      decoder_init: ``pretrained`` | ``transposed``.
    Raises:
      UnrollError: when the number of layers or any shape does not match the deep model.
    """
    if decoder_init not in ("pretrained", "transposed"):
        raise UnrollError(
            f"decoder_init={decoder_init!r} is not valid; use pretrained or transposed"
        )
    n_enc = sum(1 for k in deep if k.startswith("encoder_"))
    if n_enc != len(layers):
        raise UnrollError(
            f"the deep model has {n_enc} encoder layers but {len(layers)} pretrained layers were "
            "given; pretrain one shallow autoencoder per encoder layer"
        )
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in jax.device_get(deep).items()}
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        for name in ("kernel", "bias"):
            want, got = np.shape(out[f"encoder_{i}"][name]), np.shape(layer["encoder_0"][name])
            if want != got:
                raise UnrollError(
                    f"layer {i}'s encoder {name} has shape {got} but the deep model's encoder_{i} "
                    f"needs {want}"
                )
        out[f"encoder_{i}"] = {k: np.asarray(v) for k, v in layer["encoder_0"].items()}
    for j in range(last + 1):
        i = last - j
        kernel, bias = _layer_decoder(layers[i], i)
        if decoder_init == "transposed" or kernel is None:
            kernel = np.asarray(layers[i]["encoder_0"]["kernel"]).T  # (k_i, D_i)
        if f"decoder_bias_{j}" in out:  # tied deep model: the kernel is W_i^T by construction
            target = {"bias": out[f"decoder_bias_{j}"]}
            new = {"bias": np.asarray(bias)}
        else:
            target = out[f"decoder_{j}"]
            new = {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}
        for name, value in new.items():
            if np.shape(target[name]) != value.shape:
                raise UnrollError(
                    f"layer {i}'s decoder {name} has shape {value.shape} but the deep model's "
                    f"decoder layer {j} needs {np.shape(target[name])}"
                )
        if f"decoder_bias_{j}" in out:
            out[f"decoder_bias_{j}"] = new["bias"]
        else:
            out[f"decoder_{j}"] = new
    return out
