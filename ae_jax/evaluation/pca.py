"""The PCA baseline that every autoencoder run is compared with, and principal angles.

A linear autoencoder with k code units trained on squared error reaches its unique minimum at the
projection onto the top-k principal subspace (Baldi & Hornik 1989; Bourlard & Kamp 1988), so PCA-k
is both the baseline to beat and the closed form a linear model must reproduce. Everything here is
numpy float64 on the host: the covariance of MNIST (60000 x 784) takes about a second.

    pca = fit_pca(x_train, k=30)
    pca_mse(pca, x_test) * 784  # Hinton & Salakhutdinov's per-image SSE (13.87 for PCA-30)
    principal_angles_deg(decoder_kernel.T, pca.components.T)  # -> 0 for a trained linear AE
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows per chunk when streaming over the data: bounds the float64 copy to ~8192 x D values.
_CHUNK = 8192


class PCAError(ValueError):
    """A PCA argument has the wrong shape, rank or size; the message names it and what is valid."""


def _flatten(x: np.ndarray, what: str) -> np.ndarray:
    """(N, *shape) -> (N, D) without copying when possible; at least one example and one feature."""
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0 or np.prod(x.shape[1:]) == 0:
        raise PCAError(
            f"{what} must have shape (N, *example_shape) with N >= 1 and at least one feature, "
            f"got shape {x.shape}"
        )
    return x.reshape(x.shape[0], -1)


@dataclass(frozen=True)
class PCA:
    """A fitted PCA: the training mean, the top-k principal directions and every eigenvalue.

    Attributes:
      mean: (D,) training mean.
      components: (k, D) orthonormal rows, the top-k eigenvectors of the covariance, in order of
        decreasing eigenvalue.
      eigenvalues: (D,) all eigenvalues of the training covariance (ddof=0), descending, >= 0.
    """

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D)
    eigenvalues: np.ndarray  # (D,)

    @property
    def k(self) -> int:
        """Number of kept components."""
        return self.components.shape[0]

    @property
    def num_features(self) -> int:
        """Input dimension D."""
        return self.mean.shape[0]

    def _check(self, x: np.ndarray) -> np.ndarray:
        x2 = _flatten(x, "x")
        if x2.shape[1] != self.num_features:
            raise PCAError(
                f"x has {x2.shape[1]} features per example (shape {np.shape(x)}), "
                f"but this PCA was fitted on {self.num_features}"
            )
        return x2

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Coordinates in the principal basis: z = (x - mean) Vᵀ.  (N, *shape) -> (N, k) float64."""
        x2 = self._check(x)
        return (x2 - self.mean) @ self.components.T  # (N, k)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Orthogonal projection onto the affine principal subspace: x̂ = mean + (x - mean) VᵀV.

        Returns float64 with the input's shape ((N, D) -> (N, D), (N, H, W, C) -> (N, H, W, C)).
        """
        z = self.encode(x)  # (N, k)
        return (z @ self.components + self.mean).reshape(np.shape(x))  # (N, *shape)


def pca_k(latent_dim: int, x_train: np.ndarray) -> int:
    """The PCA baseline's k for a code of ``latent_dim`` units: at most min(N, D)."""
    return min(latent_dim, x_train.shape[0], int(np.prod(x_train.shape[1:])))


def fit_pca(x_train: np.ndarray, k: int) -> PCA:
    """Fits PCA-k to (N, *shape) data, flattened to (N, D).

    The covariance C = (1/N) Σ_n (x_n - μ)(x_n - μ)ᵀ (ddof=0) is eigendecomposed, C = V Λ Vᵀ; the
    top-k eigenvectors are the principal directions and the mean squared reconstruction error on the
    training set is (Σ_{i>k} λ_i) / D (Baldi & Hornik 1989; the Eckart-Young theorem). When N >= D
    the D x D covariance is accumulated over row chunks of the centred data and diagonalised with
    eigh (fast for MNIST); when N < D a thin SVD of the centred data is cheaper and the D - N
    missing eigenvalues are zero.

    Args:
      x_train: (N, *shape) numeric array.
      k: number of components, in [1, min(N, D)].

    Raises:
      PCAError: for bad shapes or k out of range.
    """
    x = _flatten(x_train, "x_train")
    n, d = x.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= min(n, d):
        raise PCAError(
            f"k={k!r} must be an integer in [1, min(N, D)] = [1, {min(n, d)}] "
            f"for data with N={n} examples and D={d} features"
        )
    mean = x.mean(axis=0, dtype=np.float64)  # (D,)
    if n >= d:
        cov = np.zeros((d, d))  # (D, D)
        for start in range(0, n, _CHUNK):
            xc = x[start : start + _CHUNK].astype(np.float64) - mean  # (chunk, D)
            cov += xc.T @ xc
        cov /= n
        eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
        eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
        components = eigenvectors[:, :k].T  # (k, D)
    else:
        xc = x.astype(np.float64) - mean  # (N, D)
        _, s, vt = np.linalg.svd(xc, full_matrices=False)  # s: (N,), vt: (N, D)
        eigenvalues = np.concatenate([s**2 / n, np.zeros(d - n)])  # (D,)
        components = vt[:k]  # (k, D)
    # Tiny negative eigenvalues of a PSD matrix are round-off.
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    return PCA(
        mean=mean,
        components=np.ascontiguousarray(components),
        eigenvalues=np.ascontiguousarray(eigenvalues),
    )


def pca_mse(pca: PCA, x: np.ndarray) -> float:
    """Per-pixel MSE of the PCA reconstructions: mean over examples and features of (x - x̂)².

    On the training set this equals (Σ_{i>k} λ_i) / D; on MNIST, 784 times it is Hinton &
    Salakhutdinov's "average squared error per image" (2006, Fig. 2 caption).
    """
    x2 = pca._check(x)
    total = 0.0
    for start in range(0, x2.shape[0], _CHUNK):
        chunk = x2[start : start + _CHUNK].astype(np.float64)  # (chunk, D)
        total += float(np.sum((chunk - pca.reconstruct(chunk)) ** 2))
    return total / x2.size


def _orthonormal_basis(a: np.ndarray, name: str) -> np.ndarray:
    """(D, k) full-column-rank -> (D, k) orthonormal basis of its column space (via SVD)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[1] > a.shape[0]:
        raise PCAError(
            f"{name} must be a (D, k) matrix with 1 <= k <= D whose columns span a subspace, "
            f"got shape {a.shape}"
        )
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    # The rank tolerance of np.linalg.matrix_rank.
    tol = s[0] * max(a.shape) * np.finfo(np.float64).eps
    rank = int(np.sum(s > tol))
    if rank < a.shape[1]:
        raise PCAError(
            f"{name} has shape {a.shape} but rank {rank}: its {a.shape[1]} columns must be "
            f"linearly independent to span a {a.shape[1]}-dimensional subspace"
        )
    return u


def principal_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles between the column spaces of a (D, k1) and b (D, k2), in degrees, ascending.

    With orthonormal bases Qa, Qb, the cosines of the min(k1, k2) angles are the singular values of
    Qaᵀ Qb (Björck & Golub 1973, "Numerical methods for computing angles between linear subspaces",
    Math. Comp. 27:579). arccos loses all precision near 0°, so angles up to 45° come from the sines
    instead: the singular values of the smaller basis minus its projection onto the larger subspace
    (the same combination as scipy.linalg.subspace_angles). Columns need not be orthonormal.

    Raises:
      PCAError: if the shapes disagree or either matrix is rank deficient.
    """
    qa, qb = _orthonormal_basis(a, "a"), _orthonormal_basis(b, "b")
    if qa.shape[0] != qb.shape[0]:
        raise PCAError(
            f"a and b must have the same number of rows D, got a {np.shape(a)} and b {np.shape(b)}"
        )
    cross = qa.T @ qb  # (k1, k2)
    cosines = np.clip(np.linalg.svd(cross, compute_uv=False), 0.0, 1.0)  # descending
    if qa.shape[1] >= qb.shape[1]:
        residual = qb - qa @ cross  # (D, k2): part of span(b) outside span(a)
    else:
        residual = qa - qb @ cross.T  # (D, k1)
    sines = np.sort(np.clip(np.linalg.svd(residual, compute_uv=False), 0.0, 1.0))  # ascending
    angles = np.where(cosines**2 >= 0.5, np.arcsin(sines), np.arccos(cosines))
    return np.degrees(angles)


# How far a linear autoencoder's k-th direction stands out from the next, as
# (lambda_k - lambda_k+1) / lambda_1, decides whether Adam (optim=adam_pca) settles it. Measured
# on digits and on six draws of a 5,000 x 60 table whose variances fall as exp(-i/2), default
# runs (100,000 steps): at 1e-4 and above every one settled (0.04-0.74 deg); from 3.5e-5 to
# 8.3e-5 six of eight did (0.05-1.6 deg) and the other two did with 4x the steps (2.7 -> 0.04,
# 11.6 -> 0.016 deg); at 2.8e-5 and below none did (5-86 deg), and 4x the steps lost the
# direction altogether (89-90 deg, four runs). Not a rule for more steps, though: digits at
# k = 57 (4.4e-5), settled by default (0.14 deg), lost its direction with 4x (89.9 deg). The
# warning after training (ae_jax.evaluation.metrics.warn_if_not_at_pca) advises more steps only
# above FAINT_SEPARATION, and below it names the widest code that settles.
FAINT_SEPARATION = 3e-5  # below it more steps do not settle the direction
SETTLED_SEPARATION = 1e-4  # at or above it the default steps settled it wherever measured


def separation(ev: np.ndarray, k: int) -> float:
    """(lambda_k - lambda_k+1) / lambda_1 of the descending eigenvalues ``ev``."""
    following = ev[k] if k < ev.size else 0.0
    return float((ev[k - 1] - following) / ev[0])


def widest_settled_code(ev: np.ndarray, k: int) -> int | None:
    """None unless the k-th direction is too faint to settle (``FAINT_SEPARATION``); then the
    largest code size m < k whose m-th direction stands out by ``SETTLED_SEPARATION`` (the
    subspace of the top m depends on that boundary alone), at least 1."""
    if separation(ev, k) >= FAINT_SEPARATION:
        return None
    return next((m for m in range(k - 1, 0, -1) if separation(ev, m) >= SETTLED_SEPARATION), 1)
