"""Gaussian statistics shared by the Mahalanobis and PaDiM detectors.

Pure numpy, no I/O. Every function accepts a leading batch axis so that PaDiM can fit one Gaussian per
feature-map location in a single vectorised call, and the image-level Mahalanobis detector uses the same code
with no batch axis: the statistics live here once.

References
----------
* O. Ledoit, M. Wolf, "A well-conditioned estimator for large-dimensional covariance matrices",
  J. Multivariate Analysis 88 (2004) 365-411 (Lemmas 3.2-3.4 and Theorem 3.1 give the shrinkage).
* O. Rippel, P. Mertens, D. Merhof, "Modeling the distribution of normal data in pre-trained deep features
  for anomaly detection", ICPR 2020 (eq. 3-6: multivariate Gaussian per level, Ledoit-Wolf covariance,
  Mahalanobis distance as anomaly score).
"""

from __future__ import annotations

import numpy as np

#: Largest relative score error accepted when a precision matrix is stored as float32 (see `compact_precision`).
FLOAT32_SCORE_RTOL = 1e-4


def _centered(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim < 2:
        raise ValueError(f"expected samples x features (optionally batched), got shape {X.shape}")
    return X - X.mean(axis=-2, keepdims=True)


def _gram_T(Xc: np.ndarray) -> np.ndarray:
    """X^T X over the sample axis, batched."""
    return np.matmul(np.swapaxes(Xc, -1, -2), Xc)


def empirical_covariance(X: np.ndarray) -> np.ndarray:
    """Maximum-likelihood covariance S = (X - mean)^T (X - mean) / n (divides by n, not n - 1).

    Dividing by n keeps it the exact starting point of Ledoit & Wolf (2004, eq. 2) and equal to
    ``sklearn.covariance.empirical_covariance``, so both estimators are comparable on the same scale.
    X has shape (..., n, d); the result (..., d, d).
    """
    Xc = _centered(X)
    return _gram_T(Xc) / Xc.shape[-2]


def ledoit_wolf(X: np.ndarray) -> tuple[np.ndarray, np.ndarray | float]:
    """Ledoit-Wolf shrunk covariance: Sigma = (1 - a) S + a m I, with m = tr(S) / d.

    With few-shot data n is often below the feature dimension d, so S is singular and its inverse (needed for
    the Mahalanobis score, Rippel et al. 2020 eq. 4-6) does not exist. Shrinking towards the scaled identity
    with the asymptotically optimal weight of Ledoit & Wolf (2004, Theorem 3.1 with Lemmas 3.3-3.4:
    a = beta / delta, delta = ||S - m I||_F^2 / d, beta = min(delta, sum_k ||x_k x_k^T - S||_F^2 / (n^2 d)),
    the x_k being the centred samples) gives a well-conditioned, invertible estimate at no tuning cost.

    Reproduces ``sklearn.covariance.ledoit_wolf_shrinkage`` (assume_centered=False) term by term, but uses two
    identities so that the cost does not grow with d^2 beyond forming S itself:
    sum_ij (X2^T X2)_ij = sum_k ||x_k||^4 and ||X^T X||_F = ||X X^T||_F.

    X has shape (..., n, d). Returns the covariance (..., d, d) and the shrinkage: a float for unbatched input,
    an array of shape (...) otherwise.
    """
    Xc = _centered(X)
    n, d = Xc.shape[-2:]
    emp_cov = _gram_T(Xc) / n
    if d == 1:  # a 1x1 covariance is its own scaled identity: shrinkage is irrelevant, sklearn reports 0
        shrinkage = np.zeros(Xc.shape[:-2])
    else:
        mu = np.trace(emp_cov, axis1=-2, axis2=-1) / d
        beta_raw = np.sum(np.sum(Xc**2, axis=-1) ** 2, axis=-1)  # sum_k ||x_k||^4
        if n < d:  # ||S||_F^2 from the n x n Gram matrix: cheaper when samples are few
            frob_sq = np.sum(np.matmul(Xc, np.swapaxes(Xc, -1, -2)) ** 2, axis=(-2, -1)) / n**2
        else:
            frob_sq = np.sum(emp_cov**2, axis=(-2, -1))
        beta = (beta_raw / n - frob_sq) / (d * n)
        delta = (frob_sq - d * mu**2) / d  # ||S - m I||_F^2 / d
        beta = np.minimum(beta, delta)  # a > 1 would flip the sign of the covariances
        shrinkage = np.divide(beta, delta, out=np.zeros_like(beta), where=beta != 0)
        emp_cov = (1.0 - shrinkage)[..., None, None] * emp_cov
        np.einsum("...ii->...i", emp_cov)[...] += (shrinkage * mu)[..., None]
    if np.ndim(shrinkage) == 0:
        return emp_cov, float(shrinkage)
    return emp_cov, shrinkage


def precision(covariance: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of symmetric covariance matrices (..., d, d), via an eigendecomposition.

    A plain inverse fails or explodes when a feature is constant or n < d (empirical covariance), which
    happens on real cameras (dead channels after ReLU, a static background). Eigenvalues at or below
    ``d * eps * max|eigenvalue|`` are treated as zero, exactly as ``scipy.linalg.pinvh`` does, so the
    Mahalanobis distance simply ignores directions in which the good data showed no variation.
    """
    cov = np.asarray(covariance, dtype=np.float64)
    eigval, eigvec = np.linalg.eigh(cov)
    cutoff = cov.shape[-1] * np.finfo(np.float64).eps * np.max(np.abs(eigval), axis=-1, keepdims=True)
    keep = np.abs(eigval) > cutoff
    inv_val = np.where(keep, 1.0 / np.where(keep, eigval, 1.0), 0.0)
    return np.matmul(eigvec * inv_val[..., None, :], np.swapaxes(eigvec, -1, -2))


def mahalanobis(X: np.ndarray, mean: np.ndarray, precision_matrix: np.ndarray) -> np.ndarray:
    """Mahalanobis distance sqrt((x - mu)^T P (x - mu)) of each row of X (Rippel et al. 2020, eq. 6).

    Shapes: X (n, d) with mean (d,) and P (d, d) gives (n,); batched X (n, L, d) with mean (L, d) and
    P (L, d, d) gives (n, L) (one Gaussian per PaDiM location). The quadratic form is evaluated in the
    precision's dtype, so a float32 precision (see `compact_precision`) also halves the working memory.
    The difference x - mu is taken in float64 first because features and means are close for good parts and
    the subtraction would otherwise cancel digits.
    """
    P = np.asarray(precision_matrix)
    diff = (np.asarray(X, dtype=np.float64) - np.asarray(mean, dtype=np.float64)).astype(P.dtype, copy=False)
    if P.ndim == 2:
        quad = np.einsum("nd,nd->n", diff @ P, diff)
    else:
        diff_l = np.swapaxes(diff, 0, 1)  # (L, n, d)
        quad = np.swapaxes(np.sum(np.matmul(diff_l, P) * diff_l, axis=-1), 0, 1)
    # Tiny negative values come from rounding when x is at the mean; they are zero distances.
    return np.sqrt(np.maximum(quad.astype(np.float64, copy=False), 0.0))


def compact_precision(precision_matrix: np.ndarray, probe: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Return the precision as float32 when that moves no probe score by more than FLOAT32_SCORE_RTOL.

    A Ledoit-Wolf precision is well conditioned and float32 changes the scores by about 1e-7 relative, which
    halves the memory a camera holds per level (or per PaDiM location). An empirical (pseudo-)inverse can have
    a condition number near 1/eps, where float32 rounding changes scores by orders of magnitude; there the
    float64 matrix is kept. Deciding on the training samples themselves (``probe``) checks the very
    region where the threshold is set, instead of trusting a condition-number bound.
    """
    P64 = np.asarray(precision_matrix, dtype=np.float64)
    P32 = P64.astype(np.float32)
    exact = mahalanobis(probe, mean, P64)
    approx = mahalanobis(probe, mean, P32)
    # A probe sitting exactly on the mean has score 0; judge it against the typical score instead.
    scale = np.maximum(exact, 1e-6 * np.max(exact, initial=np.finfo(np.float64).tiny))
    if np.all(np.abs(approx - exact) <= FLOAT32_SCORE_RTOL * scale):
        return P32
    return P64
