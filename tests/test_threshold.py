"""Label-free threshold: leave-one-out by group, the false-reject target (conformal rank, fitted tail below the
finite-sample limit, the sensitivity knob), rates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import t as student_t

from edge_agent.deliver.messages import to_json, verdict_message
from edge_agent.learn.augment import group_indices
from edge_agent.learn.detectors import make_detector
from edge_agent.learn.heldout import first_rows, held_out_scores, leave_one_out_scores, take_groups
from edge_agent.learn.threshold import (
    DEFAULT_TARGET_FALSE_REJECT,
    ThresholdReport,
    calibrate_threshold,
    conformal_rank,
    is_anomalous,
    legacy_target,
    student_t_quantile,
    target_from_sensitivity,
    threshold_guarantee,
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


def test_conformal_threshold_is_the_order_statistic_worked_out_by_hand() -> None:
    """19 scores, target 10 %: k = ceil(20 * 0.9) = 18, the 18th smallest; 9 scores at 10 %: k = ceil(9) = 9,
    the largest; 10 scores at 10 %: ceil(9.9) = 10, the largest, since a new part is the largest of 11 with
    probability 1/11 < 10 %. At 1/11 exactly the rank is still 10; just below it, none."""
    scores = np.random.default_rng(0).permutation(np.arange(1.0, 20.0))  # 1..19 in random order
    assert conformal_rank(19, 0.10) == 18
    assert calibrate_threshold(scores, target_false_reject=0.10) == 18.0
    assert calibrate_threshold(scores, target_false_reject=0.25) == 15.0  # ceil(20 * 0.75) = 15
    assert calibrate_threshold(scores[:9], target_false_reject=0.10) == max(scores[:9])
    assert conformal_rank(10, 0.10) == 10 and conformal_rank(10, 1 / 11) == 10
    assert conformal_rank(10, 1 / 11 - 1e-4) is None and conformal_rank(99, 0.01) == 99
    assert threshold_guarantee(19, 0.10) == "conformal"


def test_below_the_finite_sample_limit_the_lognormal_bound_extrapolates() -> None:
    """Logs -1, 0, 1 and 0.5 (n = 4: limit 1/5): mean 0.125, sample sd 0.8539; the bound at 1 % is
    exp(0.125 + t_3(0.99) * 0.8539 * sqrt(1.25)) = exp(0.125 + 4.3349) = 86.49 with t_3(0.99) = 4.5407
    (scipy agrees), far above the largest score e = 2.72, so "extrapolated"."""
    loo = np.exp([-1.0, 0.0, 1.0, 0.5])
    expected = np.exp(0.125 + student_t.ppf(0.99, 3) * np.std(np.log(loo), ddof=1) * np.sqrt(1.25))
    assert expected == pytest.approx(86.49, rel=1e-4)
    assert calibrate_threshold(loo, target_false_reject=0.01) == pytest.approx(expected, rel=1e-9)
    assert threshold_guarantee(4, 0.01) == "extrapolated"
    # The bound never goes below the largest score: lower would already reject one of the 4 good images.
    tight = np.array([1.0, 1.0, 1.0, 1.001, 5.0])
    assert calibrate_threshold(tight, target_false_reject=0.15) >= 5.0
    # Without the fitted tail: the largest score, which promises only about 1 / (n + 1).
    assert calibrate_threshold(loo, target_false_reject=0.01, method="empirical") == pytest.approx(np.e)
    assert threshold_guarantee(4, 0.01, "empirical") == "limited"
    # Too few scores for a spread, or a zero score (no log): the largest score.
    assert calibrate_threshold([1.0, 2.0], target_false_reject=0.01) == 2.0
    assert calibrate_threshold([0.0, 1.0, 2.0], target_false_reject=0.01) == 2.0
    assert threshold_guarantee(2, 0.01) == "limited" and threshold_guarantee(2, 0.01, override=3.0) == "fixed"


def test_the_target_is_kept_by_new_good_parts_with_ten_images() -> None:
    """Log-normal good scores, 10 images, target 1 % (below the 1/11 limit): the fitted tail rejects about 1 % of
    new good parts; the largest score (empirical) about 1/11, whatever the target."""
    rng = np.random.default_rng(0)
    frr = {"lognormal": [], "empirical": []}
    for _ in range(400):
        loo = rng.lognormal(3.0, 0.25, size=10)
        fresh = rng.lognormal(3.0, 0.25, size=500)
        for method in frr:
            frr[method].append(np.mean(fresh > calibrate_threshold(loo, 0.01, method=method)))
    assert 0.005 < np.mean(frr["lognormal"]) < 0.015
    assert np.mean(frr["empirical"]) == pytest.approx(1 / 11, abs=0.015)


def test_student_t_quantile_matches_scipy() -> None:
    for df in (1, 2, 3, 9, 10, 99):
        for p in (0.9, 0.99, 0.999):
            assert student_t_quantile(p, df) == pytest.approx(student_t.ppf(p, df), rel=1e-9)


def test_sensitivity_maps_onto_the_target_monotonically_and_neutrally() -> None:
    assert target_from_sensitivity(0.5, 0.02) == pytest.approx(0.02)  # neutral
    assert target_from_sensitivity(1.0, 0.02) == pytest.approx(0.2)  # 10x the share rejected
    assert target_from_sensitivity(0.0, 0.02) == pytest.approx(0.002)
    assert target_from_sensitivity(1.0, 0.2) == 0.5  # capped
    knob = np.linspace(0, 1, 11)
    targets = [target_from_sensitivity(s) for s in knob]
    assert all(a < b for a, b in zip(targets, targets[1:]))
    loo = np.random.default_rng(1).lognormal(0.0, 0.3, size=10)
    ladder = [calibrate_threshold(loo, sensitivity=s) for s in knob]
    assert all(a >= b for a, b in zip(ladder, ladder[1:])) and ladder[0] > ladder[-1]  # higher -> lower threshold
    assert calibrate_threshold(loo, sensitivity=0.5) == calibrate_threshold(loo, DEFAULT_TARGET_FALSE_REJECT)


def test_old_quantile_and_margin_translate_to_a_target() -> None:
    assert legacy_target(0.99, 0.10) == DEFAULT_TARGET_FALSE_REJECT  # the old defaults mean the default
    assert legacy_target(0.95, 0.10) == pytest.approx(0.05)
    assert legacy_target(0.99, 0.20) == pytest.approx(0.01)
    assert legacy_target(1.0, 0.10) == 0.001


def test_calibration_errors_name_the_setting() -> None:
    loo = np.array([1.0, 2.0, 3.0, 4.0])
    assert calibrate_threshold(loo, override=7.5) == 7.5
    for kwargs, message in [
        ({"sensitivity": 1.5}, "sensitivity"),
        ({"target_false_reject": 0.0}, "target_false_reject"),
        ({"target_false_reject": 0.5}, "target_false_reject"),
        ({"override": -1.0}, "override"),
        ({"method": "gaussian"}, "unknown threshold method"),
    ]:
        with pytest.raises(ValueError, match=message):
            calibrate_threshold(loo, **kwargs)
    with pytest.raises(ValueError, match="finite and >= 0"):
        calibrate_threshold([1.0, np.nan])
    with pytest.raises(ValueError, match="no leave-one-out scores"):
        calibrate_threshold([])


def test_report_rates() -> None:
    report = ThresholdReport.from_scores(2.0, [1.0, 2.0, 3.0, 0.5], [2.5, 1.0])
    assert report.false_reject_rate == 0.25  # strictly above the threshold only
    assert report.detection_rate == 0.5
    assert report.to_dict()["n_good"] == 4
    assert ThresholdReport.from_scores(2.0, [1.0]).detection_rate is None
    assert is_anomalous([2.0, 2.0001], 2.0).tolist() == [False, True]


def test_a_part_that_could_not_be_scored_is_rejected_and_its_verdict_stays_json() -> None:
    """NaN compares false with everything: "score > threshold" passed such a part as good."""
    flagged = is_anomalous([float("nan"), float("inf"), 0.1], 2.0)
    assert flagged.tolist() == [True, True, False]
    verdict = verdict_message("cam1", "f.png", 0.0, float("nan"), 2.0, bool(flagged[0]), "m", None, {})
    decoded = json.loads(to_json(verdict), parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert decoded["score"] is None and decoded["verdict"] == "anomalous"


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
