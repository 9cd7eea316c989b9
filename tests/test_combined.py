"""The combined detector: parts normalised out of fold, weighted by synthetic damage, one score, one threshold."""

import numpy as np
import pytest

from edge_agent.learn.augment import PRESETS, augment, group_indices
from edge_agent.learn.detectors import CombinedDetector, make_detector
from edge_agent.learn.detectors.persistence import DetectorFileError, load_detector, save_detector
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.fitting import FitSettings, fit_features, fit_images, split_defects
from edge_agent.capture.images import read_image
from edge_agent.offline.metrics import roc_auc
from edge_agent.learn.pseudo_defects import DEFECTS_PER_IMAGE, pseudo_defects
from edge_agent.learn.threshold import calibrate_threshold
from tests.synthetic import spatial


@pytest.fixture(scope="module")
def bottle_features(shipped_model, bottle_dir):
    ex = FeatureExtractor(shipped_model)
    train = [read_image(p) for p in sorted((bottle_dir / "train" / "good").iterdir())[:6]]
    feats = ex.embed(augment(train, PRESETS["bottle"], 2, 0))
    damaged = ex.embed(pseudo_defects(train, DEFECTS_PER_IMAGE, 0))
    good = sorted((bottle_dir / "test" / "good").iterdir())[:6]
    bad = sorted((bottle_dir / "test" / "broken_small").iterdir())[:6]
    test = ex.embed([read_image(p) for p in good + bad])
    return feats, damaged, test, np.array([0] * len(good) + [1] * len(bad))


def test_scores_are_exp_of_weighted_z_of_the_parts(bottle_features):
    feats, damaged, test, labels = bottle_features
    det = CombinedDetector(max_folds=3).fit(feats, groups=group_indices(6, 2), defects=split_defects(damaged, 6))
    parts = np.stack([p.score_samples(test) for p in det.parts_])
    z = (np.log(parts) - det.loc_[:, None]) / det.scale_[:, None]
    np.testing.assert_allclose(det.score_samples(test), np.exp((det.weights_ @ det.scale_) * (det.weights_ @ z)),
                               rtol=1e-10)
    assert det.weights_.sum() == pytest.approx(1.0) and np.all(det.weights_ >= 0)
    assert det.weights_[1] > det.weights_[0]  # a broken bottle neck is local: the patch memory sees the damage best
    assert det.oof_scores_.shape == (6,) and np.all(det.oof_scores_ > 0)
    assert np.median(np.log(det.oof_scores_)) == pytest.approx(0, abs=0.5)  # normalised: typical good near z = 0
    assert roc_auc(labels, det.score_samples(test)) >= 0.9
    assert det.supports_heatmaps and det.heatmaps(test).shape == (12, 14, 14)
    scores, maps = det.score_and_heatmaps(test)  # one search for both, as the camera's alert path uses it
    np.testing.assert_array_equal(scores, det.score_samples(test))
    np.testing.assert_array_equal(maps, det.heatmaps(test))
    patch = det.parts_[1]
    np.testing.assert_allclose(maps, patch.heatmaps(test) / np.exp(det.loc_[1]), rtol=1e-5)  # 1 = typical good
    assert np.median(maps[labels == 1].max(axis=(1, 2))) > np.median(maps[labels == 0].max(axis=(1, 2)))
    assert set(det.describe()["weights"]) == {"mahalanobis", "patch-knn"}


def _pooled_and_spatial(rng: np.random.Generator, n: int, pooled_shift: float = 0.0, patch_shift: float = 0.0):
    feats = {"pooled/stage4": rng.normal(size=(n, 6)) + pooled_shift, **spatial(rng, n)}
    feats["spatial/stage3"][:, 5:8, 5:8] += patch_shift  # a local blemish
    return feats


@pytest.mark.parametrize(("pooled_shift", "patch_shift", "trusted"), [(0.0, 4.0, 1), (4.0, 0.0, 0)])
def test_the_part_that_sees_the_damage_gets_the_weight(pooled_shift, patch_shift, trusted):
    rng = np.random.default_rng(0)
    feats = _pooled_and_spatial(rng, 12)
    damaged = _pooled_and_spatial(rng, 12, pooled_shift, patch_shift)
    det = CombinedDetector(max_folds=4).fit(feats, defects=split_defects(damaged, 12))
    assert det.weights_[trusted] > 0.8, det.weights_
    blind = CombinedDetector(max_folds=4).fit(feats, defects=split_defects(_pooled_and_spatial(rng, 12), 12))
    assert np.all(blind.damage_shift_ < 1)  # damage neither part sees says nothing: no part is silenced by noise
    np.testing.assert_array_equal(blind.weights_, [0.5, 0.5])
    np.testing.assert_array_equal(CombinedDetector(max_folds=4).fit(feats).weights_, [0.5, 0.5])  # no damage given


def test_a_part_without_a_say_is_not_run_and_gives_no_map(monkeypatch):
    rng = np.random.default_rng(2)
    feats = _pooled_and_spatial(rng, 12)
    det = CombinedDetector(max_folds=4).fit(feats, defects=split_defects(_pooled_and_spatial(rng, 12, 4.0, 0.0), 12))
    det.weights_ = np.array([1.0, 0.0])  # what damage only the Gaussian sees can give
    probe = _pooled_and_spatial(rng, 3)
    expected = np.exp(np.clip(det.scale_[0] * det._z(0, det.parts_[0].score_samples(probe)), -50, 50))

    def not_run(*_):
        raise AssertionError("a part with weight 0 was run")

    monkeypatch.setattr(det.parts_[1], "score_samples", not_run)
    np.testing.assert_allclose(det.score_samples(probe), expected)
    assert not det.supports_heatmaps
    with pytest.raises(ValueError, match="no part .* with a say in the score gives a heat map"):
        det.heatmaps(probe)


def test_damaged_copies_must_match_the_good_images():
    rng = np.random.default_rng(1)
    feats = _pooled_and_spatial(rng, 6)
    with pytest.raises(ValueError, match="damaged copies for 3 images, but 6 good images"):
        CombinedDetector(max_folds=3).fit(feats, defects=split_defects(_pooled_and_spatial(rng, 3), 3))
    wrong = _pooled_and_spatial(rng, 6)
    wrong["pooled/stage4"] = wrong["pooled/stage4"][:, :4]
    with pytest.raises(ValueError, match="damaged copies of good image 0 do not match the good images: .*pooled/stage4"):
        CombinedDetector(max_folds=3).fit(feats, defects=split_defects(wrong, 6))
    with pytest.raises(ValueError, match="7 damaged copies cannot be split evenly over 6 good images"):
        split_defects(_pooled_and_spatial(rng, 7), 6)


def test_fit_images_embeds_damaged_copies_only_for_the_combined_detector(shipped_model, bottle_dir):
    ex = FeatureExtractor(shipped_model)
    train = [read_image(p) for p in sorted((bottle_dir / "train" / "good").iterdir())[:4]]
    calls = []

    def embed(images):
        calls.append(len(images))
        return ex.embed(images)

    fit_images(embed, train, FitSettings(detector="patch-knn", factor=1, max_folds=2, policy=PRESETS["bottle"]))
    assert calls == [8]
    calls.clear()
    settings = FitSettings(detector="combined", factor=1, max_folds=2, policy=PRESETS["bottle"])
    result = fit_images(embed, train, settings)
    assert calls == [8, 4 * DEFECTS_PER_IMAGE]
    assert set(result.timings) == {"augment_embed", "damage_embed", "fit", "calibrate"}
    summary = result.metadata(settings)["detector_summary"]  # saved with the detector, reported by a retrain
    assert summary["weights"] == pytest.approx(dict(zip(("mahalanobis", "patch-knn"), result.detector.weights_)), abs=1e-4)
    assert not np.allclose(result.detector.weights_, 0.5)  # set by the damage, not the equal-weight fallback


def test_threshold_uses_the_out_of_fold_scores(bottle_features):
    feats, damaged, _, _ = bottle_features
    result = fit_features(feats, 6, FitSettings(detector="combined", factor=2, max_folds=3), split_defects(damaged, 6))
    np.testing.assert_array_equal(result.loo_scores, result.detector.oof_scores_)
    assert result.threshold == pytest.approx(calibrate_threshold(result.loo_scores))
    assert result.threshold >= np.max(result.loo_scores) * 1.1  # never below the empirical quantile


def test_round_trip_through_the_detector_file(bottle_features, tmp_path):
    feats, damaged, test, _ = bottle_features
    det = make_detector("combined", max_folds=2).fit(feats, groups=group_indices(6, 2), defects=split_defects(damaged, 6))
    path = save_detector(tmp_path / "c.edet", det, {"model_sha256": "x"})
    loaded = load_detector(path, "x").detector
    np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))
    np.testing.assert_array_equal(loaded.heatmaps(test), det.heatmaps(test))
    np.testing.assert_array_equal(loaded.weights_, det.weights_)


def test_a_file_from_the_equal_weight_version_asks_for_a_retrain(bottle_features, tmp_path, monkeypatch):
    feats, _, _, _ = bottle_features
    det = make_detector("combined", max_folds=2).fit(feats, groups=group_indices(6, 2))
    old = det._get_arrays()
    monkeypatch.setattr(det, "_get_arrays", lambda: {k: v for k, v in old.items() if k not in ("weights", "damage_shift")})
    path = save_detector(tmp_path / "old.edet", det, {"model_sha256": "x"})
    with pytest.raises(DetectorFileError, match="earlier version .* retrain"):
        load_detector(path, "x")


def test_bad_parameters():
    feats = {"pooled/stage4": np.random.default_rng(0).normal(size=(6, 4))}
    with pytest.raises(ValueError, match="at least two"):
        CombinedDetector(parts=("mahalanobis",)).fit(feats)
    with pytest.raises(ValueError, match="max_folds"):
        CombinedDetector(parts=("mahalanobis", "knn"), max_folds=1).fit(feats)
    det = CombinedDetector(parts=("mahalanobis", "knn"), max_folds=3).fit(feats)  # no groups: each sample its own
    assert det.oof_scores_.shape == (6,) and not det.supports_heatmaps
