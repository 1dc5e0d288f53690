"""trainer.precision: bfloat16 compute with float32 parameters, optimiser state and metrics."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config

from ae_jax.config import ConfigError, validate
from ae_jax.data import load_dataset
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


def _step_dots(precision: str):
    """(the step's trained state, metrics, [(dtype, precision) of every dot_general])."""
    cfg = make_config(f"trainer.precision={precision}", "trainer.batch_size=32")
    trainer = Trainer(cfg, load_dataset(cfg.data))
    state = trainer.init_state()
    x = jnp.asarray(trainer.data.x_train[:32])
    step = make_train_step(trainer.objective, trainer.tx, None)
    jaxpr = str(jax.make_jaxpr(step)(state, x, trainer.hparams()))
    dots = re.findall(r":(\w+)\[[\d,]*\] = dot_general\[.*?precision=([^\n]*)", jaxpr, re.S)
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
