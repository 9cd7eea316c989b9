"""Image-level metrics in plain numpy, checked against scikit-learn and hand-computed curves."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.offline.metrics import area_under_auc_percent, roc_auc

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 200))
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)
    scores = rng.normal(size=n) + 0.7 * labels
    assert roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 2, 150)
    labels[:2] = (0, 1)
    scores = np.round(rng.normal(size=150) + labels, 0)  # a handful of distinct values: many ties across classes
    assert len(np.unique(scores)) < 12
    assert roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_all_scores_tied_is_chance():
    assert roc_auc([0, 1, 0, 1, 1], [3.0] * 5) == 0.5


def test_hand_computed_with_a_tie():
    # Pairs (defect, good): 0.9 beats 0.1 and 0.5; 0.5 ties 0.5 (half) and beats 0.1: (2 + 1.5) / 4.
    assert roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)


def test_perfect_and_inverted_separation():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert roc_auc(labels, scores) == 1.0
    assert roc_auc(labels, -scores) == 0.0
    assert roc_auc(1 - labels, scores) == 0.0


def test_input_forms_bool_labels_lists_and_column_vectors():
    labels = [False, True, False, True]
    scores = [1, 4, 2, 3]
    assert roc_auc(labels, scores) == 1.0
    assert roc_auc(np.array(labels)[:, None], np.array(scores, dtype=np.float32)[:, None]) == 1.0


def test_order_of_samples_does_not_matter():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 60)
    scores = rng.normal(size=60) + labels
    perm = rng.permutation(60)
    assert roc_auc(labels[perm], scores[perm]) == pytest.approx(roc_auc(labels, scores), abs=1e-15)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], []])
def test_one_class_missing_is_an_error(labels):
    with pytest.raises(ValueError, match="both good and anomalous"):
        roc_auc(labels, np.arange(len(labels), dtype=float))


def test_area_under_auc_percent_hand_computed():
    # Trapezoids: 40 * (0.6 + 0.8) / 2 + 50 * (0.8 + 1.0) / 2 = 28 + 45 = 73 over a span of 90.
    assert area_under_auc_percent([10, 50, 100], [0.6, 0.8, 1.0]) == pytest.approx(73 / 90)


def test_area_under_auc_percent_unsorted_input():
    assert area_under_auc_percent([100, 10, 50], [1.0, 0.6, 0.8]) == pytest.approx(73 / 90)


def test_area_under_auc_percent_uneven_steps():
    # 0.5 over [0, 20], then a rise to 1.0 over [20, 100]: (20 * 0.5 + 80 * 0.75) / 100.
    assert area_under_auc_percent(np.array([0, 20, 100]), np.array([0.5, 0.5, 1.0])) == pytest.approx(0.7)


def test_area_under_auc_percent_constant_and_single_point():
    assert area_under_auc_percent([5, 25, 100], [0.9, 0.9, 0.9]) == pytest.approx(0.9)
    assert area_under_auc_percent([100], [0.83]) == pytest.approx(0.83)
    assert area_under_auc_percent([5, 100], [1.0, 1.0]) == 1.0


def test_area_under_auc_percent_compares_curves_over_the_same_sizes():
    better = area_under_auc_percent([10, 50, 100], [0.7, 0.9, 0.95])
    worse = area_under_auc_percent([10, 50, 100], [0.6, 0.9, 0.95])
    assert better > worse
    assert 0.0 <= worse <= better <= 1.0
