"""Validation split, early stopping and model selection: the test split is never chosen on.

- ``data.validation`` (a fraction or a count) carves a seeded, stratified split out of the
  training data; the test split is the same with or without it;
- ``trainer.early_stopping`` stops after ``trainer.patience`` evaluations without improvement
  and ends with the best evaluation's parameters; the record survives a resume;
- supervised stages select on validation error the same way.
"""

import json
import logging

import numpy as np
import pytest
from conftest import make_config, train

from ae_jax.config import ConfigError, DataConfig, validate
from ae_jax.data import DataError, load_dataset
from ae_jax.train import train_and_evaluate

EARLY = (
    "data.validation=0.15",
    "trainer.early_stopping=true",
    "trainer.patience=3",
    "trainer.eval_every=5",
)


def _rows(x: np.ndarray) -> set:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


def test_validation_fraction_and_count_carve_the_training_split_only():
    plain = load_dataset(DataConfig())
    frac = load_dataset(DataConfig(validation=0.2))
    count = load_dataset(DataConfig(validation=100))
    assert plain.x_val is None
    n = plain.x_train.shape[0]
    assert frac.x_val.shape[0] == int(np.ceil(0.2 * n)) and count.x_val.shape[0] == 100
    for d in (frac, count):
        # the test split is untouched; train + val are exactly the old training split
        np.testing.assert_array_equal(d.x_test, plain.x_test)
        np.testing.assert_array_equal(d.y_test, plain.y_test)
        assert d.x_train.shape[0] + d.x_val.shape[0] == n
        assert not _rows(d.x_val) & _rows(d.x_train) - _rows(plain.x_test)
        assert _rows(d.x_val) | _rows(d.x_train) == _rows(plain.x_train)
    # stratified: every class keeps about its share
    shares = np.bincount(frac.y_val, minlength=10) / len(frac.y_val)
    np.testing.assert_allclose(shares, np.bincount(plain.y_train) / n, atol=0.02)
    # seeded: the same split twice, another seed another split
    again = load_dataset(DataConfig(validation=0.2))
    other = load_dataset(DataConfig(validation=0.2, split_seed=1))
    np.testing.assert_array_equal(again.x_val, frac.x_val)
    assert _rows(other.x_val) != _rows(frac.x_val)


def test_scaling_statistics_come_from_the_remaining_training_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.arange(1, 6) + 10
    path = tmp_path / "t.csv"
    np.savetxt(path, x, delimiter=",")
    d = load_dataset(
        DataConfig(source="array", path=str(path), scaling="standardize", validation=50)
    )
    np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(0), 1, atol=1e-4)
    assert np.abs(d.x_val.mean(0)).max() > 1e-3  # not refitted on the validation rows


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_bad_validation_values_are_one_line(value):
    with pytest.raises(ConfigError, match=r"data.validation="):
        validate(make_config(f"data.validation={value}"))
    with pytest.raises(DataError, match=r"data.validation="):
        load_dataset(DataConfig(validation=value))


def test_a_validation_split_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(DataError, match=r"data.validation=5000 .* leaving none to train on"):
        load_dataset(DataConfig(validation=5000))
    # a fraction in (0, 1) that rounds up to every example was told "valid: a fraction in
    # (0, 1)": the valid fractions are the ones that leave an example (digits: 1437 train)
    said = r"0.9995 holds out 1437 of the 1437 .*valid here: a fraction of at most 0.999 or"
    with pytest.raises(DataError, match=said):
        load_dataset(DataConfig(validation=0.9995))
    assert load_dataset(DataConfig(validation=0.999)).x_train.shape[0] == 1


def test_a_validation_of_one_says_it_is_read_as_one_example(caplog):
    """1 and 1.0 are one value in the float schema: the count reading is taken and said."""
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        one = load_dataset(DataConfig(validation=1.0))
    assert one.x_val.shape[0] == 1
    assert "data.validation=1 is read as a count: one validation example" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ae_jax"):
        load_dataset(DataConfig(validation=2))
    assert "data.validation" not in caplog.text


def test_early_stopping_without_a_validation_split_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"early_stopping=true needs a validation split"):
        validate(make_config("trainer.early_stopping=true"))
    with pytest.raises(ConfigError, match=r"trainer.patience=0"):
        validate(make_config("data.validation=0.1", "trainer.patience=0"))


def test_val_metrics_sit_beside_test_metrics_and_the_curve_is_on_validation(tmp_path):
    m = train(tmp_path, "data.validation=0.15", "trainer.epochs=20", "trainer.eval_every=5")
    for key in ("mse", "sse_per_example", "pca_mse", "mse_over_pca"):
        assert f"val/{key}" in m and f"test/{key}" in m
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    evaluated = [r for r in history if "val/mse" in r]
    assert [r["epoch"] for r in evaluated] == [5, 10, 15, 20]
    assert not any(k.startswith("eval/") for r in history for k in r)
    # the last curve point and the final val/mse score the same parameters on the same split
    assert evaluated[-1]["val/mse"] == pytest.approx(m["val/mse"], rel=1e-5)


def test_an_overcomplete_code_reports_exact_pca_as_zero_and_no_ratio(tmp_path):
    # 96 code units on 64 pixels: PCA at that size reconstructs exactly, so its error is 0 (not
    # rounding noise like 1e-31) and there is no ratio to report (not a "nan" in metrics.json).
    m = train(
        tmp_path, "model=shallow", "model.latent_dim=96", "data.validation=0.15", "trainer.epochs=2"
    )
    for split in ("val", "test"):
        assert m[f"{split}/pca_mse"] == 0.0 and m[f"{split}/pca_sse_per_example"] == 0.0
        assert f"{split}/mse_over_pca" not in m
        assert m[f"{split}/mse"] > 0
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert not [k for k, v in written.items() if isinstance(v, str)]  # no "nan" placeholders


def test_early_stopping_keeps_the_best_epoch_and_stops(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        m = train(tmp_path, *EARLY)
    best, trained = int(m["train/best_epoch"]), int(m["train/epochs_trained"])
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    curve = {r["epoch"]: r["val/mse"] for r in history if "val/mse" in r}
    assert trained < 300 and len(history) == trained
    # the best evaluation is the minimum of the curve, then `patience` evaluations without one
    assert curve[best] == min(curve.values())
    later = [e for e in curve if e > best]
    assert len(later) >= 3 and all(curve[e] >= curve[best] for e in later)
    # the run ends with the best epoch's parameters, not the last epoch's
    assert m["val/mse"] == pytest.approx(curve[best], rel=1e-5)
    assert m["val/mse"] < curve[max(curve)]
    assert f"keeping the parameters of epoch {best}" in caplog.text


def test_the_console_says_which_epoch_a_run_that_trained_to_the_end_keeps(tmp_path, caplog):
    # A run that reached its last epoch kept an earlier epoch's parameters without a word, and
    # one whose patience ran out at exactly its last epoch was said to stop early.
    args = (*EARLY[:2], "trainer.eval_every=2", "trainer.epochs=60", "optim.lr=0.02")
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        m = train(tmp_path, *args, "trainer.patience=50")
    best = int(m["train/best_epoch"])
    assert 0 < best < 60 and m["train/epochs_trained"] == 60
    said = f"val/mse was lowest at epoch {best} of 60: keeping the parameters of epoch {best}"
    assert said in caplog.text and "early stopping" not in caplog.text
    patience = (60 - best) // 2  # evaluations after the best: the patience ends at epoch 60
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        again = train(tmp_path / "again", *args, f"trainer.patience={patience}")
    assert again["train/best_epoch"] == best and "early stopping" not in caplog.text
    assert said in caplog.text


@pytest.mark.parametrize("devices", [1, 2])
def test_early_stopping_resumes_its_record_and_a_stopped_run_is_not_trained_again(
    tmp_path, caplog, devices
):
    # on 2 devices the record came back committed to one device beside parameters on both,
    # and the resumed run ended in JAX's "incompatible devices" traceback
    early = (*EARLY, f"trainer.devices={devices}")
    whole = train(tmp_path / "whole", *early)
    # the same run interrupted: 150 epochs first (the constant-rate budget may grow), then on
    cfg = make_config(*early, "trainer.epochs=150", "trainer.checkpoint_every=50")
    train_and_evaluate(cfg, tmp_path / "split")
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        resumed = train_and_evaluate(
            make_config(*early, "trainer.checkpoint_every=50"), tmp_path / "split"
        )
    assert "resuming from" in caplog.text and "(epoch 150 of 300)" in caplog.text
    assert resumed["train/best_epoch"] == whole["train/best_epoch"]
    assert resumed["train/epochs_trained"] == whole["train/epochs_trained"]
    assert resumed["val/mse"] == pytest.approx(whole["val/mse"], rel=1e-6)
    assert resumed["test/mse"] == pytest.approx(whole["test/mse"], rel=1e-6)
    # finished by early stopping: run again, nothing is trained and the result is the same
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ae_jax"):
        again = train_and_evaluate(
            make_config(*early, "trainer.checkpoint_every=50"), tmp_path / "split"
        )
    assert "not trained again" in caplog.text
    assert again["test/mse"] == resumed["test/mse"]
    assert again["train/best_epoch"] == resumed["train/best_epoch"]


def test_supervised_stage_selects_on_validation_error(tmp_path):
    m = train(
        tmp_path,
        "+pretrain=layerwise",
        "pretrain.supervised=true",
        "pretrain.unsupervised=false",
        "pretrain.baseline=false",
        "pretrain.probe=false",
        "pretrain.layer_epochs=3",
        "pretrain.supervised_epochs=200",
        "pretrain.supervised_lr=3e-3",
        "data.validation=0.15",
        "trainer.early_stopping=true",
        "trainer.patience=4",
        "trainer.eval_every=5",
    )
    best = int(m["supervised/train/best_epoch"])
    trained = int(m["supervised/train/epochs_trained"])
    assert best <= trained - 4 * 5 and trained < 200
    history = [
        json.loads(line) for line in (tmp_path / "run" / "supervised" / "history.jsonl").open()
    ]
    curve = {r["epoch"]: r["val/error_pct"] for r in history if "val/error_pct" in r}
    assert curve[best] == min(curve.values())
    assert m["supervised/val/error_pct"] == pytest.approx(curve[best], abs=1e-4)
    assert m["supervised/test/error_pct"] < 10.0


def test_a_small_but_real_pca_error_on_unscaled_columns_is_reported(tmp_path):
    # Columns of very different sizes (raw units, data.scaling=none), 12 features, k = 8: the
    # 4 directions PCA drops have variances near 1e-10 of the largest, far above round-off, so
    # PCA's test error is small but not 0, and the ratio is reported.
    rng = np.random.default_rng(0)
    scales = np.array([1e4, 1e3, 300, 100, 30, 10, 3, 1, 0.1, 0.05, 0.03, 0.02])
    x = rng.normal(size=(400, 12)) * scales + 1e3
    path = tmp_path / "raw.npy"
    np.save(path, x.astype(np.float32))
    m = train(
        tmp_path,
        "data=array",
        f"data.path={path}",
        "data.scaling=none",
        "model=linear",
        "model.latent_dim=8",
        "trainer=default",
        "trainer.epochs=2",
        "trainer.min_steps=0",
    )
    from ae_jax.evaluation.pca import fit_pca, pca_mse

    ds = load_dataset(DataConfig(source="array", path=str(path), scaling="none"))
    expected = pca_mse(fit_pca(ds.x_train.reshape(len(ds.x_train), -1), 8), ds.x_test)
    assert expected > 5e-4  # the four small columns: (0.1^2 + 0.05^2 + 0.03^2 + 0.02^2) / 12
    assert m["test/pca_mse"] == pytest.approx(expected, rel=1e-6)
    assert "test/mse_over_pca" in m
