"""Tests of the PCA baseline (closed-form training error, MNIST PCA-30) and principal angles."""

import gzip

import numpy as np
import pytest
import scipy.linalg
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA as SklearnPCA

from ae_jax.evaluation.pca import PCA, PCAError, fit_pca, pca_mse, principal_angles_deg


def _read_idx_images(path) -> np.ndarray:
    """Official MNIST image file -> float32 (N, 28, 28) in [0, 1] (header: magic, then dims)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    pixels = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return pixels.astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().images / 16.0)[..., None]  # (1797, 8, 8, 1) in [0, 1]


@pytest.fixture(scope="module")
def mnist(mnist_path):
    x_train = _read_idx_images(mnist_path / "train-images-idx3-ubyte.gz")
    x_test = _read_idx_images(mnist_path / "t10k-images-idx3-ubyte.gz")
    return x_train, x_test


def _closed_form_mse(pca: PCA) -> float:
    """(Σ of discarded covariance eigenvalues) / D: the training MSE of PCA-k.

    docs/references.md#baldi1989
    """
    return float(pca.eigenvalues[pca.k :].sum() / pca.num_features)


@pytest.mark.parametrize("k", [1, 5, 16, 40, 64])
def test_training_mse_is_sum_of_discarded_eigenvalues_on_digits(digits, k):
    pca = fit_pca(digits, k)
    if k == 64:  # nothing discarded: exact reconstruction
        assert pca_mse(pca, digits) < 1e-20
        return
    assert pca_mse(pca, digits) == pytest.approx(_closed_form_mse(pca), rel=1e-6)


def test_fit_matches_covariance_and_sklearn(digits):
    x = digits.reshape(len(digits), -1)
    pca = fit_pca(digits, 10)
    np.testing.assert_allclose(pca.mean, x.mean(0), atol=1e-12)
    eig = np.linalg.eigvalsh(np.cov(x.T, ddof=0))[::-1]
    np.testing.assert_allclose(pca.eigenvalues, np.clip(eig, 0, None), atol=1e-12)
    assert np.all(np.diff(pca.eigenvalues) <= 1e-15)  # descending
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(10), atol=1e-12)
    # Same subspace as sklearn (its eigenvalues use ddof=1, hence the N / (N - 1)).
    ref = SklearnPCA(10, svd_solver="full").fit(x)
    np.testing.assert_allclose(
        ref.explained_variance_ * (len(x) - 1) / len(x), pca.eigenvalues[:10], rtol=1e-10
    )
    assert principal_angles_deg(pca.components.T, ref.components_.T).max() < 1e-5


def test_fewer_examples_than_features_uses_thin_svd(digits):
    x = digits[:40].reshape(40, -1)  # N = 40 < D = 64
    pca = fit_pca(x, 12)
    assert pca.eigenvalues.shape == (64,)
    eig = np.clip(np.linalg.eigvalsh(np.cov(x.T, ddof=0))[::-1], 0, None)
    np.testing.assert_allclose(pca.eigenvalues, eig, atol=1e-12)
    assert pca_mse(pca, x) == pytest.approx(_closed_form_mse(pca), rel=1e-6)


def test_encode_and_reconstruct_shapes(digits):
    pca = fit_pca(digits, 7)
    assert pca.encode(digits).shape == (len(digits), 7)
    assert pca.reconstruct(digits).shape == digits.shape
    flat = digits.reshape(len(digits), -1)
    np.testing.assert_allclose(pca.reconstruct(flat), pca.reconstruct(digits).reshape(flat.shape))
    # The projection is idempotent.
    once = pca.reconstruct(flat)
    np.testing.assert_allclose(pca.reconstruct(once), once, atol=1e-12)


@pytest.mark.parametrize("k", [0, -1, 65, 2.0, True])
def test_k_out_of_range_is_an_error_naming_k(digits, k):
    with pytest.raises(PCAError, match=rf"k={k!r}"):
        fit_pca(digits, k)


def test_feature_mismatch_is_an_error(digits):
    pca = fit_pca(digits, 3)
    with pytest.raises(PCAError, match="63 features"):
        pca.encode(np.zeros((5, 63)))
    with pytest.raises(PCAError, match=r"shape \(5,\)"):
        fit_pca(np.zeros(5), 1)


def test_mnist_training_mse_closed_form_and_hinton_pca30_test_sse(mnist):
    x_train, x_test = mnist
    pca = fit_pca(x_train, 30)
    assert pca_mse(pca, x_train) == pytest.approx(_closed_form_mse(pca), rel=1e-6)
    sse = 784 * pca_mse(pca, x_test)
    print(f"MNIST PCA-30 test per-image SSE: {sse:.4f} (Hinton & Salakhutdinov 2006: 13.87)")
    # The published 13.87 is rounded to 0.01; PCA on the 60000 training images is deterministic up
    # to round-off, so the only slack needed is the rounding plus the pixel scaling convention
    # (/255). Measured 13.866; 0.05 (0.4%) would still catch a wrong centring or a wrong k.
    assert sse == pytest.approx(13.87, abs=0.05)


# ---- principal angles -------------------------------------------------------------------------


def _e(d: int, *idx: int) -> np.ndarray:
    return np.eye(d)[:, list(idx)]  # (d, len(idx)) standard basis vectors


def test_identical_subspaces_have_zero_angles():
    a = np.random.default_rng(0).normal(size=(20, 5))
    np.testing.assert_allclose(principal_angles_deg(a, a), np.zeros(5), atol=1e-6)


def test_orthogonal_subspaces_have_right_angles():
    np.testing.assert_allclose(principal_angles_deg(_e(6, 0, 1, 2), _e(6, 3, 4, 5)), [90] * 3)


def test_hand_built_angles():
    theta = np.radians(30.0)
    a = _e(4, 0, 1)
    b = np.stack([[1, 0, 0, 0], [0, np.cos(theta), np.sin(theta), 0]], axis=1)  # (4, 2)
    np.testing.assert_allclose(principal_angles_deg(a, b), [0.0, 30.0], atol=1e-10)
    # A tiny angle, where arccos of the cosine would round to 0: the sine branch keeps it.
    tiny = 1e-9
    c = np.array([[1.0], [tiny], [0.0], [0.0]])
    np.testing.assert_allclose(principal_angles_deg(_e(4, 0), c), [np.degrees(tiny)], rtol=1e-6)


def test_invariant_to_change_of_basis_and_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 6))
    angles = principal_angles_deg(a, b)
    assert angles.shape == (4,) and np.all(np.diff(angles) >= 0)
    mixed = b @ rng.normal(size=(6, 6))  # invertible with probability 1
    np.testing.assert_allclose(principal_angles_deg(a, mixed), angles, atol=1e-8)
    np.testing.assert_allclose(principal_angles_deg(b, a), angles, atol=1e-8)
    ref = np.sort(np.degrees(scipy.linalg.subspace_angles(a, b)))
    np.testing.assert_allclose(angles, ref, atol=1e-8)


def test_rank_deficient_or_mismatched_inputs_are_errors():
    a = np.random.default_rng(2).normal(size=(10, 3))
    deficient = np.concatenate([a[:, :2], a[:, :1] + a[:, 1:2]], axis=1)  # third = first + second
    with pytest.raises(PCAError, match=r"b has shape \(10, 3\) but rank 2"):
        principal_angles_deg(a, deficient)
    with pytest.raises(PCAError, match=r"same number of rows"):
        principal_angles_deg(a, a[:9])
    with pytest.raises(PCAError, match=r"shape \(10,\)"):
        principal_angles_deg(a[:, 0], a)
