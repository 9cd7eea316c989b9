"""Label-free threshold: leave-one-out by group, calibration knobs, rates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import lognorm

from edge_agent.learn.augment import group_indices
from edge_agent.learn.detectors import make_detector
from edge_agent.learn.heldout import first_rows, held_out_scores, leave_one_out_scores, take_groups
from edge_agent.learn.threshold import (
    ThresholdReport,
    calibrate_threshold,
    is_anomalous,
    sensitivity_factor,
)

DIMS = {"pooled/a": 8, "pooled/b": 12}


def gaussian_groups(rng: np.random.Generator, n_groups: int, factor: int) -> list[dict[str, np.ndarray]]:
    """Good originals from N(0, I); their 'augmented' copies are small perturbations of them."""
    groups = []
    for _ in range(n_groups):
        group = {}
        for name, d in DIMS.items():
            original = rng.normal(size=(1, d))
            copies = original + 0.3 * rng.normal(size=(factor, d))
            group[name] = np.concatenate([original, copies])
        groups.append(group)
    return groups


def fresh(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    return {name: rng.normal(size=(n, d)) + shift for name, d in DIMS.items()}


def test_loo_threshold_separates_good_from_shifted() -> None:
    rng = np.random.default_rng(0)
    groups = gaussian_groups(rng, n_groups=30, factor=5)
    loo = leave_one_out_scores(lambda: make_detector("mahalanobis"), groups)
    assert loo.shape == (30,) and np.all(loo > 0)
    threshold = calibrate_threshold(loo)

    final = make_detector("mahalanobis").fit(
        {k: np.concatenate([g[k] for g in groups]) for k in DIMS}
    )
    report = ThresholdReport.from_scores(
        threshold, final.score_samples(fresh(rng, 2000)), final.score_samples(fresh(rng, 500, shift=2.0))
    )
    assert report.false_reject_rate <= 0.05
    assert report.detection_rate >= 0.95
    # The training originals themselves would have given a too-low (optimistic) threshold.
    in_sample = final.score_samples({k: np.stack([g[k][0] for g in groups]) for k in DIMS})
    assert np.median(in_sample) < np.median(loo)


def test_loo_holds_out_the_whole_group() -> None:
    rng = np.random.default_rng(1)
    groups = gaussian_groups(rng, n_groups=5, factor=3)
    loo = leave_one_out_scores(lambda: make_detector("knn"), groups)
    # With k=1 KNN the held-out original would score 0 if any of its own rows were still in the training set.
    assert np.all(loo > 0.5)
    manual = make_detector("knn").fit({k: np.concatenate([g[k] for g in groups[1:]]) for k in DIMS})
    assert loo[0] == pytest.approx(manual.score_samples({k: groups[0][k][:1] for k in DIMS})[0])


def test_groups_follow_augment_order() -> None:
    n, factor = 4, 2
    rows = np.arange(n * (factor + 1), dtype=float)[:, None]
    groups = take_groups({"pooled/a": rows}, group_indices(n, factor))
    # originals 0-3, then the two copies of original 0 (rows 4, 5), of original 1 (6, 7), ...
    assert [g["pooled/a"].ravel().tolist() for g in groups] == [[0, 4, 5], [1, 6, 7], [2, 8, 9], [3, 10, 11]]
    assert [g["pooled/a"].ravel().tolist() for g in first_rows(groups)] == [[0], [1], [2], [3]]


def test_loo_errors() -> None:
    rng = np.random.default_rng(2)
    groups = gaussian_groups(rng, 2, 1)
    with pytest.raises(ValueError, match="at least 2 good images"):
        leave_one_out_scores(lambda: make_detector("mahalanobis"), groups[:1])
    with pytest.raises(ValueError, match="group 1 has levels"):
        leave_one_out_scores(lambda: make_detector("mahalanobis"), [groups[0], {"pooled/a": groups[1]["pooled/a"]}])


def test_calibration_knobs() -> None:
    loo = np.array([1.0, 2.0, 3.0, 4.0])
    assert calibrate_threshold(loo, quantile=1.0, margin=0.0) == pytest.approx(4.0)
    assert calibrate_threshold(loo, quantile=1.0, margin=0.25) == pytest.approx(5.0)
    ladder = [calibrate_threshold(loo, sensitivity=s) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(ladder, ladder[1:]))  # higher sensitivity -> lower threshold
    assert sensitivity_factor(0.0) == 2.0 and sensitivity_factor(0.5) == 1.0 and sensitivity_factor(1.0) == 0.5
    assert calibrate_threshold(loo, override=7.5) == 7.5
    for kwargs, message in [
        ({"sensitivity": 1.5}, "sensitivity"),
        ({"quantile": 0.0}, "quantile"),
        ({"margin": -0.1}, "margin"),
        ({"override": -1.0}, "override"),
    ]:
        with pytest.raises(ValueError, match=message):
            calibrate_threshold(loo, **kwargs)
    with pytest.raises(ValueError, match="finite and >= 0"):
        calibrate_threshold([1.0, np.nan])
    with pytest.raises(ValueError, match="no leave-one-out scores"):
        calibrate_threshold([])


def test_lognormal_threshold_on_known_numbers() -> None:
    """Logs -1, 0, 1: mean 0, sample standard deviation 1, so the 0.99 quantile of the fitted log-normal is
    exp(z_0.99) = exp(2.3263...) = 10.24, far above the largest score e = 2.72; scipy's log-normal agrees."""
    loo = np.exp([-1.0, 0.0, 1.0])
    reference = lognorm(s=1.0, scale=1.0).ppf(0.99)
    assert reference == pytest.approx(10.2405, rel=1e-4)
    assert calibrate_threshold(loo, margin=0.0) == pytest.approx(reference, rel=1e-9)
    assert calibrate_threshold(loo) == pytest.approx(1.1 * reference, rel=1e-9)  # the default 10 % margin
    assert calibrate_threshold(loo, quantile=0.9, margin=0.0) == pytest.approx(lognorm(s=1.0).ppf(0.9), rel=1e-9)
    assert calibrate_threshold(loo, margin=0.0, method="empirical") == pytest.approx(np.quantile(loo, 0.99))


def test_report_rates() -> None:
    report = ThresholdReport.from_scores(2.0, [1.0, 2.0, 3.0, 0.5], [2.5, 1.0])
    assert report.false_reject_rate == 0.25  # strictly above the threshold only
    assert report.detection_rate == 0.5
    assert report.to_dict()["n_good"] == 4
    assert ThresholdReport.from_scores(2.0, [1.0]).detection_rate is None
    assert is_anomalous([2.0, 2.0001], 2.0).tolist() == [False, True]


def test_lognormal_threshold_keeps_its_promise_with_ten_images() -> None:
    """With 10 good images the empirical 0.99 quantile is about the maximum, which a new good part exceeds
    with probability 1/11; the log-normal tail brings false rejects near the 1% that quantile=0.99 promises."""
    rng = np.random.default_rng(0)
    frr = {"empirical": [], "lognormal": []}
    for _ in range(400):
        loo = rng.lognormal(3.0, 0.25, size=10)
        fresh = rng.lognormal(3.0, 0.25, size=500)
        for method in frr:
            frr[method].append(np.mean(fresh > calibrate_threshold(loo, margin=0.0, method=method)))
    assert np.mean(frr["empirical"]) > 0.06
    assert np.mean(frr["lognormal"]) < 0.03


def test_lognormal_never_goes_below_the_empirical_quantile_and_method_is_checked() -> None:
    loo = np.array([1.0, 1.0, 1.0, 10.0])  # one outlier: the empirical quantile is the larger
    assert calibrate_threshold(loo, margin=0.0) >= np.quantile(loo, 0.99)
    assert calibrate_threshold(loo, quantile=1.0, margin=0.0) == pytest.approx(10.0)
    assert calibrate_threshold([0.0, 1.0, 2.0], margin=0.0) == pytest.approx(np.quantile([0.0, 1.0, 2.0], 0.99))
    with pytest.raises(ValueError, match="unknown threshold method"):
        calibrate_threshold(loo, method="gaussian")


class _Recorder:
    """A detector stand-in that remembers its training rows and scores a probe by its first feature."""

    fitted: list[set] = []

    def fit(self, features):
        _Recorder.fitted.append(set(features["pooled/a"][:, 0].tolist()))
        self.seen = _Recorder.fitted[-1]
        return self

    def score_samples(self, features):
        return np.array([1.0 if v in self.seen else 0.0 for v in features["pooled/a"][:, 0]]) + 10 * len(self.seen)


def test_held_out_scores_never_score_a_probe_with_a_model_that_saw_its_image() -> None:
    # 7 groups of 3 rows; a row's value names its group (g*100 + row). Probes of varying length carry the
    # values of their own group's rows, so a score of 1 in the first term would mean the model saw that image.
    groups = [{"pooled/a": np.array([[g * 100 + r, 0.0] for r in range(3)])} for g in range(7)]
    probes = [{"pooled/a": np.array([[g * 100 + r, 0.0] for r in range(1 + g % 3)])} for g in range(7)]
    _Recorder.fitted = []
    out = held_out_scores(_Recorder, groups, probes, max_folds=3)
    assert len(_Recorder.fitted) == 3  # one fit per fold
    assert [len(o) for o in out] == [1 + g % 3 for g in range(7)]
    for scores in out:
        assert np.all(scores % 10 == 0)  # no probe row was among its model's training rows
        assert scores[0] // 10 in (12, 15)  # trained on 4 or 5 other images x 3 rows: only its own fold left out
    with pytest.raises(ValueError, match="one probe set per group"):
        held_out_scores(_Recorder, groups, probes[:3])
