"""The typed configuration schema of ae-jax and its validation.

Every Hydra config group (``model``, ``data``, ``noise``, ``reg``, ``loss``, ``optim``, ``trainer``)
has a dataclass here, registered in Hydra's ConfigStore as ``<group>/base_<group>``; the YAML files
in ``conf/<group>/`` start from it, so a misspelt key or a wrong type is refused by Hydra itself.
``validate`` then checks values and combinations before any data is read or any program compiled,
and ``validate_against_data`` checks what only the loaded dataset can tell (shapes, value range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ae_jax.pretraining.config import PretrainConfig

ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu", "linear")
MODEL_KINDS = ("mlp", "linear", "conv")
OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "linear")
DATA_SOURCES = ("digits", "tfds", "idx", "array")
SCALINGS = ("auto", "unit", "standardize", "none")
NOISE_KINDS = ("none", "gaussian", "masking", "salt_pepper")
REG_KINDS = ("none", "l1", "kl_sparse", "contractive", "k_sparse", "weight_decay")
LOSS_KINDS = ("mse", "rmse", "bce")
OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "nesterov", "rmsprop", "adagrad")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential")
PARALLEL_MODES = ("shard_map", "pmap")


class ConfigError(ValueError):
    """A configuration value is out of range or does not fit the data; the message says which."""


@dataclass
class ModelConfig:
    kind: str = "mlp"  # mlp | linear (no nonlinearity anywhere: the PCA case) | conv (images)
    latent_dim: int = 8  # code units k; > input dim is an overcomplete code (use a regulariser)
    depth: int = 2  # hidden layers between input and code in the encoder (mlp)
    widths: list[int] | None = None  # encoder hidden widths, len == depth; None: geometric taper
    decoder_widths: list[int] | None = None  # None: the encoder's widths reversed (symmetric)
    activation: str = "gelu"  # hidden units: sigmoid | tanh | relu | gelu | linear
    code_activation: str = "linear"  # the code layer; sigmoid for KL sparsity, as in Ng's notes
    output_activation: str = "auto"  # auto: sigmoid for data in [0, 1] (or loss=bce), else linear
    tied: bool = False  # decoder kernels = transposed encoder kernels (needs a symmetric decoder)
    channels: list[int] = field(default_factory=lambda: [32, 64])  # conv: stride-2 layers
    kernel_size: int = 3  # conv kernel (square)


@dataclass
class DataConfig:
    source: str = "digits"  # digits | tfds | idx | array
    name: str = "digits"  # label for reports and figures
    tfds_name: str | None = None  # source=tfds: builder name (mnist, fashion_mnist, ...)
    path: str | None = None  # idx: directory of IDX files; array: .npy / .npz / .csv file
    test_path: str | None = None  # array: optional separate test file
    label_column: int | None = None  # array, csv: column with integer labels
    manual_dir: str | None = None  # tfds: directory with the official files (offline)
    data_dir: str | None = None  # tfds: where prepared datasets live
    scaling: str = "auto"  # auto | unit | standardize | none
    test_fraction: float = 0.2  # held out when the source has no test split
    max_train: int | None = None  # keep the first N training examples (smoke runs)
    max_test: int | None = None
    split_seed: int = 0


@dataclass
class NoiseConfig:
    kind: str = "none"  # none | gaussian (sigma) | masking (fraction -> 0) | salt_pepper (fraction)
    level: float = 0.0  # sigma for gaussian, fraction in [0, 1] otherwise; 0 = plain autoencoder
    eval_level: float | None = None  # corruption used to measure denoising; None: = level
    clip: bool = False  # gaussian: clip the corrupted input to the data's range
    alpha: float = 1.0  # emphasis on corrupted elements (Vincent et al. 2010, sec. 4.2)
    beta: float = 1.0  # emphasis on uncorrupted elements (1, 1 = no emphasis)


@dataclass
class RegConfig:
    kind: str = "none"  # none | l1 | kl_sparse | contractive | k_sparse | weight_decay
    strength: float = 0.0  # lambda (l1, contractive, weight_decay) or beta (kl_sparse)
    target: float = 0.05  # kl_sparse: target mean activation rho
    estimate: str = "batch"  # kl_sparse: batch (minibatch rho_hat) | running (EMA of rho_hat)
    momentum: float = 0.99  # kl_sparse running estimate: EMA momentum
    k: int | None = None  # k_sparse: code units kept per example
    k_start: int | None = None  # k_sparse: initial k, annealed linearly to k; None: no anneal
    anneal_epochs: int = 0  # k_sparse: epochs over which k goes from k_start to k
    contractive_method: str = "auto"  # auto | closed_form (one sigmoid layer) | autodiff


@dataclass
class LossConfig:
    kind: str = "mse"  # mse | rmse | bce (with logits; data must lie in [0, 1])


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3  # peak learning rate
    schedule: str = "constant"  # constant | cosine | warmup_cosine | exponential
    warmup_epochs: int = 0
    decay_rate: float = 0.1  # exponential: lr multiplied by this over the whole run
    momentum: float = 0.9  # momentum / nesterov / rmsprop
    grad_clip: float | None = None  # global-norm clipping


@dataclass
class TrainerConfig:
    epochs: int = 200
    batch_size: int = 64  # global batch, split across devices
    seed: int = 0
    eval_every: int = 10  # epochs between held-out evaluations in the history
    log_every: int = 10  # epochs between progress lines
    devices: int | None = None  # data-parallel devices; None: all local devices
    parallel: str = "shard_map"  # shard_map | pmap (same per-device step either way)
    jacobian_examples: int = 256  # test examples used for test/jacobian_fro
    step_norms: bool = False  # l2 of grads/params/updates every step (false: params once/epoch)
    checkpoint_every: int = 50  # epochs between checkpoints (and one at the end); 0: end only
    keep_checkpoints: int = 3  # newest checkpoints kept in <run dir>/checkpoints
    resume: bool = True  # continue from the newest valid checkpoint in the run directory
    restart_if_corrupt: bool = False  # if every checkpoint is corrupt: start over (else error)
    distributed: bool | None = None  # multi-process: true, false, null = auto (TPU pod, SLURM)
    coordinator_address: str | None = None  # host:port of process 0 (null: auto-detect)
    num_processes: int | None = None
    process_id: int | None = None
    figures: bool = True
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    name: str = "autoencoder"  # label for the run


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, node in (
        ("model", ModelConfig),
        ("data", DataConfig),
        ("noise", NoiseConfig),
        ("reg", RegConfig),
        ("loss", LossConfig),
        ("optim", OptimConfig),
        ("trainer", TrainerConfig),
        ("pretrain", PretrainConfig),
    ):
        cs.store(group=group, name=f"base_{group}", node=node)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (written to every run directory as ``config.yaml``)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_config(path: str) -> Config:
    """Read a ``config.yaml`` written by a run back into a validated ``Config``."""
    from omegaconf import OmegaConf

    return validate(to_config(OmegaConf.load(path)))


def to_config(cfg: Any) -> Config:
    """A DictConfig (or Config) as the typed, plain-Python ``Config`` dataclass."""
    if isinstance(cfg, Config):
        return cfg
    from omegaconf import OmegaConf

    structured = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    return OmegaConf.to_object(structured)


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _positive_int(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}={value!r} is not valid; it must be a positive integer")


def _finite(key: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi
    if not ok:
        raise ConfigError(
            f"{key}={value!r} is not valid; it must be a finite number in [{lo}, {hi}]"
        )


def validate(cfg: Config) -> Config:
    """Check every value and combination that does not need the data; raise ConfigError."""
    m, n, r = cfg.model, cfg.noise, cfg.reg
    _choice("model.kind", m.kind, MODEL_KINDS)
    _positive_int("model.latent_dim", m.latent_dim)
    if not isinstance(m.depth, int) or m.depth < 0:
        raise ConfigError(f"model.depth={m.depth!r} is not valid; it must be an integer >= 0")
    for key in ("activation", "code_activation"):
        _choice(f"model.{key}", getattr(m, key), ACTIVATIONS)
    _choice("model.output_activation", m.output_activation, OUTPUT_ACTIVATIONS)
    if m.widths is not None:
        if len(m.widths) != m.depth:
            raise ConfigError(
                f"model.widths={list(m.widths)} has {len(m.widths)} entries but "
                f"model.depth={m.depth}; "
                "give one width per hidden layer, or widths=null for the default taper"
            )
        for i, w in enumerate(m.widths):
            _positive_int(f"model.widths[{i}]", w)
    if m.decoder_widths is not None:
        for i, w in enumerate(m.decoder_widths):
            _positive_int(f"model.decoder_widths[{i}]", w)
        if m.tied:
            raise ConfigError(
                "model.tied=true needs the decoder to mirror the encoder; "
                f"remove model.decoder_widths={list(m.decoder_widths)} or set model.tied=false"
            )
    if m.kind == "conv":
        if not m.channels:
            raise ConfigError("model.channels=[] is not valid; give at least one conv layer")
        for i, c in enumerate(m.channels):
            _positive_int(f"model.channels[{i}]", c)
        _positive_int("model.kernel_size", m.kernel_size)
        if m.tied:
            raise ConfigError("model.tied=true is only available for model.kind=mlp or linear")

    d = cfg.data
    _choice("data.source", d.source, DATA_SOURCES)
    _choice("data.scaling", d.scaling, SCALINGS)
    _finite("data.test_fraction", d.test_fraction, 0.0, 1.0)
    if not 0.0 < d.test_fraction < 1.0:
        raise ConfigError(
            f"data.test_fraction={d.test_fraction} is not valid; it must be in (0, 1)"
        )
    _positive_int("data.max_train", d.max_train, allow_none=True)
    _positive_int("data.max_test", d.max_test, allow_none=True)

    _choice("noise.kind", n.kind, NOISE_KINDS)
    for key in ("level", "eval_level"):
        value = getattr(n, key)
        if value is None:
            continue
        if n.kind in ("masking", "salt_pepper"):
            _finite(f"noise.{key}", value, 0.0, 1.0)
        else:
            _finite(f"noise.{key}", value, 0.0)
    if n.kind == "none" and n.level != 0.0:
        raise ConfigError(
            f"noise.level={n.level} with noise.kind=none has no effect; "
            "pick a corruption (noise=gaussian|masking|salt_pepper) or set noise.level=0"
        )
    _finite("noise.alpha", n.alpha, 0.0)
    _finite("noise.beta", n.beta, 0.0)
    if n.alpha == 0 and n.beta == 0:
        raise ConfigError("noise.alpha=0 and noise.beta=0 leave no reconstruction loss")

    _choice("reg.kind", r.kind, REG_KINDS)
    _finite("reg.strength", r.strength, 0.0)
    _choice("reg.estimate", r.estimate, ("batch", "running"))
    _choice("reg.contractive_method", r.contractive_method, ("auto", "closed_form", "autodiff"))
    if r.kind == "kl_sparse":
        if not (isinstance(r.target, (int, float)) and 0.0 < r.target < 1.0):
            raise ConfigError(
                f"reg.target={r.target!r} is not valid; KL sparsity needs 0 < target < 1"
            )
        _finite("reg.momentum", r.momentum, 0.0, 1.0)
        if m.code_activation != "sigmoid":
            raise ConfigError(
                f"reg=kl_sparse needs activations in (0, 1) but model.code_activation="
                f"{m.code_activation!r}; set model.code_activation=sigmoid"
            )
    if r.kind == "k_sparse":
        if r.k is None:
            raise ConfigError(
                "reg=k_sparse needs reg.k, the code units kept per example (1..latent_dim)"
            )
        _positive_int("reg.k", r.k)
        if r.k > m.latent_dim:
            raise ConfigError(
                f"reg.k={r.k} is larger than the code (model.latent_dim={m.latent_dim}); "
                f"valid: 1..{m.latent_dim}"
            )
        if r.k_start is not None:
            _positive_int("reg.k_start", r.k_start)
            if not r.k <= r.k_start <= m.latent_dim:
                raise ConfigError(
                    f"reg.k_start={r.k_start} is not valid; it must lie in "
                    f"[reg.k={r.k}, model.latent_dim={m.latent_dim}]"
                )
        if not isinstance(r.anneal_epochs, int) or r.anneal_epochs < 0:
            raise ConfigError(f"reg.anneal_epochs={r.anneal_epochs!r} must be an integer >= 0")
    if r.kind == "contractive" and r.contractive_method == "closed_form":
        if not (m.depth == 0 and m.code_activation == "sigmoid" and m.kind == "mlp"):
            raise ConfigError(
                "reg.contractive_method=closed_form needs a single sigmoid encoder layer "
                f"(model.depth=0, model.code_activation=sigmoid), got depth={m.depth}, "
                f"code_activation={m.code_activation!r}; use reg.contractive_method=autodiff"
            )

    _choice("loss.kind", cfg.loss.kind, LOSS_KINDS)
    if cfg.loss.kind == "bce" and m.output_activation == "linear":
        raise ConfigError(
            "loss=bce models the output as sigmoid(logits); model.output_activation=linear "
            "contradicts it. Use model.output_activation=auto or sigmoid, or loss=mse"
        )

    t = cfg.trainer
    for key in (
        "epochs",
        "batch_size",
        "eval_every",
        "log_every",
        "jacobian_examples",
        "keep_checkpoints",
    ):
        _positive_int(f"trainer.{key}", getattr(t, key))
    if not isinstance(t.checkpoint_every, int) or t.checkpoint_every < 0:
        raise ConfigError(
            f"trainer.checkpoint_every={t.checkpoint_every!r} is not valid; it must be an integer "
            ">= 0 (epochs between checkpoints; 0 saves only at the end)"
        )
    _positive_int("trainer.num_processes", t.num_processes, allow_none=True)
    from ae_jax.pretraining.config import PretrainConfigError, validate_pretrain

    try:
        validate_pretrain(cfg)
    except PretrainConfigError as err:
        raise ConfigError(str(err)) from None
    if t.process_id is not None:
        if not isinstance(t.process_id, int) or t.process_id < 0:
            raise ConfigError(f"trainer.process_id={t.process_id!r} must be an integer >= 0")
        if t.num_processes is not None and t.process_id >= t.num_processes:
            raise ConfigError(
                f"trainer.process_id={t.process_id} is not valid with trainer.num_processes="
                f"{t.num_processes}; valid: 0..{t.num_processes - 1}"
            )
    if t.coordinator_address is not None and ":" not in t.coordinator_address:
        raise ConfigError(
            f"trainer.coordinator_address={t.coordinator_address!r} must be host:port"
        )
    _positive_int("trainer.devices", t.devices, allow_none=True)
    _choice("trainer.parallel", t.parallel, PARALLEL_MODES)
    if not isinstance(t.seed, int):
        raise ConfigError(f"trainer.seed={t.seed!r} must be an integer")
    o = cfg.optim
    _choice("optim.name", o.name, OPTIMIZERS)
    _choice("optim.schedule", o.schedule, SCHEDULES)
    _finite("optim.lr", o.lr, 0.0)
    if o.lr <= 0:
        raise ConfigError(f"optim.lr={o.lr} is not valid; it must be > 0")
    if not isinstance(o.warmup_epochs, int) or not 0 <= o.warmup_epochs < cfg.trainer.epochs:
        raise ConfigError(
            f"optim.warmup_epochs={o.warmup_epochs!r} must be an integer in [0, trainer.epochs)"
        )
    _finite("optim.decay_rate", o.decay_rate, 0.0, 1.0)
    _finite("optim.momentum", o.momentum, 0.0, 1.0)
    if o.grad_clip is not None:
        _finite("optim.grad_clip", o.grad_clip, 0.0)

    return cfg
