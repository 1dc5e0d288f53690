"""The typed configuration schema of ae-jax and its validation.

Every Hydra config group (``model``, ``data``, ``noise``, ``loss``, ``optim``, ``trainer``,
``pretrain``) has a dataclass here, registered in Hydra's ConfigStore as ``<group>/base_<group>``;
the YAML files in ``conf/<group>/`` start from it, so a misspelt key or a wrong type is refused
by Hydra itself (and, from the command line, in one line by ``check_overrides`` first). ``reg``
is a mapping term name -> that term's config (any number of terms, each
option file of ``conf/reg/`` contributes one under its own name: ``reg=[kl_sparse,weight_decay]``);
the terms and their config dataclasses come from ``ae_jax.registry.REGULARIZERS`` and are checked
in ``to_config`` / ``validate``. ``validate`` checks values and combinations before any data is
read or any program compiled, taking every list of valid names from ``ae_jax.registry``;
``validate_against_data`` (``ae_jax.training.trainer``) checks what only the loaded dataset can
tell (shapes, value range).

This module imports nothing of ae-jax but the JAX-free ``ae_jax.registry``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ae_jax.loggers.registry import loggers_settings
from ae_jax.registry import (
    ACTIVATIONS,
    CORRUPTIONS,
    OPTIMIZERS,
    PRECISIONS,
    RECONSTRUCTION_LOSSES,
    REGULARIZERS,
    SCHEDULES,
    ConfigError,
    TermConfig,
    requested_conv_impl,
    term_config,
)

MODEL_KINDS = ("mlp", "linear", "conv")
OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "linear")
DATA_SOURCES = ("digits", "tfds", "idx", "array")
SCALINGS = ("auto", "unit", "standardize", "center", "none")
PARALLEL_MODES = ("shard_map", "pmap")
DECODER_INITS = ("pretrained", "transposed")

__all__ = ["Config", "ConfigError", "PretrainConfig", "PretrainConfigError", "validate"]


@dataclass
class ModelConfig:
    kind: str = "mlp"  # mlp | linear (no nonlinearity anywhere: the PCA case) | conv (images)
    latent_dim: int = 8  # code units k; > input dim is an overcomplete code (use a regulariser)
    depth: int = 2  # hidden layers between input and code in the encoder (mlp)
    widths: list[int] | None = None  # encoder hidden widths, len == depth; None: geometric taper
    decoder_widths: list[int] | None = None  # None: the encoder's widths reversed (symmetric)
    activation: str = "gelu"  # hidden units: registry.ACTIVATIONS (sigmoid tanh relu gelu linear)
    code_activation: str = "linear"  # the code layer; sigmoid for KL sparsity, as in Ng's notes
    output_activation: str = "auto"  # auto: sigmoid for data in [0, 1] (or loss=bce), else linear
    tied: bool = False  # decoder kernels = transposed encoder kernels (needs a symmetric decoder)
    sparse_k: int | None = None  # k-sparse code: keep the k largest units per example; None: dense
    sparse_k_start: int | None = None  # initial k, annealed linearly to sparse_k; None: no anneal
    sparse_anneal_epochs: int = 0  # epochs over which k goes from sparse_k_start to sparse_k
    # units kept when the encoder gives features (linear probe, ae_jax.features, embed.py):
    # Makhzani & Frey encode with the top alpha*k (alpha = 3); None: sparse_k, as in training
    sparse_k_features: int | None = None
    channels: list[int] = field(default_factory=lambda: [32, 64])  # conv: stride-2 layers
    kernel_size: int = 3  # conv kernel (square)


@dataclass
class DataConfig:
    source: str = "digits"  # digits | tfds | idx | array
    name: str = "digits"  # label for reports and figures
    tfds_name: str | None = None  # source=tfds: builder name (mnist, fashion_mnist, ...)
    path: str | None = None  # idx: directory of IDX files; array: .npy / .npz / .csv file
    test_path: str | None = None  # array: optional separate test file
    # array: the column of class labels (a number, or a CSV header's name; class numbers or names)
    label_column: int | str | None = None
    manual_dir: str | None = None  # tfds: directory with the official files (offline)
    data_dir: str | None = None  # tfds: where prepared datasets live
    scaling: str = "auto"  # auto | unit | standardize | center | none
    test_fraction: float = 0.2  # held out when the source has no test split
    max_train: int | None = None  # keep the first N training examples (smoke runs)
    max_test: int | None = None
    split_seed: int = 0
    # held out of the training split for model selection and early stopping (val/... metrics):
    # 0 none, a fraction in (0, 1) such as 0.1, or a whole count such as 5000; seeded, stratified
    validation: float = 0.0


@dataclass
class NoiseConfig:
    kind: str = "none"  # none | gaussian (sigma) | masking (fraction -> 0) | salt_pepper (fraction)
    level: float = 0.0  # sigma for gaussian, fraction in [0, 1] otherwise; 0 = plain autoencoder
    eval_level: float | None = None  # corruption used to measure denoising; None: = level
    clip: bool = False  # gaussian: clip the corrupted input to the data's range
    alpha: float = 1.0  # emphasis on corrupted elements (Vincent et al. 2010, sec. 4.2)
    beta: float = 1.0  # emphasis on uncorrupted elements (1, 1 = no emphasis)


@dataclass
class LossConfig:
    kind: str = "mse"  # RECONSTRUCTION_LOSSES: mse | rmse | bce (with logits; data in [0, 1])


@dataclass
class OptimConfig:
    name: str = "adam"  # registry.OPTIMIZERS: adam adamw sgd momentum nesterov rmsprop adagrad
    lr: float = 1e-3  # peak learning rate (traced: hparams["lr"])
    schedule: str = "constant"  # registry.SCHEDULES: constant cosine warmup_cosine exponential
    warmup_epochs: int = 0
    decay_rate: float = 0.1  # exponential: lr multiplied by this over the whole run
    momentum: float = 0.9  # momentum / nesterov / rmsprop
    grad_clip: float | None = None  # global-norm clipping
    weight_decay: float = 0.0  # adamw only: decoupled decay, update -= lr * sched * wd * W


@dataclass
class TrainerConfig:
    epochs: int = 200
    # at least this many optimiser steps: on a small dataset each of trainer.epochs makes
    # ceil(min_steps / (epochs x steps per pass)) passes over the data, and the log says so
    # (0: one pass per epoch)
    min_steps: int = 0
    batch_size: int = 64  # global batch, split across devices
    seed: int = 0
    eval_every: int = 10  # epochs between held-out evaluations in the history
    # stop when the validation metric (val/mse; val/error_pct in a supervised stage) has not
    # improved for `patience` evaluations, and keep the best evaluation's parameters; needs
    # data.validation > 0. trainer.epochs stays the budget (and the schedule's length)
    early_stopping: bool = False
    patience: int = 10  # evaluations (every eval_every epochs) without improvement
    log_every: int = 10  # epochs between progress lines
    devices: int | None = None  # data-parallel devices; None: all local devices
    parallel: str = "shard_map"  # shard_map | pmap (same per-device step either way)
    jacobian_examples: int = 256  # test examples used for test/jacobian_fro
    step_norms: bool = False  # l2 of grads/params/updates every step (false: params once/epoch)
    # compute dtype of the forward/backward pass: float32 | bfloat16 (registry.PRECISIONS;
    # parameters, optimiser state, losses and metrics stay float32)
    precision: str = "float32"
    # Checkpoints (and one at the end): every checkpoint_every epochs (0: the end only), or,
    # when it is null, once checkpoint_seconds of training have passed since the last.
    checkpoint_every: int | None = None
    checkpoint_seconds: float = 60.0
    keep_checkpoints: int = 3  # newest checkpoints kept in <run dir>/checkpoints
    resume: bool = True  # continue from the newest valid checkpoint in the run directory
    restart_if_corrupt: bool = False  # if every checkpoint is corrupt: start over (else error)
    distributed: bool | None = None  # multi-process: true, false, null = auto (TPU pod, SLURM)
    coordinator_address: str | None = None  # host:port of process 0 (null: auto-detect)
    num_processes: int | None = None
    process_id: int | None = None
    figures: bool = True
    progress: bool = True
    profile: bool = False  # a jax.profiler trace of the first epoch trained (after compiling)


@dataclass
class PretrainConfig:
    """The ``pretrain`` group: greedy layer-wise pretraining, unrolling and fine-tuning
    (``ae_jax.pretraining``; see docs/pretraining.md)."""

    enabled: bool = False  # train each layer as a shallow autoencoder first, then unroll
    # --- greedy layer-wise stage (one shallow AE per encoder layer)
    layer_epochs: int = 10  # epochs per layer
    layer_lr: float | None = None  # None: optim.lr
    layer_optim: str | None = None  # None: optim.name; else one of registry.OPTIMIZERS
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
    supervised_lr: float = 1e-3  # peak learning rate (Adam's usual; 1e-4 left digits at 76% error)
    supervised_optim: str = "adam"  # one of registry.OPTIMIZERS
    supervised_schedule: str = "constant"  # a registry.SCHEDULES entry without warmup
    supervised_batch_size: int | None = None  # None: trainer.batch_size
    # --- comparisons
    baseline: bool = True  # also train the same network from a random start, same stages
    probe: bool = True  # linear probe on the codes, raw pixels and PCA codes of the same size
    probe_steps: int = 500  # L-BFGS iterations of each probe
    # the probes' weight penalty; several values are chosen among on the validation split
    # (data.validation > 0), each probe its own, then refitted on training + validation
    probe_l2: list[float] = field(default_factory=lambda: [1e-4])


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    # term name -> its config (a dataclass of registry.REGULARIZERS); {}: no regulariser
    reg: dict[str, Any] = field(default_factory=dict)
    # tracker name -> its settings (a dataclass of ae_jax.loggers.registry.LOGGERS); {}: none
    logger: dict[str, Any] = field(default_factory=dict)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    name: str = "autoencoder"  # label for the run
    # the metrics.json key a job returns to Hydra's sweeper (the Optuna sweeper minimises it):
    # auto = val/mse when the run has a validation split (data.validation > 0), else test/mse
    score: str = "auto"


def score_key(cfg: Any) -> str:
    """The metrics.json key a job returns to Hydra's sweeper: ``cfg.score``, where ``auto`` is
    ``val/mse`` with a validation split (``data.validation`` > 0) and ``test/mse`` without one.
    Takes a Config or a DictConfig (a config written before ``score`` existed counts as auto)."""
    return resolve_score(getattr(cfg, "score", "auto"), getattr(cfg.data, "validation", 0))


def resolve_score(score: str | None, validation: float | None) -> str:
    """``score_key`` from the two values: ``auto`` (or None) -> val/mse when ``validation`` > 0,
    else test/mse; any other score is itself."""
    if score not in (None, "auto"):
        return str(score)
    return "val/mse" if validation else "test/mse"


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, node in (
        ("model", ModelConfig),
        ("data", DataConfig),
        ("noise", NoiseConfig),
        ("loss", LossConfig),
        ("optim", OptimConfig),
        ("trainer", TrainerConfig),
        ("pretrain", PretrainConfig),
    ):
        cs.store(group=group, name=f"base_{group}", node=node)


_YAML: dict[str, str] = {}  # repr -> YAML: OmegaConf takes ~20-80 ms, a repr microseconds


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (written to every run directory as ``config.yaml``; also a
    run's signature and a vmap group's program key, so it is asked for several times a run).

    The text is ``OmegaConf.to_yaml(OmegaConf.structured(cfg))``'s, written without building
    an OmegaConf tree: the dataclasses as plain containers (``_plain``) through OmegaConf's own
    YAML dumper. 3 ms instead of 18 for the default config, once per member of a sweep;
    tests/test_config.py checks the two texts are equal for every committed experiment."""
    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    key = repr(cfg)  # dataclasses: the repr holds every field's value
    if key not in _YAML:
        if len(_YAML) > 4096:
            _YAML.clear()
        _YAML[key] = yaml.dump(
            _plain(cfg),
            default_flow_style=False,
            allow_unicode=True,
            sort_keys=False,
            Dumper=get_omega_conf_dumper(),
        )
    return _YAML[key]


@functools.cache
def _float_fields(cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """The fields of dataclass ``cls`` annotated ``float`` (or ``float | None``), and those
    annotated a list of floats."""
    scalars, lists = set(), set()
    for name, t in typing.get_type_hints(cls).items():
        options = (
            typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
        )
        if float in options:
            scalars.add(name)
        if any(typing.get_origin(o) is list and typing.get_args(o) == (float,) for o in options):
            lists.add(name)
    return frozenset(scalars), frozenset(lists)


def _as_float(v: Any) -> Any:
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _plain(value: Any) -> Any:
    """``OmegaConf.to_container(OmegaConf.structured(value), enum_to_str=True)`` for our config
    dataclasses: dicts in field order, lists, enums by name, and an int in a float field as
    the float OmegaConf's validation makes of it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        scalars, lists = _float_fields(type(value))
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name in scalars:
                v = _as_float(v)
            elif f.name in lists and isinstance(v, (list, tuple)):
                v = [_as_float(x) for x in v]
            out[f.name] = _plain(v)
        return out
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    return value


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the checkout's Hydra configs


def compose(*overrides: str, conf_dir: str | Path | None = None) -> Config:
    """The config ``experiments/train.py`` composes from ``conf/`` with ``overrides``
    (``"model.latent_dim=16"``), validated: the command line's defaults, from Python
    (``Config()`` holds the dataclasses' own defaults, which ``conf/`` refines). Raises
    ConfigError for a bad override, in one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    conf = Path(conf_dir) if conf_dir is not None else CONF_DIR
    if not (conf / "config.yaml").is_file():
        raise ConfigError(
            f"{conf} holds no config.yaml: compose() reads the Hydra configs of an ae-jax "
            "checkout (its conf/ directory); pass conf_dir=<that directory>"
        )
    check_overrides(list(overrides), conf_dir=str(conf))
    register_configs()
    try:  # (Hydra's state before it, inside a Hydra app too, comes back after it)
        with initialize_config_dir(config_dir=str(conf.resolve()), version_base="1.3"):
            composed = hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as err:  # Hydra's own refusal: its first line
        raise ConfigError(f"{' '.join(overrides)}: {str(err).splitlines()[0]}") from None
    return validate(to_config(composed))


def load_config(path: str) -> Config:
    """Read a ``config.yaml`` written by a run back into a validated ``Config``."""
    from omegaconf import OmegaConf

    return validate(to_config(OmegaConf.load(path)))


def config_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (``yaml.safe_load(to_yaml(cfg))``, with libyaml's
    parser when PyYAML has it); a fresh copy each call."""
    import copy

    import yaml

    key = repr(cfg)
    if key not in _DICTS:
        if len(_DICTS) > 4096:
            _DICTS.clear()
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        _DICTS[key] = yaml.load(to_yaml(cfg), Loader=loader)
    return copy.deepcopy(_DICTS[key])


_DICTS: dict[str, dict] = {}


@functools.cache
def _schema() -> Any:
    """``OmegaConf.structured(Config)``, built once (10 ms each time, per member of a sweep)."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(Config)


def to_config(cfg: Any) -> Config:
    """A DictConfig (or Config) as the typed, plain-Python ``Config`` dataclass."""
    if isinstance(cfg, Config):
        return cfg
    from omegaconf import OmegaConf

    structured = OmegaConf.merge(_schema(), cfg)  # merge copies the schema; never changed
    out = OmegaConf.to_object(structured)
    out.reg = _reg_terms(out.reg)
    out.logger = loggers_settings(out.logger)
    return out


def _reg_terms(reg: Any) -> dict[str, TermConfig]:
    """``cfg.reg`` with each entry as its registered term's dataclass (ConfigError otherwise)."""
    if reg is None:
        return {}
    if not isinstance(reg, dict):
        raise ConfigError(
            f"reg={reg!r} is not valid; give a mapping term name -> settings, e.g. "
            "reg=[kl_sparse,weight_decay] on the command line"
        )
    return {str(name): term_config(str(name), value) for name, value in reg.items()}


def trial_count_refusal(key: str, value: object) -> str:
    """The one line refusing ``hydra.sweeper.<key>`` (n_trials or n_jobs) of a search."""
    what = "trials of the search" if key == "n_trials" else "trials proposed at once"
    return f"hydra.sweeper.{key}={value} is not valid; it must be a positive integer ({what})"


def check_overrides(overrides: list[str], conf_dir: str | None = None) -> None:
    """Check a command line's overrides before Hydra composes the config.

    Hydra itself would refuse a misspelt key, a value of the wrong type, an option file that
    does not exist, a misspelt ``reg.<term>.<key>`` or an unknown term with a several-line
    message; this names them in one ConfigError instead. ``reg``: ``reg=<name>``,
    ``reg=[a,b]``, ``reg.<term>.<key>=value``, with or without ``+``/``++``; the other groups:
    ``<group>.<key>=value`` (each value of a sweep) against the group's dataclass, and
    ``<group>=<option>`` against the files of ``conf_dir/<group>/`` (when ``conf_dir`` is
    given). Other arguments (and anything that does not parse) are left to Hydra.
    """
    overrides = overrides_of(overrides)
    _check_settings(overrides, conf_dir)
    _check_logger_settings(overrides)
    for arg in overrides:  # Hydra: "Value '2.5' of type 'float' could not be converted..."
        m = re.match(r"^(?:\+\+|\+)?hydra\.sweeper\.(n_trials|n_jobs)=(.*)$", arg)
        if m and not re.fullmatch(r"\s*0*[1-9]\d*\s*", m.group(2)):
            raise ConfigError(trial_count_refusal(m.group(1), m.group(2).strip()))

    selected: set[str] | None = None  # the terms chosen on this command line, if it chooses
    settings: list[tuple[str, str, str]] = []  # (argument, term, prefix) of reg.<term>.<key>=
    for arg in overrides:
        m = re.match(r"^(\+\+|\+|~)?reg(?:@[^=]*)?(\.[^=]*)?=(.*)$", arg)
        if m is None:
            continue
        dotted, value = m.group(2), m.group(3).strip()
        if not dotted:  # reg=name or reg=[a,b]: choices of the reg group
            if "(" in value or "$" in value:  # a sweep function (glob, choice...): Hydra's
                return  # the terms are not known before Hydra expands the sweep
            names = value.strip("[]")
            for name in (n.strip() for n in names.split(",")):
                if name and name != "none" and name not in REGULARIZERS:
                    raise ConfigError(
                        f"reg={value} names {name!r}, which is not a registered regulariser "
                        f"term; registered: {', '.join(REGULARIZERS.names())} (or none)"
                    )
            selected = (selected or set()) | {n.strip() for n in names.split(",") if n.strip()}
            continue
        parts = dotted[1:].split(".")
        term_config(parts[0], {parts[1]: None} if len(parts) > 1 else {})
        settings.append((arg, parts[0], m.group(1) or ""))
    # A setting of a term that is not selected: Hydra would refuse it in several lines. Only
    # decidable when this command line is the only source of terms (no experiment or sweep
    # file, which may select some).
    from_files = any(re.match(r"^\+{0,2}(experiment|sweep)(@|=)", a) for a in overrides)
    if from_files:
        return
    for arg, term, prefix in settings:
        if prefix or (selected is not None and term in selected):
            continue
        raise ConfigError(
            f"{arg} sets term {term!r}, which this run does not select; select it with "
            f"reg={term} (or reg=[<terms>,{term}] for several)"
        )


def _check_logger_settings(overrides: list[str]) -> None:
    """``logger.<name>.<setting>=value``: a registered logger, one of its settings, and (as
    Hydra would refuse it in several lines) a logger this run selects: the default one
    (tensorboard) or those of ``logger=...``; undecidable where an experiment or sweep file
    may select some, and not asked of ``+logger...``, which adds the logger."""
    from ae_jax.loggers.registry import LOGGERS, logger_settings
    from ae_jax.registry import entry_settings

    selected: set[str] | None = {"tensorboard"}
    settings: list[tuple[str, str]] = []
    for arg in overrides:
        if re.match(r"^\+{0,2}(experiment|sweep)(@|=)", arg):
            selected = None
        m = re.match(r"^(\+\+|\+|~)?logger(\.[^=]*)?=(.*)$", arg)
        if m is None:
            continue
        if not m.group(2):  # logger=name or logger=[a,b]: the choice
            value = m.group(3).strip()
            if "(" in value or "$" in value or m.group(1):  # a sweep function, or added to
                selected = None
            elif selected is not None:
                selected = {n.strip() for n in value.strip("[]").split(",")} - {"none", ""}
            continue
        parts = m.group(2)[1:].split(".")
        if m.group(1) == "~":
            continue
        logger_settings(parts[0], {})  # a registered name
        if len(parts) > 1:  # one of its settings (its value is checked once composed)
            entry_settings(LOGGERS, parts[0], {parts[1]: None}, "logger", "logger")
        if not m.group(1):
            settings.append((arg, parts[0]))
    for arg, name in settings:
        if selected is not None and name not in selected:
            chosen = ",".join(sorted(selected)) or "none"
            raise ConfigError(
                f"{arg} sets logger {name!r}, which this run does not select (logger={chosen}); "
                f"select it with 'logger=[{','.join(sorted(selected | {name}))}]'"
            )


# The config groups whose keys are a dataclass's fields (``reg`` and ``logger`` are mappings
# of registered names, checked by their registries).
_GROUP_SCHEMAS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Config)
    if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)
}


_TOP_LEVEL = {f.name for f in dataclasses.fields(Config)}  # groups and top-level settings


def _nearest_setting(name: str) -> str:
    """``did you mean <group>.<name>?`` for a setting given without its group (``lr``:
    ``optim.lr``), or the closest dotted setting, or the top-level names."""
    import difflib

    dotted = [
        f"{g}.{f.name}" for g, schema in _GROUP_SCHEMAS.items() for f in dataclasses.fields(schema)
    ]
    exact = [d for d in dotted if d.rpartition(".")[2] == name]
    near = exact or difflib.get_close_matches(name, [*_TOP_LEVEL, *dotted], n=1)
    if near:
        return f"did you mean {' or '.join(near)}?"
    return f"the settings are {', '.join(sorted(_TOP_LEVEL))} and the keys under them"


def _describe_type(t: Any) -> str:
    """What a value of annotation ``t`` must be, in words: ``a whole number``, ``a list of
    numbers such as [1, 2] or null``..."""
    options = (
        typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
    )
    words = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}
    parts = []
    for o in options:
        if o is type(None):
            continue
        if typing.get_origin(o) is list:
            (item,) = typing.get_args(o) or (Any,)
            parts.append(f"a list of {words.get(item, 'values').replace('a ', '', 1)}s, e.g. [1,2]")
        else:
            parts.append(words.get(o, getattr(o, "__name__", str(o))))
    if type(None) in options:
        parts.append("null")
    return " or ".join(parts)


# Hydra's command-line flags that take the next argument as their value (or ``flag=value``)
CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")
VALUE_FLAGS = (*CONFIG_FLAGS, "--cfg", "-c", "--package", "-p", "--shell-completion", "-sc")
VALUE_FLAGS += ("--experimental-rerun",)
# ``--info`` takes its value only when the next argument is one of these
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
# flags with which Hydra shows something and runs no job
SHOW_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--version")
SHOW_FLAGS += ("--shell-completion", "-sc")


def overrides_of(argv: list[str]) -> list[str]:
    """A command line less the values of Hydra's flags (``--cfg job``, ``-p model``,
    ``--info plugins``), which are not overrides; the config folder flags (``-cd <dir>``)
    keep theirs, which the checks read."""
    kept, args = [], iter(argv)
    for arg in args:
        flag = arg.partition("=")[0]
        if flag in CONFIG_FLAGS:
            kept += [arg] if "=" in arg else [arg, next(args, "")]
        elif flag in VALUE_FLAGS:
            if "=" not in arg:
                next(args, None)
        elif arg in ("--info", "-i"):
            kept.append(arg)
            rest = list(args)
            args = iter(rest[1:] if rest[:1] and rest[0] in INFO_CHOICES else rest)
        else:
            kept.append(arg)
    return kept


def _conf_dirs(overrides: list[str], conf_dir: str | None) -> list[str] | None:
    """The folders Hydra looks in for option files: ``conf_dir``, each ``--config-dir`` /
    ``-cd``, and each ``file://`` entry of ``hydra.searchpath=[...]``. None where that is not
    known before Hydra runs (no ``conf_dir``, another primary config path, a ``pkg://``
    search path): then option names are left to Hydra."""
    if conf_dir is None:
        return None
    dirs, args = [conf_dir], iter(overrides)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in CONFIG_FLAGS:
            value = value if eq else next(args, "")
        if flag in ("--config-dir", "-cd"):
            dirs.append(value)
        elif flag in ("--config-path", "-cp"):
            return None
        elif flag.lstrip("+") == "hydra.searchpath":
            for entry in (e.strip(" '\"") for e in value.strip("[]").split(",")):
                if entry and not entry.startswith("file://"):
                    return None
                if entry:
                    dirs.append(entry.removeprefix("file://"))
    return dirs


def _option_names(conf_dirs: list[str], group: str) -> list[str] | None:
    """The option files of ``<dir>/<group>/`` over ``conf_dirs`` (without ``.yaml``); None:
    no folder holds the group."""
    from pathlib import Path

    folders = [Path(d) / group for d in conf_dirs if (Path(d) / group).is_dir()]
    if not folders:
        return None
    stored = [f"base_{group}"] if group in _GROUP_SCHEMAS else []  # register_configs()'s
    return sorted({p.stem for f in folders for p in f.glob("*.yaml")} | set(stored))


def _shown(names: list[str]) -> str:
    """Option names for a message, without the schemas ``register_configs`` stores as
    ``base_<group>`` (valid, but what every option file starts from, not a choice)."""
    return ", ".join(n for n in names if not n.startswith("base_"))


def _hydra_options(conf_dirs: list[str], group: str) -> list[str] | None:
    """The options Hydra knows for one of its own groups (``hydra/launcher``: its plugins'
    and the files of ``conf/hydra/launcher/``); None where Hydra cannot be asked."""
    from pathlib import Path

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return None  # inside another Hydra context: left to Hydra
    try:
        with initialize_config_dir(
            config_dir=str(Path(conf_dirs[0]).resolve()), version_base="1.3"
        ):
            names = GlobalHydra.instance().config_loader().get_group_options(group)
    except Exception:  # noqa: BLE001 - a folder Hydra cannot read: its own message says why
        return None
    return sorted(set(names) | set(_option_names(conf_dirs[1:], group) or []))


def _in_defaults(conf_dir: str, config_name: str, group: str) -> bool | None:
    """Whether the primary config's defaults list names ``group`` (so ``group=x`` overrides
    it; otherwise Hydra wants ``+group=x``); None where the file cannot be read."""
    from pathlib import Path

    import yaml

    try:
        defaults = (yaml.safe_load(Path(conf_dir, f"{config_name}.yaml").read_text()) or {}).get(
            "defaults", []
        )
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    heads = [
        str(next(iter(d))).removeprefix("override ").strip() if isinstance(d, dict) else str(d)
        for d in defaults or []
    ]
    return group in heads


def _config_name(overrides: list[str]) -> str:
    """The primary config's name: ``--config-name`` / ``-cn`` if given, else ``config``."""
    args = iter(overrides)
    name = "config"
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in ("--config-name", "-cn"):
            name = value if eq else next(args, name)
    return name.removesuffix(".yaml")


def _check_option(arg: str, group: str, value: str, names: list[str] | None) -> None:
    """``<group>=<option>`` of one of Hydra's own groups (``hydra/launcher=vmap``) against
    ``names``, the options Hydra knows (None: not known, left to Hydra)."""
    import difflib

    if names is None or "(" in value or "${" in value:
        return
    for name in (n.strip() for n in value.strip("[]").split(",")):
        if name and name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {group}={near[0]}?)" if near else ""
            raise ConfigError(
                f"{arg}: {group} has no option {name!r}{hint}; choose one of: {_shown(names)}"
            )


def _check_hydra_key(arg: str, head: str) -> bool:
    """``hydra.<key>=value`` against Hydra's own schema (``HydraConf``), as far down as its
    fields are dataclasses (``hydra.run.dir``, ``hydra.job.chdir``). True where the key goes
    below them (the launcher's and sweeper's keys depend on the plugin chosen,
    ``hydra.job.env_set`` is a mapping): ``_check_composed_keys`` looks there."""
    from hydra.conf import HydraConf

    schema: Any = HydraConf
    path = ["hydra"]
    for part in head.split(".")[1:]:
        if not dataclasses.is_dataclass(schema):
            return True
        fields = [f.name for f in dataclasses.fields(schema)]
        if part not in fields:
            _unknown_key(arg, ".".join(path), part, fields)
        schema = typing.get_type_hints(schema)[part]
        path.append(part)
    return False


def _unknown_key(arg: str, where: str, name: str, keys: list[str], what: str = "") -> None:
    import difflib

    near = difflib.get_close_matches(name, keys, n=1)
    raise ConfigError(
        f"{arg}: {where}{what} has no setting {name!r}; "
        + (f"did you mean {where}.{near[0]}?" if near else f"its settings: {', '.join(keys)}")
    )


def _check_composed_keys(args: list[tuple[str, str]], overrides: list[str], conf_dir: str) -> None:
    """``hydra.<...>.<key>=value`` below Hydra's schema against the Hydra config this command
    line composes (from its group choices alone, ~0.2 s): a launcher's or sweeper's keys are
    those of the plugin chosen; a key of a mapping such as ``hydra.job.env_set`` is added
    with a ``+``."""
    import difflib
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    choices = [
        a for a in overrides if re.match(r"^\+{0,2}(hydra/[^=.@]+|experiment|sweep)=[^,(]*$", a)
    ]
    if GlobalHydra.instance().is_initialized():
        return
    register_configs()  # the config's defaults start from the stored schema
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(_config_name(overrides), overrides=choices, return_hydra_config=True)
    except Exception:  # noqa: BLE001 - a choice Hydra cannot compose: its own message says
        return
    for arg, head in args:
        parts = head.split(".")
        plugin = cfg.hydra.runtime.choices.get(f"hydra/{parts[1]}")
        chosen = f" (hydra/{parts[1]}={plugin})" if plugin else ""
        for i in range(2, len(parts)):
            where, node = ".".join(parts[:i]), OmegaConf.select(cfg, ".".join(parts[:i]))
            if node is None and parts[1:i] == ["sweeper", "params"]:
                # Hydra: "AssertionError: Unexpected type for root: NoneType"
                raise ConfigError(
                    f"{arg}: {where} is empty under this sweeper{chosen}; a sweep's values go on "
                    f"the command line as the key itself, with --multirun: "
                    f"{'.'.join(parts[i:])}=a,b"
                )
            if node is None:
                raise ConfigError(f"{arg}: {where} is not set{chosen}, so it has no keys to set")
            if not OmegaConf.is_dict(node):
                break
            if parts[i] in node:
                continue
            if parts[1] in ("launcher", "sweeper"):
                _unknown_key(arg, where, parts[i], list(node), chosen if i == 2 else "")
            near = difflib.get_close_matches(parts[i], [str(k) for k in node], n=1)
            raise ConfigError(  # a mapping (env_set, job_logging): Hydra adds keys with +
                f"{arg}: {where} has no key {parts[i]!r}; "
                + (f"did you mean {where}.{near[0]}? " if near else "")
                + f"(a new key is added with a +: +{arg})"
            )


def _check_grammar(parser: Any, arg: str) -> None:
    """An override Hydra's grammar cannot read, in one line: Hydra said it in several, with
    a caret and a link. A value holding characters the grammar gives a meaning (a path such as
    ``~/x.csv``, ``data (1).csv`` or ``x[1].csv``) is read once quoted for Hydra as well as
    for the shell."""
    from hydra.errors import OverrideParseException

    try:
        parser.parse_overrides([arg])
    except OverrideParseException as err:
        key, _, value = arg.partition("=")
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = lines[0].removeprefix("LexerNoViableAltException: ") if lines else ""
        if value[:1] in "[{" or re.match(r"^\w+\(", value):  # a list, a dict, a sweep
            raise ConfigError(
                f"{arg} cannot be read by Hydra ({reason}): check its brackets, commas and quotes"
            ) from None
        raise ConfigError(
            f"{arg} cannot be read by Hydra: its value holds characters that Hydra's "
            "overrides give a meaning (~ ( ) [ ] { } , = quotes or spaces); quote it for Hydra "
            f"inside the shell's quotes: '{key}=\"{value}\"'"
        ) from None


def _check_settings(overrides: list[str], conf_dir: str | None) -> None:
    """``check_overrides`` for the dataclass groups' keys and values and the option files."""
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType, ValueType
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    conf_dirs = _conf_dirs(overrides, conf_dir)
    multirun = any(
        a in ("-m", "--multirun") or a.lower() == "hydra.mode=multirun" for a in overrides
    )
    hydra_keys: list[tuple[str, str]] = []  # hydra.<key>= below Hydra's schema
    args = iter(overrides)
    for arg in args:
        if arg in CONFIG_FLAGS:
            next(args, None)  # the flag's value, not an override
        if arg.startswith("-"):
            continue
        _check_grammar(parser, arg)
        head = arg.partition("=")[0].lstrip("+~")
        group, _, key = head.partition(".")
        searched = head.removeprefix("hydra.sweeper.params.")
        value = arg.partition("=")[2].strip()
        sweep = re.search(r"\b(interval|range|choice)\(", value) and value[:1] not in "'\""
        if searched != head and ("." in searched or sweep):
            # Hydra: "Sweeping over Hydra's configuration is not supported", or, quoted,
            # "Could not override ... Key 'optim' is not in struct" (params' keys hold dots)
            raise ConfigError(
                f"{arg}: a searched range is given on the command line as the key itself, "
                f"in shell quotes: '{searched}={value.strip(chr(39) + chr(34))}'; "
                "hydra.sweeper.params holds the ranges of a sweep file"
            )
        if group == "logger" and not key and conf_dirs is not None and "(" not in value:
            # logger=<name> or logger=[a,b]: each name an option file of conf/logger/
            names = _option_names(conf_dirs, "logger") or []
            for name in (n.strip() for n in value.strip("[]").split(",")):
                if name and "${" not in name and name not in names:
                    near = difflib.get_close_matches(name, names, n=1)
                    hint = f" (did you mean {near[0]}?)" if near else ""
                    raise ConfigError(
                        f"logger={value} names {name!r}, which has no file "
                        f"conf/logger/{name}.yaml{hint}; choose among: {', '.join(names)}"
                    )
        if group == "hydra" and key and arg[:1] not in "+~" and _check_hydra_key(arg, head):
            hydra_keys.append((arg, head))
        if "/" in group and "@" not in group and not key and conf_dirs is not None:
            _check_option(arg, group, value, _hydra_options(conf_dirs, group))
        if "@" in group or "/" in group or group == "hydra" or group in ("reg", "logger"):
            continue  # Hydra's own groups, packages, and the registries' mappings
        if key and group not in _GROUP_SCHEMAS:
            continue
        unknown = group not in _TOP_LEVEL and group not in ("experiment", "sweep")
        if (
            not key
            and unknown
            and conf_dirs is not None
            and _option_names(conf_dirs, group) is None
        ):
            # +lr=0.1: Hydra adds a key nothing reads, and the run trains at optim.lr
            raise ConfigError(f"{head} is not a setting; {_nearest_setting(group)}")
        if not key and (conf_dirs is None or _option_names(conf_dirs, group) is None):
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except Exception:  # noqa: BLE001 - a syntax error: Hydra's own message says where
            continue
        if override.type == OverrideType.DEL or override.value_type == ValueType.INTERVAL_SWEEP:
            continue
        if override.is_sweep_override() and not multirun:
            raise ConfigError(
                f"{arg} gives several values; add --multirun to run one job for each (a string "
                "that holds commas is quoted: key='a,b')"
            )
        values = (
            list(override.sweep_iterator()) if override.is_discrete_sweep() else [override.value()]
        )
        raw = arg.partition("=")[2]  # as typed, where the value is not one item of a sweep
        if not key:  # <group>=<option>: an option file of conf/<group>/
            names = _option_names(conf_dirs, group) or []  # type: ignore[arg-type]
            plus = "+" if group in ("experiment", "sweep") else ""
            for value in values:
                if isinstance(value, str) and "${" not in value and value not in names:
                    near = difflib.get_close_matches(value, names, n=1)
                    hint = f" (did you mean {plus}{group}={near[0]}?)" if near else ""
                    where = " or ".join(f"{d}/{group}/{value}.yaml" for d in conf_dirs[1:])
                    raise ConfigError(
                        f"{group}={value} names no file conf/{group}/{value}.yaml"
                        f"{' or ' + where if where else ''}{hint}; "
                        f"choose one of: {_shown(names)}"
                    )
            in_defaults = _in_defaults(conf_dirs[0], _config_name(overrides), group)  # type: ignore[index]
            if plus and not arg.startswith("+") and in_defaults is False:
                # Hydra: "Could not override 'experiment'. No match in the defaults list."
                raise ConfigError(
                    f"{arg}: {group} files are added to the config, not chosen in place of "
                    f"a default; write it with a +: +{arg}"
                )
            continue
        schema = _GROUP_SCHEMAS[group]
        fields = {f.name: f for f in dataclasses.fields(schema)}
        name = key.partition(".")[0]
        if name not in fields:  # with +/++ too: Hydra would add it, and nothing would read it
            near = difflib.get_close_matches(name, list(fields), n=1)
            raise ConfigError(
                f"{head} is not a setting of {group}; did you mean {group}.{near[0]}?"
                if near
                else f"{head} is not a setting of {group}; its settings: {', '.join(fields)}"
            )
        if name != key:
            continue  # an element of a list setting: left to Hydra
        node = OmegaConf.structured(schema)
        for value in values:
            if isinstance(value, str) and "${" in value:
                continue  # an interpolation: resolved after composition
            hint = typing.get_type_hints(schema)[name]
            flag = hint is bool or (
                typing.get_args(hint) and set(typing.get_args(hint)) <= {bool, type(None)}
            )
            try:
                if flag and isinstance(value, (int, float)) and not isinstance(value, bool):
                    raise OmegaConfBaseException  # OmegaConf reads model.tied=2 as true
                node[name] = value
            except OmegaConfBaseException:
                raise ConfigError(
                    f"{group}.{name}={value if override.is_sweep_override() else raw} is not "
                    f"valid; it must be {_describe_type(hint)}"
                ) from None
    if hydra_keys and conf_dirs is not None:
        _check_composed_keys(hydra_keys, overrides, conf_dirs[0])


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _positive_int(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        null = " or null" if allow_none else ""
        raise ConfigError(f"{key}={value!r} is not valid; it must be a positive integer{null}")


def _finite(
    key: str, value: Any, lo: float = -math.inf, hi: float = math.inf, above: bool = False
) -> None:
    """A finite number in [lo, hi] (in (lo, hi] with ``above``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo < value if above else lo <= value) and value <= hi
    if not ok:
        low = f"{'>' if above else '>='} {lo}"
        where = f"in {'(' if above else '['}{lo}, {hi}]" if math.isfinite(hi) else low
        raise ConfigError(f"{key}={value!r} is not valid; it must be a finite number {where}")


def validate(cfg: Config) -> Config:
    """Check every value and combination that does not need the data; raise ConfigError."""
    m, n = cfg.model, cfg.noise
    cfg.reg = _reg_terms(cfg.reg)
    cfg.logger = loggers_settings(cfg.logger)
    _choice("model.kind", m.kind, MODEL_KINDS)
    _positive_int("model.latent_dim", m.latent_dim)
    if not isinstance(m.depth, int) or m.depth < 0:
        raise ConfigError(f"model.depth={m.depth!r} is not valid; it must be an integer >= 0")
    for key in ("activation", "code_activation"):
        ACTIVATIONS.check(f"model.{key}", getattr(m, key))
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
        requested_conv_impl()  # $AE_JAX_CONV_IMPL, refused before the data is read
        ignored = [  # the MLP's layer settings: a conv model's layers are its channels
            f"model.{key}={value}"
            for key, value, default in (
                ("depth", m.depth, ModelConfig.depth),
                ("widths", m.widths, None),
                ("decoder_widths", m.decoder_widths, None),
            )
            if value != default
        ]
        if ignored:
            raise ConfigError(
                f"{', '.join(ignored)} has no effect with model.kind=conv, whose layers are "
                f"model.channels={list(m.channels)} (and model.kernel_size); set those, or "
                "leave the MLP's layer settings at their defaults"
            )
        if not m.channels:
            raise ConfigError("model.channels=[] is not valid; give at least one conv layer")
        for i, c in enumerate(m.channels):
            _positive_int(f"model.channels[{i}]", c)
        _positive_int("model.kernel_size", m.kernel_size)
        if m.tied:
            raise ConfigError("model.tied=true is only available for model.kind=mlp or linear")
    _validate_sparse_code(m)

    d = cfg.data
    _choice("data.source", d.source, DATA_SOURCES)
    _choice("data.scaling", d.scaling, SCALINGS)
    _finite("data.test_fraction", d.test_fraction, 0.0, 1.0)
    if not 0.0 < d.test_fraction < 1.0:
        raise ConfigError(
            f"data.test_fraction={d.test_fraction} is not valid; it must be in (0, 1)"
        )
    _finite("data.validation", d.validation, 0.0)
    if d.validation >= 1 and d.validation != int(d.validation):
        raise ConfigError(
            f"data.validation={d.validation} is not valid; give 0 (none), a fraction in (0, 1) "
            "or a whole count of training examples such as 5000"
        )
    _positive_int("data.max_train", d.max_train, allow_none=True)
    _positive_int("data.max_test", d.max_test, allow_none=True)

    CORRUPTIONS.check("noise.kind", n.kind)
    for key in ("level", "eval_level"):
        value = getattr(n, key)
        if value is None:
            continue
        if CORRUPTIONS.entry(n.kind).info.get("probability"):
            _finite(f"noise.{key}", value, 0.0, 1.0)
        else:
            _finite(f"noise.{key}", value, 0.0)
    if n.kind == "none" and n.level != 0.0:
        raise ConfigError(
            f"noise.level={n.level} with noise.kind=none has no effect; "
            "pick a corruption (noise=gaussian|masking|salt_pepper) or set noise.level=0"
        )
    if n.kind == "none" and n.eval_level:  # no test/denoise_mse came of it, without a word
        raise ConfigError(
            f"noise.eval_level={n.eval_level} with noise.kind=none measures nothing; pick the "
            "corruption to measure denoising under (noise=gaussian|masking|salt_pepper with "
            "noise.level=0 to train on clean inputs) or leave noise.eval_level unset"
        )
    _finite("noise.alpha", n.alpha, 0.0)
    _finite("noise.beta", n.beta, 0.0)
    if n.alpha == 0 and n.beta == 0:
        raise ConfigError("noise.alpha=0 and noise.beta=0 leave no reconstruction loss")
    emphasis = n.alpha != 1.0 or n.beta != 1.0
    if emphasis and n.kind != "none" and not CORRUPTIONS.entry(n.kind).info.get("probability"):
        raise ConfigError(  # every element counts as corrupted: alpha only scaled the loss
            f"noise.alpha={n.alpha} / noise.beta={n.beta} weigh the corrupted inputs against "
            f"the others, but noise={n.kind} corrupts every input; emphasis needs a "
            "corruption that leaves some untouched (noise=masking or salt_pepper)"
        )

    for name, term in cfg.reg.items():
        term.check(cfg, f"reg.{name}")

    RECONSTRUCTION_LOSSES.check("loss.kind", cfg.loss.kind)
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
        "patience",
    ):
        _positive_int(f"trainer.{key}", getattr(t, key))
    if not isinstance(t.min_steps, int) or isinstance(t.min_steps, bool) or t.min_steps < 0:
        raise ConfigError(
            f"trainer.min_steps={t.min_steps!r} is not valid; it must be an integer >= 0 "
            "(0: train exactly trainer.epochs)"
        )
    if t.checkpoint_every is not None and (
        not isinstance(t.checkpoint_every, int)
        or isinstance(t.checkpoint_every, bool)
        or t.checkpoint_every < 0
    ):
        raise ConfigError(
            f"trainer.checkpoint_every={t.checkpoint_every!r} is not valid; it must be an integer "
            ">= 0 (epochs between checkpoints; 0 saves only at the end) or null (every "
            "trainer.checkpoint_seconds of training)"
        )
    seconds = t.checkpoint_seconds
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ConfigError(
            f"trainer.checkpoint_seconds={seconds!r} is not valid; it must be a number of "
            "seconds > 0 (training between checkpoints when trainer.checkpoint_every is null)"
        )
    if not isinstance(t.early_stopping, bool):
        raise ConfigError(f"trainer.early_stopping={t.early_stopping!r} must be true or false")
    if t.early_stopping and not d.validation:
        raise ConfigError(
            "trainer.early_stopping=true needs a validation split to stop on (the test split "
            "is never used to choose); set data.validation=0.1 (a fraction of the training "
            "split) or a count such as data.validation=5000"
        )
    _positive_int("trainer.num_processes", t.num_processes, allow_none=True)
    validate_pretrain(cfg)
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
    PRECISIONS.check("trainer.precision", t.precision)
    if not isinstance(t.seed, int) or isinstance(t.seed, bool) or not -(2**31) <= t.seed < 2**31:
        # the seed is a 32-bit integer inside the programs (ae_jax.training.state)
        raise ConfigError(
            f"trainer.seed={t.seed!r} is not valid; it must be an integer in [-2**31, 2**31)"
        )
    validate_score(cfg)
    o = cfg.optim
    OPTIMIZERS.check("optim.name", o.name)
    SCHEDULES.check("optim.schedule", o.schedule)
    _finite("optim.lr", o.lr, 0.0, above=True)
    if not isinstance(o.warmup_epochs, int) or not 0 <= o.warmup_epochs < cfg.trainer.epochs:
        raise ConfigError(
            f"optim.warmup_epochs={o.warmup_epochs!r} must be an integer in [0, trainer.epochs)"
        )
    _finite("optim.decay_rate", o.decay_rate, 0.0, 1.0)
    _finite("optim.momentum", o.momentum, 0.0, 1.0)
    clip = o.grad_clip  # a norm of 0 clips every update to nothing: no training at all
    if clip is not None and not (
        isinstance(clip, (int, float)) and not isinstance(clip, bool) and 0 < clip < math.inf
    ):
        raise ConfigError(
            f"optim.grad_clip={clip!r} is not valid; it must be a finite number > 0 (the "
            "largest global gradient norm kept), or null for no clipping"
        )
    _finite("optim.weight_decay", o.weight_decay, 0.0)
    decoupled = OPTIMIZERS.entry(o.name).info.get("weight_decay", False)
    if decoupled and o.weight_decay <= 0:
        raise ConfigError(
            f"optim.name={o.name} needs optim.weight_decay > 0 (decoupled weight decay; "
            f"optim={o.name} sets 1e-4); with no decay use optim.name=adam"
        )
    if not decoupled and o.weight_decay != 0:
        names = [k for k in OPTIMIZERS if OPTIMIZERS.entry(k).info.get("weight_decay")]
        raise ConfigError(
            f"optim.weight_decay={o.weight_decay} has no effect with optim.name={o.name}; "
            f"it is for {', '.join(names)}. For an L2 penalty in the loss use reg=weight_decay"
        )

    return cfg


# The last part of every metrics.json key a run writes (``test/mse``,
# ``supervised/val/error_pct``), beside ``train/loss/<term>`` for each registered term:
# ``score`` is checked against them before training (a misspelt one was found only once the
# first trial had trained). tests/test_cli.py checks that runs of every kind write no other.
METRIC_NAMES = (
    "bce", "best_epoch", "code_dead_units", "code_nonzero_max", "code_nonzero_per_example",
    "compile_seconds", "denoise_mse", "epoch_traces", "epochs_trained", "error_pct",
    "jacobian_fro", "l2", "loss", "mean_code_activation", "mse", "mse_over_pca", "pca_mse",
    "pca_sse_per_example", "rec", "rmse", "samples_per_second", "sse_per_example",
    "subspace_angle_max_deg", "total_seconds", "train_error_pct", "train_seconds",
)  # fmt: skip


def validate_score(cfg: Config) -> None:
    """``score``: auto or a metrics.json key such as val/mse, ending in a metric some run
    writes (``METRIC_NAMES``); a val/ key needs a validation split. (Whether this run's
    metrics hold the key is known after training: cli.job_score.)"""
    import difflib

    s = cfg.score
    if not isinstance(s, str) or not (s == "auto" or re.fullmatch(r"[\w.-]+(/[\w.-]+)+", s)):
        raise ConfigError(
            f"score={s!r} is not valid; give auto or a key of the run's metrics.json such as "
            "val/mse (needs data.validation) or test/mse"
        )
    head, _, name = score_key(cfg).rpartition("/")
    names = [*METRIC_NAMES, *REGULARIZERS.names()]
    if name not in names:
        near = difflib.get_close_matches(name, names, n=1)
        raise ConfigError(
            f"score={s}: no run writes a metric named {name!r}"
            + (f" (did you mean {head}/{near[0]}?)" if near else "")
            + "; a score is a key of the run's metrics.json, such as val/mse, test/mse or "
            "supervised/val/error_pct"
        )
    key = score_key(cfg)
    if "val" in key.split("/")[:-1] and not cfg.data.validation:
        raise ConfigError(
            f"score={s} needs a validation split to score on; set data.validation=0.15 (a "
            "fraction of the training split) or a count such as data.validation=5000"
        )
    missing = _unwritten_metric(cfg, key)
    if missing:
        raise ConfigError(f"score={s}: this run will not write {key}: {missing}")


_PIPELINE_STAGES = ("supervised", "baseline", "probe", "pretrain", "unrolled", "finetune")


def _unwritten_metric(cfg: Config, key: str) -> str | None:
    """Why a run of ``cfg`` will not write the metrics.json key ``key`` (what to set), where
    its settings say so before it trains; None where it may. A search scored on such a key
    trained its first trial and then ended, the trial marked completed."""
    *head, name = key.split("/")
    stage, p = head[0], cfg.pretrain
    if stage in _PIPELINE_STAGES and not p.enabled:
        return (
            f"the {stage}/ metrics come from layer-wise pretraining, which this run does not "
            "use (+pretrain=layerwise)"
        )
    if (stage == "supervised" or head[:2] == ["baseline", "supervised"]) and not p.supervised:
        return "the supervised stage writes it; set pretrain.supervised=true"
    if stage == "baseline" and not p.baseline:
        return (
            "the baseline (the network trained from a random start) writes it; set "
            "pretrain.baseline=true"
        )
    if stage == "probe" and not p.probe:
        return "the linear probe writes it; set pretrain.probe=true"
    l2 = p.probe_l2
    if stage == "probe" and "val" in head and not (isinstance(l2, (list, tuple)) and len(l2) > 1):
        return (
            "the probe scores the validation split when it chooses its l2 among several: "
            "set pretrain.probe_l2=[1e-4,1e-3,1e-2]"
        )
    if name in ("error_pct", "train_error_pct", "l2") and stage not in (
        "supervised",
        "baseline",
        "probe",
    ):
        return (
            f"{name} is written by the supervised stage and the probes only "
            "(supervised/val/error_pct, probe/val/error_pct)"
        )
    if name in ("jacobian_fro", "subspace_angle_max_deg") and head[-1] != "test":
        return f"{name} is measured on the test split only"
    if name == "subspace_angle_max_deg" and cfg.model.kind != "linear":
        return "the angle to PCA's subspace is measured for model=linear only"
    return None


def _validate_sparse_code(m: ModelConfig) -> None:
    """The k-sparse code layer (Makhzani & Frey 2013): model.sparse_k, sparse_k_start, ..."""
    if m.sparse_k is None:
        for key in ("sparse_k_start", "sparse_k_features"):
            if getattr(m, key) is not None:
                raise ConfigError(
                    f"model.{key}={getattr(m, key)} needs model.sparse_k (a k-sparse code)"
                )
        if m.sparse_anneal_epochs:
            raise ConfigError(
                f"model.sparse_anneal_epochs={m.sparse_anneal_epochs} needs model.sparse_k and "
                "model.sparse_k_start (k annealed from the start to sparse_k)"
            )
        return
    _positive_int("model.sparse_k", m.sparse_k)
    if m.sparse_k > m.latent_dim:
        raise ConfigError(
            f"model.sparse_k={m.sparse_k} is larger than the code (model.latent_dim="
            f"{m.latent_dim}); valid: 1..{m.latent_dim}"
        )
    if m.sparse_k_start is not None:
        _positive_int("model.sparse_k_start", m.sparse_k_start)
        if not m.sparse_k <= m.sparse_k_start <= m.latent_dim:
            raise ConfigError(
                f"model.sparse_k_start={m.sparse_k_start} is not valid; it must lie in "
                f"[model.sparse_k={m.sparse_k}, model.latent_dim={m.latent_dim}]"
            )
    if m.sparse_k_features is not None:
        _positive_int("model.sparse_k_features", m.sparse_k_features)
        if m.sparse_k_features > m.latent_dim:
            raise ConfigError(
                f"model.sparse_k_features={m.sparse_k_features} is larger than the code "
                f"(model.latent_dim={m.latent_dim}); valid: 1..{m.latent_dim}"
            )
    if not isinstance(m.sparse_anneal_epochs, int) or m.sparse_anneal_epochs < 0:
        raise ConfigError(
            f"model.sparse_anneal_epochs={m.sparse_anneal_epochs!r} must be an integer >= 0"
        )
    if m.sparse_anneal_epochs and m.sparse_k_start is None:  # k_schedule: k is sparse_k
        raise ConfigError(
            f"model.sparse_anneal_epochs={m.sparse_anneal_epochs} has no effect without "
            f"model.sparse_k_start (the k to anneal from, in [model.sparse_k={m.sparse_k}, "
            f"model.latent_dim={m.latent_dim}])"
        )


class PretrainConfigError(ConfigError):
    """A ``pretrain.*`` value, or its combination with the model, is invalid; says which."""


def _positive_pretrain(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PretrainConfigError(
            f"pretrain.{key}={value!r} is not valid; it must be an integer > 0"
        )


def supervised_schedules() -> tuple[str, ...]:
    """The schedules the supervised stage takes: those of SCHEDULES without a warmup."""
    return tuple(k for k in SCHEDULES if not SCHEDULES.entry(k).info.get("warmup"))


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
        _positive_pretrain(key, getattr(p, key))
    for key in ("layer_batch_size", "supervised_batch_size"):
        _positive_pretrain(key, getattr(p, key), allow_none=True)
    l2s = list(p.probe_l2)
    finite = [
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in l2s
    ]
    if not l2s or not all(ok and v >= 0 for ok, v in zip(finite, l2s)):
        raise PretrainConfigError(
            f"pretrain.probe_l2={l2s} is not valid; give one or more weight penalties >= 0, "
            "e.g. [1e-4] or [1e-4,1e-3,1e-2]"
        )
    if p.probe and len(l2s) > 1 and not cfg.data.validation:
        raise PretrainConfigError(
            f"pretrain.probe_l2={l2s} lists {len(l2s)} values, which are chosen among on a "
            "validation split; set data.validation (a fraction such as 0.1, or a count) or give "
            "one value"
        )
    if p.layer_lr is not None:  # inf trained every stage before it and then diverged
        _finite("pretrain.layer_lr", p.layer_lr, 0.0, above=True)
    _finite("pretrain.supervised_lr", p.supervised_lr, 0.0, above=True)
    if p.decoder_init not in DECODER_INITS:
        raise PretrainConfigError(
            f"pretrain.decoder_init={p.decoder_init!r} is not valid; choose one of: "
            f"{', '.join(DECODER_INITS)}"
        )
    if p.supervised_optim not in OPTIMIZERS:
        raise PretrainConfigError(
            f"pretrain.supervised_optim={p.supervised_optim!r} is not valid; choose one of: "
            f"{', '.join(OPTIMIZERS.names())}"
        )
    if OPTIMIZERS.entry(p.supervised_optim).info.get("weight_decay"):
        raise PretrainConfigError(
            f"pretrain.supervised_optim={p.supervised_optim} needs a weight decay the "
            "supervised stage does not take; choose another optimiser"
        )
    if p.supervised_schedule not in supervised_schedules():
        raise PretrainConfigError(
            f"pretrain.supervised_schedule={p.supervised_schedule!r} is not valid; choose one "
            f"of: {', '.join(supervised_schedules())}"
        )
    if p.layer_optim is not None and p.layer_optim not in OPTIMIZERS:
        raise PretrainConfigError(
            f"pretrain.layer_optim={p.layer_optim!r} is not valid; choose null or one of: "
            f"{', '.join(OPTIMIZERS.names())}"
        )
    if p.layer_optim is not None and OPTIMIZERS.entry(p.layer_optim).info.get("weight_decay"):
        if cfg.optim.weight_decay <= 0:
            raise PretrainConfigError(
                f"pretrain.layer_optim={p.layer_optim} needs optim.weight_decay > 0"
            )
    if cfg.optim.warmup_epochs >= p.layer_epochs:
        raise PretrainConfigError(
            f"optim.warmup_epochs={cfg.optim.warmup_epochs} is not shorter than "
            f"pretrain.layer_epochs={p.layer_epochs}; each layer reuses the run's schedule"
        )
