"""The combined detector: parts normalised out of fold, weighted by synthetic damage, one score, one threshold."""

import numpy as np
import pytest
from scipy.stats import t as student_t

from edge_agent.capture.images import read_image
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.augment import PRESETS, augment, group_indices
from edge_agent.learn.detectors import CombinedDetector, make_detector
from edge_agent.learn.detectors.persistence import DetectorFileError, load_detector, save_detector
from edge_agent.learn.fitting import FitSettings, fit_features, fit_images, split_defects
from edge_agent.learn.pseudo_defects import DEFECTS_PER_IMAGE, pseudo_defects
from edge_agent.offline.metrics import roc_auc
from tests.synthetic import spatial


@pytest.fixture(scope="module")
def real_features(shipped_model, real_set):
    ex = FeatureExtractor(shipped_model)
    train = [read_image(p) for p in real_set.train_good[:6]]
    feats = ex.embed(augment(train, PRESETS["bottle"], 2, 0))
    damaged = ex.embed(pseudo_defects(train, DEFECTS_PER_IMAGE, 0))
    good, bad = real_set.test_good[:6], real_set.defects[:6]
    test = ex.embed([read_image(p) for p in good + bad])
    return feats, damaged, test, np.array([0] * len(good) + [1] * len(bad))


def test_the_combined_score_ranks_real_defects_above_good_parts(real_features):
    feats, damaged, test, labels = real_features
    det = CombinedDetector(max_folds=3).fit(feats, groups=group_indices(6, 2), defects=split_defects(damaged, 6))
    assert det.weights_.sum() == pytest.approx(1.0) and np.all(det.weights_ >= 0)
    # The synthetic damage is local (a pasted piece, a scratch, a stain): the patch memory sees it best.
    assert det.weights_[1] > det.weights_[0]
    assert det.oof_scores_.shape == (6,) and np.all(det.oof_scores_ > 0)
    assert np.median(np.log(det.oof_scores_)) == pytest.approx(0, abs=0.5)  # normalised: typical good near 1
    scores = det.score_samples(test)
    # Bottle (broken_large) and elpv mono cells both measured 1.0 with six images of each.
    assert roc_auc(labels, scores) >= 0.9
    assert det.supports_heatmaps and det.heatmaps(test).shape == (12, 14, 14)
    both, maps = det.score_and_heatmaps(test)  # one search for both, as the camera's alert path uses it
    np.testing.assert_array_equal(both, scores)
    np.testing.assert_array_equal(maps, det.heatmaps(test))
    peaks = maps.max(axis=(1, 2))
    # The map is a ratio to a typical good image (1 = typical good): good parts peak near 1, defects above.
    assert 0.5 < np.median(peaks[labels == 0]) < 2.0, peaks
    assert np.median(peaks[labels == 1]) > np.median(peaks[labels == 0])
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


def _weighted(weights, seed=2):
    """A combined detector fitted on synthetic features, then given ``weights``, and a probe for it."""
    rng = np.random.default_rng(seed)
    feats = _pooled_and_spatial(rng, 12)
    det = CombinedDetector(max_folds=4).fit(feats, defects=split_defects(_pooled_and_spatial(rng, 12, 4.0, 0.0), 12))
    det.weights_ = np.array(weights, dtype=float)
    return det, _pooled_and_spatial(rng, 8, 0.5, 0.5)


def test_a_part_without_a_say_is_not_run_changes_nothing_and_gives_no_map(monkeypatch):
    det, probe = _weighted([1.0, 0.0])  # what damage only the Gaussian sees can give
    before = det.score_samples(probe)
    gaussian = det.parts_[0].score_samples(probe)
    # The score follows the one part with a say: same order, and for one part alone its distance over the
    # typical good distance, so twice the distance is twice the score.
    np.testing.assert_array_equal(np.argsort(before), np.argsort(gaussian))
    monkeypatch.setattr(det.parts_[0], "score_samples", lambda f: 2 * gaussian)

    def not_run(*_):
        raise AssertionError("a part with weight 0 was run")

    monkeypatch.setattr(det.parts_[1], "score_samples", not_run)
    np.testing.assert_allclose(det.score_samples(probe), 2 * before, rtol=1e-12)
    assert not det.supports_heatmaps
    with pytest.raises(ValueError, match="no part .* with a say in the score gives a heat map"):
        det.heatmaps(probe)


def test_the_score_rises_with_every_part_that_has_a_say(monkeypatch):
    det, probe = _weighted([0.3, 0.7])
    parts = [p.score_samples(probe) for p in det.parts_]
    base = det.score_samples(probe)
    for i in range(2):
        ladder = []
        for factor in (0.5, 1.0, 2.0, 4.0):
            scaled = [s * factor if j == i else s for j, s in enumerate(parts)]
            for j, part in enumerate(det.parts_):
                monkeypatch.setattr(part, "score_samples", lambda f, s=scaled[j]: s)
            ladder.append(det.score_samples(probe))
        np.testing.assert_allclose(ladder[1], base, rtol=1e-12)
        assert all(np.all(hi > lo) for lo, hi in zip(ladder, ladder[1:])), f"part {i}"


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


def test_fit_images_embeds_damaged_copies_only_for_the_combined_detector(shipped_model, real_set):
    ex = FeatureExtractor(shipped_model)
    train = [read_image(p) for p in real_set.train_good[:4]]
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


def test_threshold_uses_the_out_of_fold_scores(real_features):
    feats, damaged, _, _ = real_features
    result = fit_features(feats, 6, FitSettings(detector="combined", factor=2, max_folds=3), split_defects(damaged, 6))
    np.testing.assert_array_equal(result.loo_scores, result.detector.oof_scores_)
    # The default target (0.005) is below 1/(n+1) for 6 images: a log-normal prediction bound on those scores,
    # worked out here with scipy's Student t, never below the largest score.
    logs, n = np.log(result.loo_scores), len(result.loo_scores)
    bound = np.exp(logs.mean() + student_t.ppf(1 - 0.005, n - 1) * logs.std(ddof=1) * np.sqrt(1 + 1 / n))
    assert result.threshold == pytest.approx(max(bound, np.max(result.loo_scores)), rel=1e-6)


def test_round_trip_through_the_detector_file(real_features, tmp_path):
    feats, damaged, test, _ = real_features
    det = make_detector("combined", max_folds=2).fit(feats, groups=group_indices(6, 2), defects=split_defects(damaged, 6))
    path = save_detector(tmp_path / "c.edet", det, {"model_sha256": "x"})
    loaded = load_detector(path, "x").detector
    np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))
    np.testing.assert_array_equal(loaded.heatmaps(test), det.heatmaps(test))
    np.testing.assert_array_equal(loaded.weights_, det.weights_)


def test_a_file_from_the_equal_weight_version_asks_for_a_retrain(real_features, tmp_path, monkeypatch):
    feats, _, _, _ = real_features
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
