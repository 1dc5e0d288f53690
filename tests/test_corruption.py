"""Tests of ae_jax.corruption: noise statistics, exact identity at level 0, errors and tracing.

Statistical tolerances are 5 binomial (or normal) standard errors, computed from the sample
size in each test, so a correct implementation fails with probability below 1e-6 per check;
the fixed keys make every run identical anyway.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax.corruption import (
    NOISE_KINDS,
    CorruptionError,
    corrupt,
    emphasis_weights,
    validate_level,
)

SHAPE = (200, 500)  # n = 100,000 elements
N = SHAPE[0] * SHAPE[1]


def _x(seed=0):
    # Values strictly inside (0.1, 0.9): never 0, low or high, so corrupted elements are visible.
    return jax.random.uniform(jax.random.key(seed), SHAPE, minval=0.1, maxval=0.9)


def _binomial_tol(p, n):
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("level", [0.1, 0.5, 0.9])
def test_masking_fraction_and_values(level):
    x = _x()
    x_tilde, mask = corrupt(jax.random.key(1), x, "masking", level)
    xt, m = np.asarray(x_tilde), np.asarray(mask)
    assert abs(m.mean() - level) < _binomial_tol(level, N)
    np.testing.assert_array_equal(xt[m], 0.0)
    np.testing.assert_array_equal(xt[~m], np.asarray(x)[~m])


def test_masking_level_one_zeroes_everything():
    x_tilde, mask = corrupt(jax.random.key(2), _x(), "masking", 1.0)
    assert bool(jnp.all(mask)) and bool(jnp.all(x_tilde == 0))


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (-1.0, 2.0)])
def test_salt_pepper_values_fraction_and_fair_coin(low, high):
    level = 0.3
    x = _x()
    x_tilde, mask = corrupt(jax.random.key(3), x, "salt_pepper", level, low=low, high=high)
    xt, m = np.asarray(x_tilde), np.asarray(mask)
    assert abs(m.mean() - level) < _binomial_tol(level, N)
    assert set(np.unique(xt[m])) <= {low, high}
    np.testing.assert_array_equal(xt[~m], np.asarray(x)[~m])
    n_corrupted = int(m.sum())
    high_frac = float((xt[m] == high).mean())
    assert abs(high_frac - 0.5) < _binomial_tol(0.5, n_corrupted)
    # The mask is exactly the set of changed elements (x never equals low or high here).
    np.testing.assert_array_equal(m, xt != np.asarray(x))


@pytest.mark.parametrize("sigma", [0.05, 0.5])
def test_gaussian_noise_std_and_mean(sigma):
    x = _x()
    x_tilde, mask = corrupt(jax.random.key(4), x, "gaussian", sigma)
    noise = np.asarray(x_tilde - x, np.float64)
    # Sample std of n normals has standard error sigma / sqrt(2n); the mean sigma / sqrt(n).
    assert abs(noise.std() - sigma) < 5 * sigma / math.sqrt(2 * N)
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(N)
    assert bool(jnp.all(mask))


def test_gaussian_clip_respects_range():
    x = _x()
    x_tilde, _ = corrupt(jax.random.key(5), x, "gaussian", 1.0, low=0.0, high=1.0, clip=True)
    assert float(x_tilde.min()) == 0.0 and float(x_tilde.max()) == 1.0
    unclipped, _ = corrupt(jax.random.key(5), x, "gaussian", 1.0)
    assert float(unclipped.min()) < 0.0


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_level_zero_is_exact_identity(kind):
    # Values outside [low, high] too: clipping must not touch them at level 0.
    x = jnp.linspace(-2.0, 3.0, 1000).reshape(10, 100)
    x_tilde, mask = corrupt(jax.random.key(6), x, kind, 0.0, clip=True)
    np.testing.assert_array_equal(x_tilde, x)
    assert not bool(jnp.any(mask))
    assert x_tilde.dtype == x.dtype


def test_none_ignores_level():
    x = _x()
    x_tilde, mask = corrupt(jax.random.key(0), x, "none", 0.7)
    np.testing.assert_array_equal(x_tilde, x)
    assert not bool(jnp.any(mask))


@pytest.mark.parametrize("kind", ["gaussian", "masking", "salt_pepper"])
def test_deterministic_for_a_key_and_different_across_keys(kind):
    x = _x()
    a, ma = corrupt(jax.random.key(7), x, kind, 0.4)
    b, mb = corrupt(jax.random.key(7), x, kind, 0.4)
    c, _ = corrupt(jax.random.key(8), x, kind, 0.4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_traced_level_under_jit_and_vmap_over_members():
    x = _x()[:20]  # (20, 500)
    levels = jnp.array([0.0, 0.25, 0.75])

    @jax.jit
    def member(key, level):
        return corrupt(key, x, "masking", level)

    keys = jax.random.split(jax.random.key(9), 3)
    x_tilde, mask = jax.vmap(member)(keys, levels)
    np.testing.assert_array_equal(x_tilde[0], x)  # member with level 0 is the plain AE
    fracs = np.asarray(mask.mean(axis=(1, 2)))
    n = x.size
    for frac, level in zip(fracs, np.asarray(levels), strict=True):
        assert abs(frac - level) < _binomial_tol(level, n) + 1e-12


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(CorruptionError, match="'dropout'.*none, gaussian, masking, salt_pepper"):
        corrupt(jax.random.key(0), _x(), "dropout", 0.1)
    assert issubclass(CorruptionError, ValueError)


@pytest.mark.parametrize(
    "kind,level,fragment",
    [
        ("masking", 1.5, "1.5"),
        ("masking", -0.1, "-0.1"),
        ("salt_pepper", 2, "2"),
        ("salt_pepper", float("nan"), "nan"),
        ("gaussian", -0.3, "-0.3"),
        ("gaussian", float("inf"), "inf"),
        ("gaussian", "big", "big"),
    ],
)
def test_validate_level_errors_name_the_value(kind, level, fragment):
    with pytest.raises(CorruptionError, match=rf"level='?{re.escape(fragment)}'?"):
        validate_level(kind, level)


@pytest.mark.parametrize(
    "kind,level", [("masking", 0.0), ("masking", 1.0), ("salt_pepper", 0.5), ("gaussian", 3.0)]
)
def test_validate_level_accepts_valid_values(kind, level):
    validate_level(kind, level)


def test_validate_level_unknown_kind():
    with pytest.raises(CorruptionError, match="'blur'"):
        validate_level("blur", 0.1)


def test_emphasis_weights():
    mask = jnp.array([[True, False], [False, True]])
    np.testing.assert_array_equal(emphasis_weights(mask, 2.0, 0.5), [[2.0, 0.5], [0.5, 2.0]])
