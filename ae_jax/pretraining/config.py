"""The ``pretrain`` config group: greedy layer-wise pretraining, unrolling and fine-tuning.

With ``pretrain.enabled`` the run's deep MLP (``model.widths`` then ``model.latent_dim``) is
built layer by layer: layer i is a shallow autoencoder of the run's own variant (``noise``,
``reg``, ``loss``) trained on the clean codes of layer i-1 (Bengio et al. 2007; Vincent et al.
2010, sec. 3.5), then the layers are unrolled into the deep autoencoder (Hinton & Salakhutdinov
2006) and fine-tuned without supervision (``unsupervised``: the deep AE on reconstruction, with
the run's ``optim`` and ``trainer``) and/or with supervision (``supervised``: the encoder plus a
softmax layer on the labels). ``baseline`` trains the same network from a random start with the
same stages, which is the comparison that says what pretraining bought.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DECODER_INITS = ("pretrained", "transposed")
SUPERVISED_OPTIMIZERS = ("adam", "sgd", "momentum", "nesterov", "rmsprop", "adagrad")
SUPERVISED_SCHEDULES = ("constant", "cosine", "exponential")


@dataclass
class PretrainConfig:
    enabled: bool = False  # train each layer as a shallow autoencoder first, then unroll
    # --- greedy layer-wise stage (one shallow AE per encoder layer)
    layer_epochs: int = 10  # epochs per layer
    layer_lr: float | None = None  # None: optim.lr
    layer_optim: str | None = None  # None: optim.name
    layer_batch_size: int | None = None  # None: trainer.batch_size
    layer_tied: bool = False  # tied shallow AEs (Vincent et al. 2010; Rifai et al. 2011)
    decoder_init: str = "pretrained"  # pretrained: each layer's own decoder | transposed: W^T
    # --- unsupervised fine-tuning of the unrolled deep AE (optim.*, trainer.epochs)
    unsupervised: bool = True
    finetune_keep_objective: bool = False  # false: plain reconstruction (Hinton); true: keep
    #                                        the run's noise and regulariser while fine-tuning
    # --- supervised fine-tuning: encoder + softmax output layer on the labels
    supervised: bool = False
    supervised_epochs: int = 30
    supervised_lr: float = 1e-4  # peak learning rate
    supervised_optim: str = "adam"  # adam | sgd | momentum | nesterov | rmsprop | adagrad
    supervised_schedule: str = "constant"  # constant | cosine | exponential
    supervised_batch_size: int | None = None  # None: trainer.batch_size
    # --- comparisons
    baseline: bool = True  # also train the same network from a random start, same stages
    probe: bool = True  # linear probe on the codes, raw pixels and PCA codes of the same size
    probe_steps: int = 500  # L-BFGS iterations of each probe


class PretrainConfigError(ValueError):
    """A ``pretrain.*`` value, or its combination with the model, is invalid; says which."""


def _positive(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PretrainConfigError(
            f"pretrain.{key}={value!r} is not valid; it must be an integer > 0"
        )


def validate_pretrain(cfg: Any) -> None:
    """Check ``cfg.pretrain`` and how it fits ``cfg.model`` before any data is read.

    Raises:
      PretrainConfigError: naming the offending value and what would be valid.
    """
    p, m = cfg.pretrain, cfg.model
    if not p.enabled:
        return
    if m.kind not in ("mlp", "linear"):
        raise PretrainConfigError(
            f"pretrain.enabled=true needs a stack of Dense layers, but model.kind={m.kind!r}; "
            "use model=mlp (or linear), or pretrain.enabled=false"
        )
    if m.decoder_widths is not None and list(m.decoder_widths) != list(reversed(m.widths or [])):
        raise PretrainConfigError(
            f"model.decoder_widths={list(m.decoder_widths)} is not the encoder mirrored; "
            "layer-wise pretraining unrolls each layer's decoder in reverse order, so set "
            "decoder_widths=null"
        )
    for key in ("layer_epochs", "supervised_epochs", "probe_steps"):
        _positive(key, getattr(p, key))
    for key in ("layer_batch_size", "supervised_batch_size"):
        _positive(key, getattr(p, key), allow_none=True)
    if p.layer_lr is not None and not (isinstance(p.layer_lr, (int, float)) and p.layer_lr > 0):
        raise PretrainConfigError(f"pretrain.layer_lr={p.layer_lr!r} must be > 0 (or null)")
    if not (isinstance(p.supervised_lr, (int, float)) and p.supervised_lr > 0):
        raise PretrainConfigError(f"pretrain.supervised_lr={p.supervised_lr!r} must be > 0")
    if p.decoder_init not in DECODER_INITS:
        raise PretrainConfigError(
            f"pretrain.decoder_init={p.decoder_init!r} is not valid; choose one of: "
            f"{', '.join(DECODER_INITS)}"
        )
    if p.supervised_optim not in SUPERVISED_OPTIMIZERS:
        raise PretrainConfigError(
            f"pretrain.supervised_optim={p.supervised_optim!r} is not valid; choose one of: "
            f"{', '.join(SUPERVISED_OPTIMIZERS)}"
        )
    if p.supervised_schedule not in SUPERVISED_SCHEDULES:
        raise PretrainConfigError(
            f"pretrain.supervised_schedule={p.supervised_schedule!r} is not valid; choose one "
            f"of: {', '.join(SUPERVISED_SCHEDULES)}"
        )
    if p.layer_optim is not None and p.layer_optim not in SUPERVISED_OPTIMIZERS:
        raise PretrainConfigError(
            f"pretrain.layer_optim={p.layer_optim!r} is not valid; choose null or one of: "
            f"{', '.join(SUPERVISED_OPTIMIZERS)}"
        )
    if cfg.optim.warmup_epochs >= p.layer_epochs:
        raise PretrainConfigError(
            f"optim.warmup_epochs={cfg.optim.warmup_epochs} is not shorter than "
            f"pretrain.layer_epochs={p.layer_epochs}; each layer reuses the run's schedule"
        )
