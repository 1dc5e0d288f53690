"""The family's defining behaviour on real MNIST (the official files; CI sets AE_JAX_MNIST_DIR).

Training uses a 10,000-image subset of the training split and 2,000 test images to keep CI short;
the PCA baseline is fitted on the same subset.
"""

import pytest
from conftest import train

SUBSET = ("data=idx", "data.max_train=10000", "data.max_test=2000", "trainer.batch_size=100")


@pytest.fixture(autouse=True)
def _mnist(mnist_path):
    """Fail in CI (skip elsewhere) when the MNIST files are missing."""


def test_linear_autoencoder_matches_pca_on_mnist(tmp_path):
    # model=linear's own optimiser and trainer on a subset, fewer epochs (trainer.min_steps
    # keeps 100,000 steps); the full-data k = 10, 30, 50 runs are results/pca_equivalence_k*.
    m = train(tmp_path, *SUBSET, "model=linear", "model.latent_dim=10", "trainer.epochs=30")
    assert m["test/mse"] <= 1.01 * m["test/pca_mse"]
    assert m["test/subspace_angle_max_deg"] < 2.0


def test_deep_autoencoder_beats_pca_on_mnist(tmp_path):
    m = train(tmp_path, *SUBSET, "model.latent_dim=16", "trainer.epochs=5")
    # measured: 0.0159 vs PCA-16 0.0275
    assert m["test/mse"] < 0.8 * m["test/pca_mse"]
    assert m["test/sse_per_example"] == pytest.approx(784 * m["test/mse"], rel=1e-4)


def test_denoising_on_mnist(tmp_path):
    common = (
        *SUBSET,
        "model.latent_dim=16",
        "trainer.epochs=5",
        "noise=masking",
        "noise.eval_level=0.25",
    )
    plain = train(tmp_path / "plain", *common, "noise.level=0")
    dae = train(tmp_path / "dae", *common, "noise.level=0.25")
    assert dae["test/denoise_mse"] < 0.9 * plain["test/denoise_mse"]


def test_mnist_through_tensorflow_datasets(tmp_path, mnist_path):
    """The documented `data=mnist` path: TFDS prepared offline from the official files."""
    from ae_jax.data.tfds_source import import_tfds

    try:
        import_tfds()
    except Exception as err:  # the tfds extra is part of CI; elsewhere it may be absent
        import os

        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI installs the [tfds] extra, but it does not import: {err}")
        pytest.skip(f"tensorflow-datasets unavailable: {err}")
    m = train(
        tmp_path,
        "data=mnist",
        f"data.manual_dir={mnist_path}",
        f"data.data_dir={tmp_path / 'tfds'}",
        "data.max_train=2000",
        "data.max_test=500",
        "trainer.epochs=2",
        "trainer.batch_size=100",
    )
    assert m["test/mse"] < 0.1
