"""Held-out metrics of a trained autoencoder: reconstruction, denoising, code statistics,
Jacobian norm, and the PCA baseline at the same code size.

Names follow docs/references.md#conventions: ``mse`` is per-pixel (mean over examples and
features), ``sse_per_example`` is Hinton & Salakhutdinov's per-image squared error (sum over
features, mean over examples), ``bce`` is the per-pixel binary cross-entropy of the
reconstruction (from the logits of a sigmoid output; a linear output's x̂ clipped to
[1e-7, 1 - 1e-7]).
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax.chunks import map_in_chunks
from ae_jax.evaluation.pca import (
    SETTLED_SEPARATION,
    fit_pca,
    pca_k,
    pca_mse,
    principal_angles_deg,
    separation,
    widest_settled_code,
)
from ae_jax.objectives.losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    squared_error,
    sum_squared_error,
)
from ae_jax.training.objective import Objective
from ae_jax.training.step import example_keys

log = logging.getLogger("ae_jax")

EVAL_CHUNK = 2048  # examples per compiled evaluation call (bounds memory on big test sets)
NONZERO_EPS = 1e-6  # |code| above this counts as an active unit


@functools.lru_cache(maxsize=16)
def make_per_example_eval(objective: Objective):
    """A jitted ``fn(params, x, key, level) -> dict of (B,) arrays`` on clean and corrupted x.

    Cached per (hashable, frozen) objective: every run or sweep member with an equal objective
    reuses one compiled evaluation.
    """

    @jax.jit
    def per_example(params, x, key, level):
        logits, recon, code, _ = objective.forward(params, x)
        out = {
            "se": squared_error(recon, x),  # (B,)
            "sse": sum_squared_error(recon, x),
            # of the reconstruction the model makes: a linear output's x̂ is no logit (it was
            # scored as sigmoid(x̂), near ln 2 for any good reconstruction)
            "bce": (
                binary_cross_entropy_with_logits(logits, x)
                if objective.output_activation == "sigmoid"
                else binary_cross_entropy(recon, x)
            ),
            "code_mean": jnp.mean(code, axis=-1),
            "code_nonzero": jnp.sum(jnp.abs(code) > NONZERO_EPS, axis=-1).astype(jnp.float32),
            "code_active": (jnp.abs(code) > NONZERO_EPS).reshape(code.shape[0], -1),  # (B, k)
        }
        keys = example_keys(key, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), x.shape[0])
        x_tilde, _ = objective.corrupt(keys, x, level)
        _, recon_tilde, _, _ = objective.forward(params, x_tilde)
        out["denoise_se"] = squared_error(recon_tilde, x)
        return out

    return per_example


def per_example_metrics(per_example, params, x: np.ndarray, key, level: float) -> dict:
    """Run ``per_example`` over x in fixed-size chunks (one compilation); numpy (N,) arrays.
    Chunk s's noise key is ``fold_in(key, s)``."""

    def chunk(xb, start):
        return per_example(params, xb, jax.random.fold_in(key, start), jnp.float32(level))

    return map_in_chunks(chunk, x, EVAL_CHUNK)


@functools.lru_cache(maxsize=16)
def _jacobian_norms(objective: Objective):
    @jax.jit
    def norms(params, x):  # (B,) ||J_f(x)||_F of the dense code (before any k-sparse selection)
        code, aux = objective.model.apply({"params": params}, x, method="encode_dense")
        return jnp.sqrt(objective.jacobian_sq(params, x, code, {**aux, "dense_code": code}))

    return norms


def jacobian_fro(objective: Objective, params, x: np.ndarray) -> float:
    """Mean Frobenius norm of the encoder's Jacobian dh/dx over the examples x."""
    return float(np.mean(jax.device_get(_jacobian_norms(objective)(params, x))))


def decoder_column_space(objective: Objective, params, latent_dim: int) -> np.ndarray:
    """The decoder's linear map code -> output as a (D, k) matrix (exact for linear models)."""

    def decode_flat(c):  # (k,) -> (D,)
        return objective.model.apply({"params": params}, c[None], method="decode").reshape(-1)

    return np.asarray(jax.jacfwd(decode_flat)(jnp.zeros((latent_dim,), jnp.float32)))


@jax.jit
def _eval_key(seed):
    """The evaluation noise key of a run's seed (one program, not one per random op)."""
    return jax.random.fold_in(jax.random.key(seed), 0x7E57)


def evaluate_trained(cfg, trainer, params) -> dict[str, float]:
    """Every ``test/...`` metric of a trainer's model with ``params`` on its dataset's test
    split (the run's own noise.eval_level), plus the PCA per-image SSE beside the AE's; and,
    when the dataset has a validation split, the same reconstruction metrics as ``val/...``."""
    data = trainer.data
    eval_level = cfg.noise.level if cfg.noise.eval_level is None else cfg.noise.eval_level
    settings = dict(
        latent_dim=cfg.model.latent_dim,
        eval_level=eval_level,
        in_unit_interval=data.in_unit_interval,
        jacobian_examples=cfg.trainer.jacobian_examples,
        linear=cfg.model.kind == "linear",
        seed=cfg.trainer.seed,
    )
    pca = trainer.pca(pca_k(cfg.model.latent_dim, data.x_train))
    out = {}
    if data.x_val is not None:
        out |= evaluate_test_split(
            trainer.objective, params, data.x_train, data.x_val, prefix="val", pca=pca, **settings
        )
        out["val/pca_sse_per_example"] = out["val/pca_mse"] * data.num_features
    out |= evaluate_test_split(
        trainer.objective, params, data.x_train, data.x_test, pca=pca, **settings
    )
    out["test/pca_sse_per_example"] = out["test/pca_mse"] * data.num_features
    return out


ANGLE_TOLERANCE_DEG = 2.0  # what "reached PCA's subspace" means here (and in the tests)
# training splits up to this size are advised full batches when a small gap holds them back
FULL_BATCH_ADVICE_MAX = 10_000


def warn_if_not_learned(cfg, trainer, metrics: dict, who: str = "") -> None:
    """One warning line when the test error is many times that of reconstructing every test
    example by the training mean: the weights grew to finite nonsense (a learning rate far too
    high, clipping that hid it) and the run's numbers and figures mean nothing; a softer one
    when it is above the mean's at all (too few epochs, or a code that collapsed)."""
    mse = metrics.get("test/mse")
    x_train, x_test = trainer.data.x_train, trainer.data.x_test
    if mse is None or not math.isfinite(mse) or x_test is None or not len(x_test):
        return
    baseline = _mean_mse(x_train, x_test)
    if baseline > 0 and mse > NOT_LEARNED * baseline:
        log.warning(
            "%stest MSE %.4g is %.3g times that of reconstructing every example by the training "
            "mean (%.4g): the model has not learned (a learning rate far too high makes its "
            "weights grow: %s=%g; or its %s epochs were too few)",
            f"{who}: " if who else "",
            mse,
            mse / baseline,
            baseline,
            getattr(trainer, "lr_key", "optim.lr"),  # a layer's: pretrain.layer_lr
            cfg.optim.lr,
            getattr(trainer, "epochs", cfg.trainer.epochs),
        )
    elif baseline > 0 and mse > baseline:  # e.g. a conv code that collapsed to the mean
        log.warning(
            "%stest MSE %.4g is above the %.4g of reconstructing every example by the "
            "training mean: the model reconstructs worse than the mean does (its %s epochs "
            "may be too few, or its code has collapsed)",
            f"{who}: " if who else "",
            mse,
            baseline,
            getattr(trainer, "epochs", cfg.trainer.epochs),
        )


NOT_LEARNED = 10.0  # test MSE over the mean's, above which a run is said not to have learned
_MEAN_MSE: list = []  # (weak references to the last splits, their value): a group's members'


def _mean_mse(x_train, x_test) -> float:
    """The test MSE of reconstructing every example by the training mean (float64 sums, no
    float64 copy of the data), computed once for the splits a group's members share."""
    import weakref

    if _MEAN_MSE:
        train_ref, test_ref, value = _MEAN_MSE[0]
        if train_ref() is x_train and test_ref() is x_test:
            return value
    mean = np.asarray(x_train).mean(axis=0, dtype=np.float64).astype(np.float32)
    diff = np.asarray(x_test, dtype=np.float32) - mean
    value = float(np.mean(np.square(diff), dtype=np.float64))
    try:
        _MEAN_MSE[:] = [(weakref.ref(x_train), weakref.ref(x_test), value)]
    except TypeError:  # not weakly referable (a list): not kept
        _MEAN_MSE.clear()
    return value


def numerical_rank(ev: np.ndarray) -> int:
    """How many of the descending eigenvalues ``ev`` stand above the eigensolver's round-off:
    a direction however small beside the largest is real (unscaled columns of very different
    sizes), one at round-off is not."""
    if not ev.size or ev[0] <= 0:
        return 0
    return int(np.sum(ev > 10 * ev.size * np.finfo(np.float64).eps * ev[0]))


# the squared norm of the data's mean over its total variance, and the largest over the
# smallest column variance, beyond which a linear AE's missing PCA is put down to the scaling
FAR_FROM_ORIGIN = 100.0
SPREAD_COLUMNS = 1e8


def _scaling_hint(cfg, x_train: np.ndarray) -> str | None:
    """Where data the optimiser cannot settle on comes from its scaling, what to set: data
    far from the origin (data.scaling=none with values around 100) or columns of variances
    many orders apart (1e-3 beside 1e4)."""
    x = np.asarray(x_train, dtype=np.float64).reshape(x_train.shape[0], -1)
    mean, var = x.mean(axis=0), x.var(axis=0)
    offset = float(mean @ mean) / max(float(var.sum()), np.finfo(np.float64).tiny)
    live = var[var > 0]
    spread = float(live.max() / live.min()) if live.size else 1.0
    now = cfg.data.scaling
    if offset > FAR_FROM_ORIGIN and now not in ("center", "standardize"):
        return (
            f"the data sits far from the origin (its mean's squared norm is {offset:.3g} times "
            f"its total variance, under data.scaling={now}), an offset the optimiser must learn "
            "before any direction: data.scaling=center (or standardize) removes it"
        )
    if spread > SPREAD_COLUMNS and now != "standardize":
        return (
            f"its columns' variances span {spread:.1g} (data.scaling={now}), more than float32 "
            "training resolves in one model: data.scaling=standardize puts them on one scale"
        )
    return None


def warn_if_not_at_pca(cfg, trainer, metrics: dict, who: str = "") -> None:
    """After a linear autoencoder's final evaluation, one warning line when it has not
    reached PCA: with a code narrower than the training data's rank, its code subspace is not
    PCA's (the largest principal angle); with a code as wide as the rank or wider, where PCA
    reconstructs exactly, its test error is not near 0. The line names the slow direction's
    variance and the way out: the data's scaling, more steps, batches of the whole split (a
    small table held back by gradient noise), or, for a direction too faint for the optimiser
    to settle at all, the widest code size it does settle. A code wider than the rank but no
    wider than the input is said to make the angle meaningless. ``who``: the run's name where
    several runs share the console (a vectorised group's members)."""
    said = f"{who}: " if who else ""
    if cfg.model.kind != "linear" or "test/mse" not in metrics:
        return
    k = cfg.model.latent_dim
    x_train = trainer.data.x_train
    features = int(np.prod(x_train.shape[1:]))
    steps = trainer.epochs * trainer.steps_per_epoch
    ev = np.asarray(trainer.pca(pca_k(k, x_train)).eigenvalues, dtype=np.float64)
    rank = numerical_rank(ev)
    angle = metrics.get("test/subspace_angle_max_deg")
    mse = metrics["test/mse"]
    way_out = f"train longer (trainer.min_steps={max(4 * steps, 100_000)} or more)"
    slow = min(k, rank)  # the slowest direction the code must settle
    if slow and (widest := widest_settled_code(ev, slow)) is not None:
        # the direction stands out from the next by too little of the largest variance for
        # Adam to settle it, and more steps lose it rather than find it (FAINT_SEPARATION)
        way_out = (
            f"the variance it explains beyond the next direction is "
            f"{separation(ev, slow):.1e} of the largest, too little for the optimiser to "
            f"settle (more steps lose such a direction rather than find it); "
            f"model.latent_dim={widest} is the widest code whose last direction stands out "
            f"by {SETTLED_SEPARATION:g} or more, enough for the default steps"
        )
    if rank and k >= rank:
        # PCA reconstructs the training data exactly; the autoencoder should come as close
        # to PCA's test error (0, or what the test split holds beyond the training data's
        # span) as a small part of the variance of the faintest direction it must keep
        faintest = ev[rank - 1] / features  # the per-feature MSE of leaving it out
        pca_error = metrics.get("test/pca_mse", 0.0)
        if not mse - pca_error > 0.5 * faintest:
            if k > rank and angle is not None:
                log.warning(
                    "%smodel.latent_dim=%d exceeds the rank (%d) of the training data: PCA's "
                    "subspace beyond %d directions is arbitrary, so test/subspace_angle_max_deg "
                    "(%.1f deg) says nothing; a code of at most %d units is identifiable",
                    said,
                    k,
                    rank,
                    rank,
                    angle,
                    rank,
                )
            return
        log.warning(
            "%sthe linear autoencoder has not reached PCA: model.latent_dim=%d is at least the "
            "rank (%d) of the training data, so PCA reconstructs it exactly (test MSE %.3g), "
            "but the autoencoder's test MSE after %d steps is %.3g%s: %.2g times what leaving "
            "out the data's faintest direction costs (variance %.3g, %.1e of the largest): %s",
            said,
            k,
            rank,
            pca_error,
            steps,
            mse,
            f", {mse - pca_error:.3g} above PCA's" if pca_error else "",
            (mse - pca_error) / faintest,
            ev[rank - 1],
            ev[rank - 1] / ev[0],
            _scaling_hint(cfg, x_train) or way_out,
        )
        return
    if angle is None or angle <= ANGLE_TOLERANCE_DEG:
        return
    n = x_train.shape[0]
    gap = ev[k - 1] / ev[k] if k < ev.size and ev[k] > 0 else math.inf
    noisy = trainer.cfg.trainer.batch_size < n <= FULL_BATCH_ADVICE_MAX and steps >= 50_000
    if widest_settled_code(ev, k) is None and noisy and ev[k - 1] >= 1e-3 * ev[0]:
        # steps enough, and a small gap rather than a small variance: the minibatches'
        # gradient noise holds the subspace back (a flat 100-column table at k = 20:
        # 2.4 deg after 100,000 steps of 64, 0.005 deg after 20,000 of the whole split)
        way_out = (
            f"use batches of the whole training split (trainer.batch_size={n}, no gradient "
            f"noise), or {way_out}"
        )
    log.warning(
        "%sthe linear autoencoder has not reached PCA's subspace: largest principal angle "
        "%.1f deg (test MSE %.4fx PCA's) after %d steps. Its slowest direction has variance "
        "%.3g (%.1e of the largest; eigenvalue gap %.3g): %s",
        said,
        angle,
        metrics.get("test/mse_over_pca", math.nan),
        steps,
        ev[k - 1],
        ev[k - 1] / ev[0],
        gap,
        _scaling_hint(cfg, x_train) or way_out,
    )


def evaluate_test_split(
    objective: Objective,
    params,
    x_train: np.ndarray,
    x_test: np.ndarray,
    *,
    latent_dim: int,
    eval_level: float,
    in_unit_interval: bool,
    jacobian_examples: int,
    linear: bool,
    seed: int,
    prefix: str = "test",
    pca=None,
) -> dict[str, float]:
    """Every ``<prefix>/...`` metric of a trained model on the held-out ``x_test`` (see the
    module docstring for conventions); ``pca`` is the PCA of ``x_train`` at the code size, fitted
    here when not given. The Jacobian and subspace diagnostics are reported for the test split
    only (they do not depend on which held-out split is scored)."""
    test = prefix == "test"
    key = _eval_key(np.int32(seed))
    per = per_example_metrics(make_per_example_eval(objective), params, x_test, key, eval_level)
    mse = float(np.mean(per["se"]))
    p = prefix + "/"
    out = {
        p + "mse": mse,
        p + "rmse": math.sqrt(mse),
        p + "sse_per_example": float(np.mean(per["sse"])),
        p + "mean_code_activation": float(np.mean(per["code_mean"])),
        p + "code_nonzero_per_example": float(np.mean(per["code_nonzero"])),
        p + "code_nonzero_max": float(np.max(per["code_nonzero"])),
        # units never active on any example of the split (a sparse code's wasted capacity)
        p + "code_dead_units": float(np.sum(~per["code_active"].any(axis=0))),
    }
    if in_unit_interval:
        out[p + "bce"] = float(np.mean(per["bce"]))
    if eval_level > 0 and objective.noise_kind != "none":
        out[p + "denoise_mse"] = float(np.mean(per["denoise_se"]))
    if test:
        m = min(jacobian_examples, x_test.shape[0])
        out["test/jacobian_fro"] = jacobian_fro(objective, params, x_test[:m])

    flat_train = x_train.reshape(x_train.shape[0], -1)
    flat_test = x_test.reshape(x_test.shape[0], -1)
    if pca is None:
        pca = fit_pca(flat_train, pca_k(latent_dim, x_train))
    pca_error = pca_mse(pca, flat_test)
    # With k >= the training data's rank PCA is exact: its error is rounding (reported as 0),
    # and there is no ratio to report. The rank is read off the spectrum (a direction beyond k
    # with variance above the eigensolver's round-off is real, however small beside the
    # largest: unscaled columns of very different sizes), and the error must be small too.
    k = pca.components.shape[0]
    rank_reached = k >= numerical_rank(np.asarray(pca.eigenvalues, dtype=np.float64))
    if rank_reached and pca_error <= 1e-9 * float(np.mean(np.var(flat_train, axis=0))):
        out[p + "pca_mse"] = 0.0
    else:
        out[p + "pca_mse"] = pca_error
        out[p + "mse_over_pca"] = mse / pca_error
    if test and linear and latent_dim <= flat_train.shape[1]:
        columns = decoder_column_space(objective, params, latent_dim)  # (D, k)
        angles = principal_angles_deg(columns, pca.components.T)
        out["test/subspace_angle_max_deg"] = float(np.max(angles))
    return out
