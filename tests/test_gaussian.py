"""The numpy Gaussian statistics against scikit-learn / scipy (test-only dependencies)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import pinvh
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.covariance import EmpiricalCovariance, LedoitWolf

from edge_agent.learn.detectors import gaussian


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-300))


def correlated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 5


CASES = [(10, 50, False), (10, 50, True), (200, 30, False), (200, 30, True), (40, 40, True), (3, 2, False)]


@pytest.mark.parametrize(("n", "d", "constant"), CASES)
def test_ledoit_wolf_matches_sklearn(n: int, d: int, constant: bool) -> None:
    rng = np.random.default_rng(n * 1000 + d)
    X = correlated(rng, n, d)
    if constant:
        X[:, 1] = 3.25  # a dead channel
    ref = LedoitWolf().fit(X)
    cov, shrinkage = gaussian.ledoit_wolf(X)
    assert isinstance(shrinkage, float)
    assert rel_err(cov, ref.covariance_) < 1e-6
    assert abs(shrinkage - ref.shrinkage_) <= 1e-6 * max(ref.shrinkage_, 1e-12)
    assert rel_err(gaussian.precision(cov), ref.precision_) < 1e-6


def test_ledoit_wolf_single_feature_and_all_constant() -> None:
    X = np.arange(6.0)[:, None]
    cov, shrinkage = gaussian.ledoit_wolf(X)
    ref = LedoitWolf().fit(X)
    assert shrinkage == 0.0 and rel_err(cov, ref.covariance_) < 1e-12
    cov0, shrinkage0 = gaussian.ledoit_wolf(np.ones((5, 4)))
    assert shrinkage0 == 0.0 and np.all(cov0 == 0)
    assert np.all(gaussian.precision(cov0) == 0)  # no variation anywhere: every direction ignored, no inf/NaN


def test_ledoit_wolf_batched_equals_per_batch() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5, 12, 7))
    cov, shrinkage = gaussian.ledoit_wolf(X)
    assert cov.shape == (5, 7, 7) and shrinkage.shape == (5,)
    for i in range(5):
        c, s = gaussian.ledoit_wolf(X[i])
        np.testing.assert_allclose(cov[i], c, rtol=1e-12)
        assert shrinkage[i] == pytest.approx(s, rel=1e-12)


def test_empirical_covariance_and_pseudo_inverse_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    X = correlated(rng, 60, 8)
    X[:, 3] = -1.0
    ref = EmpiricalCovariance().fit(X)
    cov = gaussian.empirical_covariance(X)
    assert rel_err(cov, ref.covariance_) < 1e-10
    P = gaussian.precision(cov)
    assert np.all(np.isfinite(P))
    assert rel_err(P, pinvh(cov)) < 1e-6
    assert rel_err(P, ref.precision_) < 1e-6


def test_mahalanobis_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    X = correlated(rng, 50, 6)
    mean, P = X.mean(0), np.linalg.inv(np.cov(X.T))
    Q = correlated(rng, 9, 6)
    expected = [scipy_mahalanobis(q, mean, P) for q in Q]
    np.testing.assert_allclose(gaussian.mahalanobis(Q, mean, P), expected, rtol=1e-10)


def test_mahalanobis_batched_over_locations() -> None:
    rng = np.random.default_rng(4)
    L, n, d = 3, 5, 4
    means = rng.normal(size=(L, d))
    Ps = np.stack([np.linalg.inv(np.cov(rng.normal(size=(30, d)).T)) for _ in range(L)])
    X = rng.normal(size=(n, L, d))
    out = gaussian.mahalanobis(X, means, Ps)
    assert out.shape == (n, L)
    for i in range(n):
        for loc in range(L):
            assert out[i, loc] == pytest.approx(scipy_mahalanobis(X[i, loc], means[loc], Ps[loc]), rel=1e-10)


def test_compact_precision_keeps_float32_only_when_scores_survive() -> None:
    rng = np.random.default_rng(5)
    X = correlated(rng, 30, 20)
    cov, _ = gaussian.ledoit_wolf(X)
    P = gaussian.compact_precision(gaussian.precision(cov), X, X.mean(0))
    assert P.dtype == np.float32

    # Ill-conditioned precision whose entries cancel: float32 rounding would wreck the score.
    c = np.sqrt(0.5)
    Q = np.array([[c, -c], [c, c]])
    P_bad = Q @ np.diag([1e10, 1.0]) @ Q.T
    probe = (Q[:, 1] * np.array([[1.0], [2.0], [3.0]]))  # along the small-eigenvalue direction
    kept = gaussian.compact_precision(P_bad, probe, np.zeros(2))
    assert kept.dtype == np.float64
    np.testing.assert_allclose(gaussian.mahalanobis(probe, np.zeros(2), kept), [1.0, 2.0, 3.0], rtol=1e-6)
