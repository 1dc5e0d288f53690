"""trainer.precision: bfloat16 compute with float32 parameters, optimiser state and metrics."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_config

from ae_jax.config import ConfigError, DataConfig, validate
from ae_jax.data import load_dataset
from ae_jax.pretraining.classifier import (
    EncoderClassifier,
    SupervisedState,
    init_classifier,
    make_supervised_epoch,
    train_classifier,
)
from ae_jax.training.step import make_train_step
from ae_jax.training.trainer import Trainer

EPOCHS = 100
# bfloat16 keeps 8 bits of mantissa: after 100 epochs of the default digits model its losses
# land within this relative distance of float32's (measured on CPU: +0.3% and -0.0%).
TOLERANCE = 0.10


def test_unknown_precision_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"trainer.precision='float16' is not valid; choose one of: float32, bfloat16",
    ):
        validate(make_config("trainer.precision=float16"))


def _dtypes(tree):
    return {str(jnp.result_type(a)) for a in jax.tree.leaves(tree)}


def _dots(jaxpr) -> list[tuple[str, str]]:
    """(dtype, precision) of every dot_general in a jaxpr."""
    return re.findall(r":(\w+)\[[\d,]*\] = dot_general\[.*?precision=([^\n]*)", str(jaxpr), re.S)


def _step_dots(precision: str):
    """(the step's trained state, metrics, [(dtype, precision) of every dot_general])."""
    cfg = make_config(f"trainer.precision={precision}", "trainer.batch_size=32")
    trainer = Trainer(cfg, load_dataset(cfg.data))
    state = trainer.init_state()
    x = jnp.asarray(trainer.data.x_train[:32])
    step = make_train_step(trainer.objective, trainer.tx, None)
    dots = _dots(jax.make_jaxpr(step)(state, x, trainer.hparams()))
    new, metrics = jax.jit(step)(state, x, trainer.hparams())
    return new, metrics, dots


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_step_dtypes_and_matmul_precision(precision):
    """float32: every product in float32 at Precision.HIGHEST (no TF32 / bf16 passes on a GPU
    or TPU); bfloat16: the model's products in bfloat16; float32 state and metrics either way."""
    new, metrics, dots = _step_dots(precision)
    assert dots, "no matrix products in the step"
    if precision == "float32":
        assert {d for d, _ in dots} == {"f32"}
        assert {p for _, p in dots} == {"(Precision.HIGHEST, Precision.HIGHEST)"}
    else:
        assert {d for d, _ in dots} == {"bf16"}
    assert _dtypes(new.params) == {"float32"}
    assert _dtypes(new.opt_state) <= {"float32", "int32"}
    assert _dtypes(metrics) == {"float32"}


def _fit(precision: str):
    cfg = make_config(f"trainer.epochs={EPOCHS}", f"trainer.precision={precision}")
    trainer = Trainer(cfg, load_dataset(cfg.data))
    state, history, _ = trainer.fit(trainer.init_state())
    return state, history


def test_bfloat16_trains_the_default_model_as_well_as_float32():
    (_, h32), (s16, h16) = _fit("float32"), _fit("bfloat16")
    assert _dtypes(s16.params) == {"float32"}
    assert _dtypes(s16.opt_state) <= {"float32", "int32"}
    for key in ("train/loss", "eval/mse"):
        a, b = float(h32[-1][key]), float(h16[-1][key])
        print(f"{key}: float32 {a:.5f}, bfloat16 {b:.5f} ({100 * (b / a - 1):+.1f}%)")
        assert np.isfinite(b) and abs(b - a) <= TOLERANCE * a, (key, a, b)
    assert h16[-1]["train/loss"] < 0.5 * h16[0]["train/loss"]  # it did train


# The supervised classifier (pretraining's fine-tuning stage) honours trainer.precision too.
CLASSIFIER = EncoderClassifier(sizes=(64, 32), num_classes=10)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_classifier_step_computes_in_the_training_precision(precision):
    tx = optax.adam(1.0)
    params = init_classifier(CLASSIFIER, (8, 8, 1), seed=0)
    state = SupervisedState(jnp.int32(0), params, tx.init(params), jax.random.key(0))
    epoch = make_supervised_epoch(
        CLASSIFIER,
        tx,
        num_examples=64,
        batch_size=32,
        num_devices=1,
        axis_name=None,
        precision=precision,
    )
    data = (jnp.zeros((64, 64), jnp.float32), jnp.zeros(64, jnp.int32))
    dots = _dots(jax.make_jaxpr(epoch)(state, data, jnp.int32(0), jnp.float32(1e-3)))
    assert dots, "no matrix products in the epoch"
    if precision == "float32":
        assert {d for d, _ in dots} == {"f32"}
        assert {p for _, p in dots} == {"(Precision.HIGHEST, Precision.HIGHEST)"}
    else:
        assert {d for d, _ in dots} == {"bf16"}
    new, metrics = jax.jit(epoch)(state, data, jnp.int32(0), jnp.float32(1e-3))
    assert _dtypes(new.params) == {"float32"}
    assert _dtypes(new.opt_state) <= {"float32", "int32"}
    assert _dtypes(metrics) == {"float32"}


def _fit_classifier(precision: str):
    data = load_dataset(DataConfig())  # digits, labelled
    flat = (-1, data.num_features)
    params = init_classifier(CLASSIFIER, data.example_shape, seed=0)
    return train_classifier(
        CLASSIFIER,
        params,
        data.x_train.reshape(flat),
        data.y_train,
        data.x_test.reshape(flat),
        data.y_test,
        epochs=20,
        batch_size=64,
        lr=3e-3,
        devices=1,
        progress=False,
        precision=precision,
    )


def test_bfloat16_trains_the_classifier_as_well_as_float32():
    """20 epochs on digits (measured on CPU: test error 5.3% either way, train loss 0.210 and
    0.210); the fine-tuned parameters stay float32."""
    (_, _, m32), (p16, h16, m16) = _fit_classifier("float32"), _fit_classifier("bfloat16")
    assert _dtypes(p16) == {"float32"}
    a, b = m32["train/loss"], m16["train/loss"]
    print(
        f"train/loss: float32 {a:.4f}, bfloat16 {b:.4f}; test error "
        f"{m32['test/error_pct']:.2f}% and {m16['test/error_pct']:.2f}%"
    )
    assert np.isfinite(b) and abs(b - a) <= TOLERANCE * a, (a, b)
    assert abs(m16["test/error_pct"] - m32["test/error_pct"]) <= 2.0, (m32, m16)
    assert m16["test/error_pct"] < 15.0  # chance is 90%
    assert h16[-1]["train/loss"] < 0.5 * h16[0]["train/loss"]  # it did train


def test_classifier_refuses_an_unknown_precision():
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int32)
    model = EncoderClassifier(sizes=(4,), num_classes=2)
    params = init_classifier(model, (4,), seed=0)
    with pytest.raises(ConfigError, match=r"trainer.precision='float16' is not valid"):
        train_classifier(
            model, params, x, y, x, y, epochs=1, batch_size=4, lr=1e-3, precision="float16"
        )
