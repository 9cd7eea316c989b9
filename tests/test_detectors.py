"""Detectors on synthetic features: reference agreement, anomaly ordering, validation errors."""

from __future__ import annotations


import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.neighbors import NearestNeighbors

from edge_agent.learn.detectors import (
    DEFAULT_DETECTOR,
    DETECTOR_NAMES,
    CombinedDetector,
    KNNDetector,
    MahalanobisDetector,
    PadimDetector,
    make_detector,
)
from edge_agent.learn.detectors import knn as knn_module
from edge_agent.learn.detectors import registry
from tests.synthetic import spatial

POOLED_DIMS = {"pooled/stage4": 12, "pooled/stage6": 20, "pooled/stage7": 30}


def pooled(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    return {k: (rng.normal(size=(n, d)) + shift).astype(np.float32) for k, d in POOLED_DIMS.items()}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---------------------------------------------------------------- registry


def test_registry_names_and_unknown_name() -> None:
    assert set(DETECTOR_NAMES) == {"mahalanobis", "mahalanobis-empirical", "knn", "padim", "patch-knn", "combined"}
    assert DEFAULT_DETECTOR == "combined"  # the shipped default; docs/results.md says why
    assert isinstance(make_detector(), CombinedDetector)
    assert registry.make_detector is make_detector and registry.DEFAULT_DETECTOR is DEFAULT_DETECTOR
    assert make_detector("mahalanobis").covariance == "ledoit-wolf"
    assert make_detector("mahalanobis-empirical").covariance == "empirical"
    assert make_detector("knn", k=3).k == 3
    assert make_detector("padim", n_channels=5).n_channels == 5
    with pytest.raises(ValueError, match="mahalanobis-empirical.*knn.*padim"):
        make_detector("isolation-forest")
    with pytest.raises(ValueError, match="fixes"):
        make_detector("mahalanobis-empirical", covariance="ledoit-wolf")


# ---------------------------------------------------------------- Mahalanobis


def test_mahalanobis_matches_sklearn_and_scipy(rng: np.random.Generator) -> None:
    train, test = pooled(rng, 25), pooled(rng, 7, shift=0.5)  # n=25 < 30 dims on the last level
    det = MahalanobisDetector().fit(train)
    expected = np.zeros(7)
    for i, name in enumerate(det.levels_):
        ref = LedoitWolf().fit(train[name].astype(np.float64))
        assert det.shrinkages_[i] == pytest.approx(ref.shrinkage_, rel=1e-6)
        np.testing.assert_allclose(det.means_[i], ref.location_, rtol=1e-6)
        expected += [scipy_mahalanobis(x, ref.location_, ref.precision_) for x in test[name].astype(np.float64)]
    np.testing.assert_allclose(det.score_samples(test), expected, rtol=1e-4)
    assert det.levels_ == ("pooled/stage4", "pooled/stage6", "pooled/stage7")
    assert det.n_train_ == 25
    assert all(p.dtype == np.float32 for p in det.precisions_)  # LW precision is well conditioned


def test_empirical_mahalanobis_matches_sklearn(rng: np.random.Generator) -> None:
    train, test = pooled(rng, 200), pooled(rng, 5)
    det = make_detector("mahalanobis-empirical").fit(train)
    expected = sum(
        np.sqrt(EmpiricalCovariance().fit(train[k].astype(np.float64)).mahalanobis(test[k].astype(np.float64)))
        for k in det.levels_
    )
    np.testing.assert_allclose(det.score_samples(test), expected, rtol=1e-4)
    assert np.all(det.shrinkages_ == 0)


def test_higher_score_means_more_anomalous(rng: np.random.Generator) -> None:
    for name in ("mahalanobis", "mahalanobis-empirical", "knn"):
        det = make_detector(name).fit(pooled(rng, 120))
        good, bad = det.score_samples(pooled(rng, 50)), det.score_samples(pooled(rng, 50, shift=1.5))
        assert bad.min() > np.median(good), name


def test_levels_param_narrows_and_spatial_keys_are_ignored(rng: np.random.Generator) -> None:
    feats = {**pooled(rng, 10), **spatial(rng, 10)}
    det = MahalanobisDetector(levels=("pooled/stage7",)).fit(feats)
    assert det.levels_ == ("pooled/stage7",) and len(det.means_) == 1
    assert MahalanobisDetector().fit(feats).levels_ == tuple(POOLED_DIMS)
    # Scoring needs only the fitted levels.
    assert det.score_samples({"pooled/stage7": feats["pooled/stage7"][:2]}).shape == (2,)


def test_params_api(rng: np.random.Generator) -> None:
    det = MahalanobisDetector()
    assert det.get_params() == {"covariance": "ledoit-wolf", "levels": None}
    assert det.set_params(covariance="empirical") is det and det.covariance == "empirical"
    with pytest.raises(ValueError, match="unknown parameters"):
        det.set_params(shrinkage=0.1)
    assert "covariance='empirical'" in repr(det)
    with pytest.raises(ValueError, match="covariance must be one of"):
        MahalanobisDetector(covariance="oas").fit(pooled(rng, 5))


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "padim"])
def test_validation_errors(name: str, rng: np.random.Generator) -> None:
    make = spatial if name == "padim" else pooled
    good = make(rng, 6)
    level = next(iter(good))
    with pytest.raises(ValueError, match="at least 2 samples"):
        make_detector(name).fit(make(rng, 1))
    bad = {k: v.copy() for k, v in good.items()}
    bad[level].flat[3] = np.nan
    with pytest.raises(ValueError, match=f"{level}.*NaN"):
        make_detector(name).fit(bad)
    bad[level].flat[3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_detector(name).fit(bad)
    with pytest.raises(ValueError, match="not fitted"):
        make_detector(name).score_samples(good)
    uneven = dict(good)
    uneven[level] = uneven[level][:4]
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        make_detector(name).fit(uneven)

    det = make_detector(name).fit(good)
    missing = {k: v for k, v in good.items() if k != level}
    with pytest.raises(ValueError, match=f"missing feature levels.*{level}"):
        det.score_samples(missing)
    wider = dict(good)
    wider[level] = np.concatenate([good[level], good[level][..., :1]], axis=-1)
    with pytest.raises(ValueError, match=f"{level}.*per-sample shape"):
        det.score_samples(wider)
    other_family = pooled(rng, 6) if name == "padim" else spatial(rng, 6)
    with pytest.raises(ValueError, match="no '.*' feature levels"):
        make_detector(name).fit(other_family)


def test_level_shape_and_name_errors(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match=r"pooled/stage4.*\(n, d\)"):
        MahalanobisDetector().fit({"pooled/stage4": np.zeros((5, 2, 2))})
    with pytest.raises(ValueError, match="are not 'pooled/\\*' levels"):
        MahalanobisDetector(levels=("spatial/stage3",)).fit(spatial(rng, 4))
    with pytest.raises(ValueError, match="not the string"):
        MahalanobisDetector(levels="pooled/stage4").fit(pooled(rng, 4))


# ---------------------------------------------------------------- KNN


@pytest.mark.parametrize("k", [1, 3])
def test_knn_matches_sklearn_bruteforce(k: int, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = pooled(rng, 40), pooled(rng, 13, shift=0.3)
    det = KNNDetector(k=k).fit(train)
    assert det.train_.dtype == np.float32 and det.train_.shape == (40, sum(POOLED_DIMS.values()))
    concat = lambda f: np.concatenate([f[n] for n in det.levels_], axis=1).astype(np.float64)  # noqa: E731
    dist, _ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(concat(train)).kneighbors(concat(test))
    expected = (dist**2).mean(axis=1)
    np.testing.assert_allclose(det.score_samples(test), expected, rtol=1e-8)
    # Tiny blocks: the batched path must give the same numbers.
    monkeypatch.setattr(knn_module, "BLOCK_ELEMENTS", 50)
    np.testing.assert_allclose(det.score_samples(test), expected, rtol=1e-8)
    # A training sample is its own nearest neighbour.
    if k == 1:
        assert np.allclose(det.score_samples({n: v[:3] for n, v in train.items()}), 0.0, atol=1e-6)


def test_knn_rejects_bad_k(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        KNNDetector(k=0).fit(pooled(rng, 5))
    with pytest.raises(ValueError, match="exceeds the number of training samples"):
        KNNDetector(k=6).fit(pooled(rng, 5))


# ---------------------------------------------------------------- PaDiM


def test_padim_finds_local_anomaly(rng: np.random.Generator) -> None:
    det = PadimDetector(n_channels=16, seed=3).fit(spatial(rng, 60))
    assert det.grid_ == (16, 16)
    assert det.channel_indices_.shape == (16,) and np.all(np.diff(det.channel_indices_) > 0)
    good = spatial(rng, 10)
    bad = spatial(rng, 1)
    bad["spatial/stage3"][0, 11:13, 4:6, :] += 2.5  # a 2x2 defect on the finest map
    maps = det.heatmaps(bad)
    assert maps.shape == (1, 16, 16) and maps.dtype == np.float32
    y, x = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert 10 <= y <= 13 and 3 <= x <= 6
    assert det.score_samples(bad)[0] > det.score_samples(good).max()
    both = det.score_and_heatmaps(bad)
    np.testing.assert_array_equal(both[0], det.score_samples(bad))
    np.testing.assert_array_equal(both[1], maps)


def test_padim_channel_subset_is_seeded_and_memory_reported(rng: np.random.Generator) -> None:
    feats = spatial(rng, 8)  # 8 + 16 = 24 channels in total
    a = PadimDetector(n_channels=10, seed=1).fit(feats)
    b = PadimDetector(n_channels=10, seed=1).fit(feats)
    c = PadimDetector(n_channels=10, seed=2).fit(feats)
    np.testing.assert_array_equal(a.channel_indices_, b.channel_indices_)
    assert not np.array_equal(a.channel_indices_, c.channel_indices_)
    np.testing.assert_array_equal(a.score_samples(feats), b.score_samples(feats))
    assert PadimDetector(n_channels=500).fit(feats).channel_indices_.tolist() == list(range(24))
    assert a.precisions_.shape == (256, 10, 10)
    assert a.nbytes_ == a.means_.nbytes + a.precisions_.nbytes + a.shrinkages_.nbytes + a.channel_indices_.nbytes + 16
    with pytest.raises(ValueError, match="sigma"):
        PadimDetector(sigma=-1).fit(feats)
    unblurred = PadimDetector(n_channels=10, seed=1, sigma=0).fit(feats).heatmaps(feats)
    assert unblurred.std() > a.heatmaps(feats).std()  # blurring smooths the map


def test_padim_at_camera_scale_keeps_one_gaussian_per_location(rng: np.random.Generator) -> None:
    """Shapes and memory at the shipped model's size (its fit time is measured by bench/, not here)."""
    feats = {
        "spatial/stage3": rng.normal(size=(110, 28, 28, 40)).astype(np.float32),
        "spatial/stage4": rng.normal(size=(110, 14, 14, 80)).astype(np.float32),
    }
    det = PadimDetector(n_channels=100).fit(feats)
    assert det.precisions_.shape == (784, 100, 100)
    assert det.nbytes_ < 40e6
