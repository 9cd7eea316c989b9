"""The combined detector: parts normalised out of fold, one score, one threshold, persisted whole."""

import numpy as np
import pytest

from edge_agent.augment import PRESETS, augment, group_indices
from edge_agent.detectors import CombinedDetector, make_detector
from edge_agent.detectors.persistence import load_detector, save_detector
from edge_agent.features import FeatureExtractor
from edge_agent.fitting import FitSettings, fit_features
from edge_agent.images import read_image
from edge_agent.metrics import roc_auc
from edge_agent.threshold import calibrate_threshold


@pytest.fixture(scope="module")
def bottle_features(shipped_model, bottle_dir):
    ex = FeatureExtractor(shipped_model)
    train = [read_image(p) for p in sorted((bottle_dir / "train" / "good").iterdir())[:6]]
    feats = ex.embed(augment(train, PRESETS["bottle"], 2, 0))
    good = sorted((bottle_dir / "test" / "good").iterdir())[:6]
    bad = sorted((bottle_dir / "test" / "broken_small").iterdir())[:6]
    test = ex.embed([read_image(p) for p in good + bad])
    return feats, test, np.array([0] * len(good) + [1] * len(bad))


def test_scores_are_exp_of_mean_z_of_the_parts(bottle_features):
    feats, test, labels = bottle_features
    det = CombinedDetector(max_folds=3).fit(feats, groups=group_indices(6, 2))
    parts = np.stack([p.score_samples(test) for p in det.parts_])
    z = (parts - det.loc_[:, None]) / det.scale_[:, None]
    np.testing.assert_allclose(det.score_samples(test), np.exp(z.mean(axis=0)), rtol=1e-10)
    assert det.oof_scores_.shape == (6,) and np.all(det.oof_scores_ > 0)
    assert np.median(np.log(det.oof_scores_)) == pytest.approx(0, abs=0.5)  # normalised: typical good near z = 0
    assert roc_auc(labels, det.score_samples(test)) >= 0.9
    assert det.supports_heatmaps and det.heatmaps(test).shape == (12, 14, 14)


def test_threshold_uses_the_out_of_fold_scores(bottle_features):
    feats, _, _ = bottle_features
    result = fit_features(feats, 6, FitSettings(detector="combined", factor=2, max_folds=3))
    np.testing.assert_array_equal(result.loo_scores, result.detector.oof_scores_)
    assert result.threshold == pytest.approx(calibrate_threshold(result.loo_scores))
    assert result.threshold >= np.max(result.loo_scores) * 1.1  # never below the empirical quantile


def test_round_trip_through_the_detector_file(bottle_features, tmp_path):
    feats, test, _ = bottle_features
    det = make_detector("combined", max_folds=2).fit(feats, groups=group_indices(6, 2))
    path = save_detector(tmp_path / "c.edet", det, {"model_sha256": "x"})
    loaded = load_detector(path, "x").detector
    np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))
    np.testing.assert_array_equal(loaded.heatmaps(test), det.heatmaps(test))


def test_bad_parameters():
    feats = {"pooled/stage4": np.random.default_rng(0).normal(size=(6, 4))}
    with pytest.raises(ValueError, match="at least two"):
        CombinedDetector(parts=("mahalanobis",)).fit(feats)
    with pytest.raises(ValueError, match="max_folds"):
        CombinedDetector(parts=("mahalanobis", "knn"), max_folds=1).fit(feats)
    det = CombinedDetector(parts=("mahalanobis", "knn"), max_folds=3).fit(feats)  # no groups: each sample its own
    assert det.oof_scores_.shape == (6,) and not det.supports_heatmaps
