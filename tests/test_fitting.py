"""The few-shot fit: sanity checks on the good images, then the real shipped int8 model on real images (`real_set`:
MVTec bottle, or elpv solar cells)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import t as student_t

from edge_agent.capture.images import read_image
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn import threshold
from edge_agent.learn.augment import PRESETS
from edge_agent.learn.detectors import DEFAULT_DETECTOR, make_detector
from edge_agent.learn.fitting import (
    FitError,
    FitResult,
    FitSettings,
    check_good_images,
    fit_features,
    fit_images,
    recorded_threshold_settings,
    rethreshold,
)
from edge_agent.offline.metrics import roc_auc
from tests.conftest import FEW_IMAGE_TARGET


def textured(seed: int, shape=(32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---- check_good_images -------------------------------------------------------------------------------------


def test_good_images_pass():
    check_good_images([textured(0), textured(1), textured(2, (20, 40, 3))])


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_images(n):
    with pytest.raises(FitError, match=f"got {n} good images, at least 2 are needed"):
        check_good_images([textured(i) for i in range(n)])


def test_min_images_is_configurable():
    with pytest.raises(FitError, match="got 3 good images, at least 5"):
        check_good_images([textured(i) for i in range(3)], min_images=5)


def test_black_image_is_named_by_index():
    dark = (textured(9) // 32).astype(np.uint8)  # noise, but never above 7: a covered lens
    with pytest.raises(FitError, match=r"good image 1 is black \(max value 7\)"):
        check_good_images([textured(0), dark, textured(2)])


def test_flat_image_is_named_by_index():
    grey = np.full((32, 32, 3), 128, np.uint8)
    with pytest.raises(FitError, match=r"good image 2 is flat \(std 0.00\)"):
        check_good_images([textured(0), textured(1), grey])


def test_dim_but_not_black_image_passes():
    dim = np.clip(textured(3) // 8 + 10, 0, 255).astype(np.uint8)  # max 41: dark, but something is in view
    check_good_images([textured(0), dim])


def test_identical_images_are_named_by_index():
    a = textured(0)
    with pytest.raises(FitError, match=r"good images 0 and 2 are identical"):
        check_good_images([a, textured(1), a.copy(), textured(3)])


def test_images_identical_on_the_subsampled_grid_but_not_elsewhere_pass():
    a = textured(0)
    b = a.copy()
    b[1, 1, 0] ^= 0xFF  # off the every-4th-pixel grid the quick digest looks at
    check_good_images([a, b])


# ---- the real model on real images -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor(shipped_model):
    return FeatureExtractor(shipped_model)


@pytest.fixture(scope="module")
def real_images(real_set):
    def first(paths, n):
        assert len(paths) >= n, f"{real_set.name} holds fewer than {n} images where {n} are needed"
        return [read_image(p) for p in paths[:n]]

    return {"train": first(real_set.train_good, 5), "good": first(real_set.test_good, 5),
            "broken": first(real_set.defects, 5)}


@pytest.fixture(scope="module")
def gaussian_fit(extractor, real_images):
    calls = []

    def embed(images):
        calls.append(len(images))
        return extractor.embed(images)

    settings = FitSettings(detector="mahalanobis", factor=2, policy=PRESETS["bottle"], seed=3)
    return fit_images(embed, real_images["train"], settings), settings, calls


def test_defaults_come_from_their_owners():
    settings = FitSettings()
    assert settings.detector == DEFAULT_DETECTOR == "combined"
    assert (settings.target_false_reject, settings.sensitivity, settings.threshold_method) == (
        threshold.DEFAULT_TARGET_FALSE_REJECT, threshold.DEFAULT_SENSITIVITY, threshold.DEFAULT_METHOD)
    assert settings.threshold_method in threshold.THRESHOLD_METHODS


def test_fit_images_on_real_images(gaussian_fit):
    result, settings, calls = gaussian_fit
    assert isinstance(result, FitResult)
    assert calls == [15]  # 5 originals + 2 augmented copies each, embedded in one call
    assert result.n_train == 5
    assert result.threshold > 0 and np.isfinite(result.threshold)
    assert result.loo_scores.shape == (5,)
    assert np.all(result.loo_scores > 0)
    # 5 scores cannot promise the default target (below 1/6): the log-normal prediction bound, by hand with
    # scipy's t, never below the largest score.
    logs = np.log(result.loo_scores)
    bound = np.exp(logs.mean() + student_t.ppf(1 - settings.target_false_reject, 4) * logs.std(ddof=1) * np.sqrt(1.2))
    assert result.threshold == pytest.approx(max(bound, result.loo_scores.max()), rel=1e-9)
    assert set(result.timings) == {"augment_embed", "fit", "calibrate"}  # no damaged copies for the Gaussian
    meta = result.metadata(settings)
    assert meta["n_train"] == 5 and meta["factor"] == 2 and meta["augmentation"] == PRESETS["bottle"].to_dict()
    assert len(meta["loo_scores"]) == 5
    assert meta["threshold"] == result.threshold and meta["threshold_guarantee"] == "extrapolated"
    assert meta["target_false_reject"] == meta["effective_target_false_reject"] == settings.target_false_reject
    assert "quantile" not in meta and "margin" not in meta


def test_real_defects_score_above_real_good_parts(gaussian_fit, extractor, real_images):
    result, _, _ = gaussian_fit
    good = result.detector.score_samples(extractor.embed(real_images["good"]))
    broken = result.detector.score_samples(extractor.embed(real_images["broken"]))
    labels = np.r_[np.zeros(5), np.ones(5)]
    auroc = roc_auc(labels, np.r_[good, broken])
    assert auroc >= 0.9, (good, broken)  # measured 1.0 on bottle (broken_large) and on elpv mono cells
    assert np.median(broken) > np.median(good)
    # Most clear defects are caught at a label-free threshold that five good images can support.
    assert np.mean(broken > threshold.calibrate_threshold(result.loo_scores, FEW_IMAGE_TARGET)) >= 0.6


def test_fit_images_is_reproducible(extractor, real_images):
    settings = FitSettings(factor=1, policy=PRESETS["bottle"], seed=11)  # the shipped (combined) detector
    a = fit_images(extractor.embed, real_images["train"][:3], settings)
    b = fit_images(extractor.embed, real_images["train"][:3], settings)
    assert a.metadata(settings)["detector"] == "combined"
    np.testing.assert_allclose(a.loo_scores, b.loo_scores, rtol=1e-10)
    assert a.threshold == pytest.approx(b.threshold, rel=1e-10)


def test_fit_images_refuses_bad_frames_before_embedding(extractor, real_images):
    calls = []
    black = np.zeros_like(real_images["train"][0])
    with pytest.raises(FitError, match="good image 1 is black"):
        fit_images(lambda ims: calls.append(ims) or extractor.embed(ims), [real_images["train"][0], black],
                   FitSettings(factor=0))
    assert calls == []


def test_threshold_override_is_used_as_is(extractor, real_images):
    settings = FitSettings(detector="mahalanobis", factor=0, threshold_override=42.0)
    result = fit_images(extractor.embed, real_images["train"][:3], settings)
    assert result.threshold == 42.0
    assert result.loo_scores.shape == (3,)


def test_two_images_without_augmentation_is_a_clear_fit_error(extractor, real_images):
    with pytest.raises(FitError, match="good images"):
        fit_images(extractor.embed, real_images["train"][:2], FitSettings(factor=0))


def test_two_images_with_augmentation_fit(extractor, real_images):
    settings = FitSettings(detector="mahalanobis", factor=2, policy=PRESETS["bottle"])
    result = fit_images(extractor.embed, real_images["train"][:2], settings)
    assert result.loo_scores.shape == (2,) and result.threshold > 0


# ---- fit_features ------------------------------------------------------------------------------------------


def synthetic(n: int, factor: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Features in `augment` order: n originals, then ``factor`` jittered copies of each."""
    rng = np.random.default_rng(seed)
    orig = {"pooled/a": rng.normal(size=(n, 5)), "pooled/b": rng.normal(size=(n, 3))}
    copies = {k: np.repeat(v, factor, axis=0) + 0.05 * rng.normal(size=(n * factor, v.shape[1]))
              for k, v in orig.items()}
    return {k: np.concatenate([orig[k], copies[k]]) for k in orig}


def test_fit_features_with_two_folds_gives_one_score_per_image():
    n, factor = 7, 2
    feats = synthetic(n, factor)
    result = fit_features(feats, n, FitSettings(detector="mahalanobis", factor=factor, max_folds=2))
    assert result.loo_scores.shape == (n,)
    assert np.all(np.isfinite(result.loo_scores)) and np.all(result.loo_scores > 0)
    # Fold f holds out images f, f + 2, ...: each original scored by a detector fitted on the other fold only,
    # its own copies excluded.
    expected = np.empty(n)
    for fold in range(2):
        held = np.arange(n) % 2 == fold
        rows = np.r_[np.flatnonzero(~held), n + np.concatenate([i * factor + np.arange(factor)
                                                               for i in np.flatnonzero(~held)])]
        det = make_detector("mahalanobis").fit({k: v[rows] for k, v in feats.items()})
        expected[held] = det.score_samples({k: v[:n][held] for k, v in feats.items()})
    np.testing.assert_allclose(result.loo_scores, expected, rtol=1e-9)


def test_fit_features_without_a_fold_limit_is_leave_one_out():
    n = 5
    feats = synthetic(n, 0, seed=4)
    result = fit_features(feats, n, FitSettings(factor=0, max_folds=None, detector="knn"))
    for i in range(n):
        rest = np.arange(n) != i
        det = make_detector("knn").fit({k: v[rest] for k, v in feats.items()})
        assert result.loo_scores[i] == pytest.approx(det.score_samples({k: v[i:i + 1] for k, v in feats.items()})[0])
    # The final detector is fitted on everything: an original scores lower than when it was held out.
    full = result.detector.score_samples(feats)
    assert np.all(full[:n] < result.loo_scores)


def test_fit_features_passes_detector_params():
    n = 6
    feats = synthetic(n, 0, seed=5)
    result = fit_features(feats, n, FitSettings(factor=0, detector="knn", detector_params={"k": 2}))
    assert result.detector.k == 2


def test_sensitivity_and_target_move_the_threshold():
    feats = synthetic(6, 1, seed=6)

    def fitted(**kwargs) -> float:
        return fit_features(feats, 6, FitSettings(detector="mahalanobis", factor=1, **kwargs)).threshold

    low, mid, high = (fitted(sensitivity=s) for s in (0.0, 0.5, 1.0))
    assert low > mid > high
    # Sensitivity 1 is the target times 10, 0 the target over 10.
    target = threshold.DEFAULT_TARGET_FALSE_REJECT
    assert high == pytest.approx(fitted(target_false_reject=10 * target))
    assert low == pytest.approx(fitted(target_false_reject=target / 10))


# ---- detectors saved before the false-reject target ---------------------------------------------------------

LOO = [1.0, 1.1, 1.25, 1.3, 1.6]


def old_metadata(**threshold_settings) -> dict:
    """What a detector saved by the quantile/margin rule carries."""
    settings = {"sensitivity": 0.5, "quantile": 0.99, "margin": 0.1, "method": "lognormal", "override": None,
                **threshold_settings}
    return {"threshold": 2.34, "loo_scores": LOO, "sensitivity": settings["sensitivity"],
            "quantile": settings["quantile"], "margin": settings["margin"], "threshold_method": settings["method"],
            "threshold_override": settings["override"], "threshold_settings": settings}


def test_an_old_detector_counts_as_set_by_the_configuration_that_means_the_same():
    """The old defaults are the new default target: with the default configuration nothing is recalibrated,
    so an old detector keeps its threshold until [threshold] changes or a retrain."""
    assert recorded_threshold_settings(old_metadata()) == FitSettings().threshold_settings()
    assert recorded_threshold_settings(old_metadata(quantile=0.95, sensitivity=0.3)) == FitSettings(
        target_false_reject=0.05, sensitivity=0.3).threshold_settings()
    # Older still: no settings key, the fit's own fields (method "empirical" before it was recorded).
    oldest = {k: v for k, v in old_metadata().items() if k not in ("threshold_settings", "threshold_method")}
    assert recorded_threshold_settings(oldest) == {**FitSettings().threshold_settings(), "method": "empirical"}


def test_rethresholding_an_old_detector_uses_the_target_and_drops_quantile_and_margin():
    settings = FitSettings(target_false_reject=0.1)
    meta = rethreshold(old_metadata(), settings)
    # 5 scores, 10 %: ceil(6 * 0.9) = 6 > 5 scores, so the fitted tail, above the largest score.
    assert meta["threshold"] == threshold.calibrate_threshold(LOO, 0.1) > max(LOO)
    assert meta["threshold_guarantee"] == "extrapolated"
    assert "quantile" not in meta and "margin" not in meta
    assert recorded_threshold_settings(meta) == settings.threshold_settings()
    assert meta["loo_scores"] == LOO and meta["sensitivity"] == 0.5
    twenty = rethreshold({**old_metadata(), "loo_scores": [float(i) for i in range(1, 21)]}, settings)
    assert twenty["threshold"] == 19.0 and twenty["threshold_guarantee"] == "conformal"  # ceil(21 * 0.9) = 19


def test_the_fit_reports_how_many_distinct_parts_it_saw(gaussian_fit):
    result, settings, _ = gaussian_fit
    assert result.distinct_parts == 5
    assert result.metadata(settings)["distinct_parts"] == 5


def test_tiny_leave_one_out_scores_survive_the_metadata():
    """Distances of a tight fit can be far below 1e-6. Rounded to 6 decimals they became 0 in the saved
    metadata, and a `threshold` command then recalibrated on zeros (the largest score instead of the tail):
    another threshold from the same fit. Kept to 7 significant digits, the recalibration gives the fit's own."""
    rng = np.random.default_rng(0)
    features = {"pooled/a": rng.normal(size=(6, 4))}
    settings = FitSettings(detector="mahalanobis", factor=0)
    result = fit_features(features, 6, settings)
    tiny = np.array([3.1e-7, 4.2e-7, 2.7e-7, 5.9e-7, 3.3e-7, 4.4e-7])
    result.loo_scores = tiny
    result.threshold = threshold.calibrate_threshold(tiny, settings.target_false_reject)
    meta = result.metadata(settings)
    assert min(meta["loo_scores"]) > 0
    assert rethreshold(meta, settings)["threshold"] == pytest.approx(result.threshold, rel=1e-5)
